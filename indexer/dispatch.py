"""How work leaves the request: one :class:`Dispatcher` protocol, two ways to run it.

- :class:`CeleryDispatcher` (distributed): records the push in Redis and sends a task by its
  constant name to the broker; Celery workers run it.
- :class:`EmbeddedDispatcher` (embedded default): the same jobs, the same folding rules, run
  by a background thread inside the API process; no broker, no Redis.

Both answer ``submit_*`` in milliseconds and never index in the caller's thread. When the
broker (or Redis) is down ``submit_*`` raises :class:`~coderag.errors.TransientError`, which
the webhook turns into a 503 so GitLab retries the delivery.
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
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from coderag.errors import CoderagError, TransientError
from coderag.repos import RepoRegistry
from coderag.settings import Settings
from indexer.celery_app import (
    DELETE_BRANCH,
    EXPIRES_S,
    INDEX_BRANCH,
    QUEUE_GIT,
    QUEUE_INDEX,
    QUEUES,
    REINDEX_REPO,
    REMOVE_REPO,
)
from indexer.coordination import MemoryCoordinator, RedisCoordinator, new_task_id
from indexer.git import NULL_SHA
from indexer.scheduler import (
    RETRYABLE,
    BranchBusy,
    JobContext,
    reindex_repo,
    remove_repo,
    run_branch,
)

if TYPE_CHECKING:
    from celery import Celery

    from coderag.runtime import Runtime

__all__ = [
    "CeleryDispatcher",
    "Dispatcher",
    "EmbeddedDispatcher",
    "dispatcher_from_settings",
]

log = logging.getLogger(__name__)


@runtime_checkable
class Dispatcher(Protocol):
    """Where the webhook and the repo routes send work. Every method returns fast."""

    def submit_push(
        self, repo_id: str, branch: str, after_sha: str, received_at: float, *, full: bool = False
    ) -> str:
        """Record ``after_sha`` as the branch's newest commit and make sure a run is scheduled.

        Returns the id of the task that will index it: a new one, or the one already
        scheduled for the branch that this push folds into.
        """

    def submit_delete_branch(self, repo_id: str, branch: str, received_at: float) -> str: ...

    def submit_reindex(self, repo_id: str, *, full: bool = True) -> str: ...

    def submit_remove(self, repo_id: str, requested_at: float | None = None) -> str: ...

    def queue_depths(self) -> dict[str, int]: ...

    def ping(self) -> bool:
        """Whether work can be submitted now (broker reachable / executor alive)."""

    def task_status(self, task_id: str) -> dict[str, Any]: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- Celery
class CeleryDispatcher:
    """Distributed mode: Redis for folding state, the Celery broker for the tasks."""

    def __init__(
        self,
        settings: Settings,
        *,
        app: Celery | None = None,
        redis_client: Any | None = None,
    ) -> None:
        import redis

        from indexer.celery_app import create_celery

        self.settings = settings
        self.app = app or create_celery(settings)
        self.redis = redis_client or redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=1.0, socket_timeout=2.0
        )
        self.coordinator = RedisCoordinator(self.redis)
        self._broker = redis.Redis.from_url(
            settings.celery_broker_url or settings.redis_url,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
        )

    def _send(
        self,
        name: str,
        args: list[Any],
        *,
        task_id: str,
        queue: str,
        countdown: float | None = None,
    ) -> str:
        try:
            self.app.send_task(
                name,
                args=args,
                task_id=task_id,
                queue=queue,
                countdown=countdown or None,
                expires=EXPIRES_S[name],  # seconds from now
            )
        except CoderagError:
            raise
        except Exception as exc:  # kombu OperationalError, redis ConnectionError, ...
            raise TransientError(f"broker unavailable: {type(exc).__name__}: {exc}") from exc
        return task_id

    def submit_push(
        self, repo_id: str, branch: str, after_sha: str, received_at: float, *, full: bool = False
    ) -> str:
        name = DELETE_BRANCH if after_sha == NULL_SHA else INDEX_BRANCH
        self.coordinator.record(repo_id, branch, after_sha, received_at, full=full)
        task_id = new_task_id()
        existing = self.coordinator.claim_schedule(repo_id, branch, task_id)
        if existing is not None:
            return existing  # folded into the run already scheduled
        queue = self.settings.full_index_queue if full else QUEUE_INDEX
        return self._send_claimed(
            name, repo_id, branch, task_id, queue, self.settings.push_debounce_seconds
        )

    def _send_claimed(
        self, name: str, repo_id: str, branch: str, task_id: str, queue: str, countdown: float
    ) -> str:
        """Send the run whose flag we hold; confirm the flag once the task is queued.

        A failed send clears the flag so GitLab's retry schedules the run; when Redis is too
        sick for that, the flag is only a short lease and lapses by itself (see
        :mod:`indexer.coordination`). A failed confirm is harmless: the lease lapses while
        the task is queued and, at worst, a later push queues a second, folded run.
        """
        try:
            self._send(name, [repo_id, branch], task_id=task_id, queue=queue, countdown=countdown)
        except TransientError:
            with contextlib.suppress(TransientError):
                self.coordinator.release_schedule(repo_id, branch)
            raise
        with contextlib.suppress(TransientError):
            self.coordinator.confirm_schedule(repo_id, branch, task_id)
        return task_id

    def reschedule(
        self, repo_id: str, branch: str, *, stale_after: float | None = None
    ) -> str | None:
        """Queue a run for a pending commit that nothing will index (:mod:`indexer.recovery`).

        Does nothing while a run holds the branch or a task is scheduled for it, unless that
        task was queued more than ``stale_after`` seconds ago (then its flag is replaced);
        returns the new task id, or ``None``.
        """
        p = self.coordinator.pending(repo_id, branch)
        if p is None or self.coordinator.is_locked(repo_id, branch):
            return None
        if stale_after is not None:
            age = self.coordinator.schedule_age(repo_id, branch)
            if age is not None and age >= stale_after:
                self.coordinator.release_schedule(repo_id, branch)
        task_id = new_task_id()
        if self.coordinator.claim_schedule(repo_id, branch, task_id) is not None:
            return None
        name = DELETE_BRANCH if p.sha == NULL_SHA else INDEX_BRANCH
        queue = self.settings.full_index_queue if p.full else QUEUE_INDEX
        return self._send_claimed(name, repo_id, branch, task_id, queue, 0.0)

    def submit_delete_branch(self, repo_id: str, branch: str, received_at: float) -> str:
        return self.submit_push(repo_id, branch, NULL_SHA, received_at)

    def submit_reindex(self, repo_id: str, *, full: bool = True) -> str:
        return self._send(REINDEX_REPO, [repo_id, full], task_id=new_task_id(), queue=QUEUE_GIT)

    def submit_remove(self, repo_id: str, requested_at: float | None = None) -> str:
        return self._send(
            REMOVE_REPO, [repo_id, requested_at], task_id=new_task_id(), queue=QUEUE_GIT
        )

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting per queue (kombu's Redis transport: one list per queue and
        priority step). Tasks held by workers for a countdown are not counted."""
        out: dict[str, int] = {}
        try:
            for q in QUEUES:
                keys = [q, *(f"{q}\x06\x16{p}" for p in (1, 2, 3, 4, 5, 6, 7, 8, 9))]
                pipe = self._broker.pipeline()
                for k in keys:
                    pipe.llen(k)
                out[q] = int(sum(pipe.execute()))
            out["pending"] = self.coordinator.pending_count()
        except Exception as exc:  # metrics must not fail the caller
            raise TransientError(f"broker unavailable: {exc}") from exc
        return out

    def ping(self) -> bool:
        try:
            return bool(self._broker.ping())
        except Exception:  # any failure means "not reachable"
            return False

    def task_status(self, task_id: str) -> dict[str, Any]:
        res = self.app.AsyncResult(task_id)
        try:
            state = res.state
            result = res.result if res.ready() else None
        except Exception as exc:
            raise TransientError(f"result backend unavailable: {exc}") from exc
        if isinstance(result, BaseException):
            result = {"error": f"{type(result).__name__}: {result}"}
        return {"task_id": task_id, "state": state, "result": result}

    def close(self) -> None:
        for client in (self._broker,):
            with contextlib.suppress(Exception):
                client.close()


# ----------------------------------------------------------------------------- embedded
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
        self.debounce = runtime.settings.push_debounce_seconds if debounce is None else debounce
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

    def submit_push(
        self, repo_id: str, branch: str, after_sha: str, received_at: float, *, full: bool = False
    ) -> str:
        name = DELETE_BRANCH if after_sha == NULL_SHA else INDEX_BRANCH
        self.coordinator.record(repo_id, branch, after_sha, received_at, full=full)
        tid = new_task_id()
        existing = self.coordinator.claim_schedule(repo_id, branch, tid)
        if existing is not None:
            return existing
        return self._put(name, (repo_id, branch), delay=self.debounce, task_id=tid)

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
            from indexer.tasks import MAX_RETRIES, backoff

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


def dispatcher_from_settings(settings: Settings, runtime: Runtime) -> Dispatcher:
    """Celery when a broker is configured, the in-process executor otherwise."""
    if settings.distributed:
        return CeleryDispatcher(settings)
    return EmbeddedDispatcher(runtime)
