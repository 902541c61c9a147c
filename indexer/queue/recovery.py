"""Re-schedule orphaned pushes: the backstop that makes "no accepted webhook is lost" hold.

An accepted webhook leaves two things in Redis: the branch's pending commit (durable, with
Redis' append-only file) and a queued task (or the flag of one already queued). The task can
be lost while the pending commit survives:

- a worker is SIGKILLed (OOM killer, node loss) mid-run: the run had already cleared the
  flag, its message sits in the broker's unacked set until the visibility timeout (an hour);
- a task fails for good while Redis or the broker is down (its retry cannot be published);
- a send fails and Redis cannot clear the flag: the flag's lease lapses, nothing is queued.

Every such branch ends in the same recognisable state: a pending entry, no "scheduled" flag
and no run lock (a dead worker's lock expires after ``settings.branch_lock_ttl_seconds``),
or a flag older than ``settings.recovery_stale_seconds``: when Redis restarts under a
consumer, the messages it had reserved (countdown tasks of recent pushes, whose flags later
pushes fold into) stay in the broker's unacked set until the visibility timeout, an hour.
Each worker sweeps for that state every ``settings.recovery_interval_seconds`` and queues a
run, through the same flag as a push, so several workers sweeping at once queue one task. A
duplicate would be harmless anyway: runs are serialised by the lock and a run with nothing
pending does nothing.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from coderag.errors import CoderagError
from indexer.queue.coordination import Coordinator

__all__ = ["Reconciler", "Rescheduler", "recover_orphans"]

log = logging.getLogger(__name__)


class Rescheduler(Protocol):
    """What the sweep needs from a dispatcher
    (:class:`~indexer.queue.celery_dispatcher.CeleryDispatcher`)."""

    coordinator: Coordinator

    def reschedule(
        self, repo_id: str, branch: str, *, stale_after: float | None = None
    ) -> str | None: ...


def recover_orphans(dispatcher: Rescheduler, stale_after: float) -> dict[str, str]:
    """Queue a run for every orphaned pending commit; returns ``{"repo:branch": task_id}``."""
    coord = dispatcher.coordinator
    queued: dict[str, str] = {}
    for repo, branch in coord.pending_branches():
        try:  # a no-op while a live run or a task queued less than stale_after ago has it
            task_id = dispatcher.reschedule(repo, branch, stale_after=stale_after)
        except CoderagError as exc:  # broker down: the next sweep tries again
            log.warning("recovery of %s:%s failed: %s", repo, branch, exc)
            continue
        if task_id is not None:
            queued[f"{repo}:{branch}"] = task_id
    if queued:
        log.warning("re-scheduled orphaned pushes: %s", sorted(queued))
    return queued


class Reconciler:
    """A daemon thread running :func:`recover_orphans` now and every ``interval`` seconds."""

    def __init__(self, dispatcher: Rescheduler, interval: float, stale_after: float) -> None:
        self.dispatcher = dispatcher
        self.interval = interval
        self.stale_after = stale_after
        self.recovered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="coderag-recovery", daemon=True)

    def start(self) -> Reconciler:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            try:
                self.recovered += len(recover_orphans(self.dispatcher, self.stale_after))
            except CoderagError as exc:  # Redis down: try again next time
                log.warning("orphan sweep failed: %s", exc)
            except Exception:  # never let the sweep thread die
                log.exception("orphan sweep failed")
            if self._stop.wait(self.interval):
                return
