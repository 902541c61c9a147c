"""One model, two kinds of callers: queries go first, indexing keeps moving.

The backends run one inference at a time (they are not re-entrant, and on a CPU box two at
once would only share the same cores). A plain lock is neither fair nor aware of who waits:
under a stream of indexing batches a query could wait several batches, which is what the
search-under-indexing load test measured (seconds of p95 for a 10 ms query). The gate lets a
waiting query take the next turn, and lets indexing take a turn after at most
``max_query_streak`` queries in a row, so neither side starves: a query waits for at most
the one batch in flight, and indexing progresses under any query load.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["InferenceGate"]


class InferenceGate:
    """A mutex with two priorities and a bound on how long the low one can be passed over."""

    def __init__(self, max_query_streak: int = 8) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._queries_waiting = 0
        self._batches_waiting = 0
        self._streak = 0  # queries served in a row while a batch waited
        self.max_query_streak = max_query_streak

    @contextmanager
    def turn(self, *, query: bool) -> Iterator[None]:
        """Hold the model for one inference; ``query=True`` for latency-bound callers."""
        with self._cond:
            if query:
                self._queries_waiting += 1
                try:
                    while self._busy or (
                        self._batches_waiting and self._streak >= self.max_query_streak
                    ):
                        self._cond.wait()
                finally:
                    self._queries_waiting -= 1
                self._streak = self._streak + 1 if self._batches_waiting else 0
            else:
                self._batches_waiting += 1
                try:
                    while self._busy or (
                        self._queries_waiting and self._streak < self.max_query_streak
                    ):
                        self._cond.wait()
                finally:
                    self._batches_waiting -= 1
                self._streak = 0
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
