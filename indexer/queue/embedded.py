"""Embedded mode's dispatcher: the jobs run in background thread(s) of the API process.

No broker and no Redis: folding state lives in a :class:`MemoryCoordinator`, queued work in
an in-process heap ordered by start time, and a task's status in a bounded dict. The folding
rules are those of the distributed mode (:class:`~indexer.queue.dispatcher.PushFolding`), and
so are the task names and the retry policy (:mod:`indexer.queue.names`); Celery is never
imported.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from coderag.errors import TransientError
from coderag.repos import RepoRegistry
from indexer.git import NULL_SHA
from indexer.jobs import RETRYABLE, BranchBusy, JobContext, reindex_repo, remove_repo, run_branch
from indexer.queue.coordination import MemoryCoordinator, new_task_id
from indexer.queue.folding import BranchRun, PushFolding
from indexer.queue.names import (
    DELETE_BRANCH,
    INDEX_BRANCH,
    MAX_RETRIES,
    REINDEX_REPO,
    REMOVE_REPO,
    backoff,
)

if TYPE_CHECKING:
    from coderag.runtime import Runtime

__all__ = ["EmbeddedDispatcher"]

log = logging.getLogger(__name__)


class EmbeddedDispatcher:
    """Embedded mode: the jobs run in background thread(s) of this process.

    One worker thread by default: the embedded index (an Edge shard) has one owner, and one
    CPU embedder gains nothing from running two runs side by side.
    """

    _MAX_STATUS = 2048

    def __init__(
        self,
        runtime: Runtime,
        *,
        registry: RepoRegistry | None = None,
        workers: int = 1,
        debounce: float | None = None,
        fetch: Callable[[Any], Any] | None = None,
    ) -> None:
        self.runtime = runtime
        self.coordinator = MemoryCoordinator()
        self.ctx = JobContext(
            runtime=runtime,
            registry=registry or RepoRegistry(runtime.index),
            coordinator=self.coordinator,
            scheduler=self,
            fetch=fetch,
        )
        self.folding = PushFolding(
            self.coordinator,
            self._enqueue,
            debounce=runtime.settings.push_debounce_seconds if debounce is None else debounce,
        )
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, str, str, tuple[Any, ...], int]] = []
        self._counter = itertools.count()
        self._running = 0
        self._closed = False
        self._status: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._threads = [
            threading.Thread(target=self._loop, name=f"coderag-embedded-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    # -- submit ------------------------------------------------------------------------
    def _put(
        self,
        name: str,
        args: tuple[Any, ...],
        *,
        delay: float = 0.0,
        task_id: str | None = None,
        attempt: int = 0,
    ) -> str:
        tid = task_id or new_task_id()
        with self._cv:
            if self._closed:
                raise TransientError("the embedded executor is shut down")
            heapq.heappush(
                self._heap,
                (time.monotonic() + delay, next(self._counter), name, tid, args, attempt),
            )
            self._set_status(tid, "PENDING" if attempt == 0 else "RETRY")
            self._cv.notify()
        return tid

    def _enqueue(self, run: BranchRun, delay: float) -> None:
        self._put(run.task, (run.repo_id, run.branch), delay=delay, task_id=run.task_id)

    def submit_push(
        self, repo_id: str, branch: str, after_sha: str, received_at: float, *, full: bool = False
    ) -> str:
        return self.folding.submit_push(repo_id, branch, after_sha, received_at, full=full)

    def submit_delete_branch(self, repo_id: str, branch: str, received_at: float) -> str:
        return self.submit_push(repo_id, branch, NULL_SHA, received_at)

    def submit_reindex(self, repo_id: str, *, full: bool = True) -> str:
        return self._put(REINDEX_REPO, (repo_id, full))

    def submit_remove(self, repo_id: str, requested_at: float | None = None) -> str:
        return self._put(REMOVE_REPO, (repo_id, requested_at))

    # -- introspection -------------------------------------------------------------------
    def queue_depths(self) -> dict[str, int]:
        with self._cv:
            queued, running = len(self._heap), self._running
        return {"embedded": queued + running, "pending": self.coordinator.pending_count()}

    def ping(self) -> bool:
        return not self._closed and all(t.is_alive() for t in self._threads)

    def task_status(self, task_id: str) -> dict[str, Any]:
        with self._cv:
            st = dict(self._status.get(task_id) or {"state": "PENDING", "result": None})
        return {"task_id": task_id, **st}

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until nothing is queued or running (tests, ``coderag repo`` commands)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._heap or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.05))
        return True

    def close(self) -> None:
        """Stop the threads after the job in progress (queued work is dropped: pending
        commits are re-scheduled by the next push)."""
        with self._cv:
            self._closed = True
            self._heap.clear()
            self._cv.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=60)

    # -- executor ------------------------------------------------------------------------
    def _set_status(self, tid: str, state: str, result: Any = None) -> None:
        self._status[tid] = {"state": state, "result": result}
        self._status.move_to_end(tid)
        while len(self._status) > self._MAX_STATUS:
            self._status.popitem(last=False)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed:
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        break
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cv.wait(timeout)
                if self._closed:
                    return
                _, _, name, tid, args, attempt = heapq.heappop(self._heap)
                self._running += 1
                self._set_status(tid, "STARTED")
            try:
                self._execute(name, tid, args, attempt)
            finally:
                with self._cv:
                    self._running -= 1
                    self._cv.notify_all()

    def _execute(self, name: str, tid: str, args: tuple[Any, ...], attempt: int) -> None:
        try:
            if name in (INDEX_BRANCH, DELETE_BRANCH):
                result = run_branch(self.ctx, *args)
            elif name == REINDEX_REPO:
                result = reindex_repo(self.ctx, args[0], full=bool(args[1]))
            elif name == REMOVE_REPO:
                result = remove_repo(self.ctx, *args)
            else:  # pragma: no cover - names are constants
                raise ValueError(name)
        except BranchBusy:
            self._requeue(name, args, 0.2, tid=None, attempt=0)
            with self._cv:
                self._set_status(tid, "SUCCESS", {"busy": True})
            return
        except RETRYABLE as exc:
            if attempt < MAX_RETRIES:
                log.warning("retrying %s %s: %s", name, args, exc)
                self._requeue(name, args, backoff(attempt), tid=tid, attempt=attempt + 1)
                return
            self._fail(tid, exc)
            return
        except Exception as exc:  # keep the executor alive, record the failure
            log.exception("embedded task %s failed", name)
            self._fail(tid, exc)
            return
        with self._cv:
            self._set_status(tid, "SUCCESS", result)

    def _requeue(
        self, name: str, args: tuple[Any, ...], delay: float, *, tid: str | None, attempt: int
    ) -> None:
        with contextlib.suppress(TransientError):  # shutting down
            self._put(name, args, delay=delay, task_id=tid, attempt=attempt)

    def _fail(self, tid: str, exc: BaseException) -> None:
        with self._cv:
            self._set_status(tid, "FAILURE", {"error": f"{type(exc).__name__}: {exc}"})
