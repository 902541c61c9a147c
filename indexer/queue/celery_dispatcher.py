"""Distributed mode's dispatcher: folding state in Redis, the tasks on the Celery broker.

A push is recorded in Redis and, when it wins the branch's "scheduled" flag, sent as a task by
its constant name (:mod:`indexer.queue.names`); Celery workers run it. A broker or Redis
outage surfaces as :class:`~coderag.errors.TransientError` within about a second, never as a
request that blocks on reconnects.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from coderag.errors import CoderagError, TransientError
from coderag.settings import Settings
from indexer.git import NULL_SHA
from indexer.queue.celery_app import create_celery
from indexer.queue.coordination import RedisCoordinator, new_task_id
from indexer.queue.folding import BranchRun, PushFolding
from indexer.queue.names import EXPIRES_S, QUEUE_GIT, QUEUE_INDEX, QUEUES, REINDEX_REPO, REMOVE_REPO

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["CeleryDispatcher"]


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

        self.settings = settings
        self.app = app or create_celery(settings)
        self.redis = redis_client or redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=1.0, socket_timeout=2.0
        )
        self.coordinator = RedisCoordinator(self.redis)
        self.folding = PushFolding(
            self.coordinator, self._enqueue, debounce=settings.push_debounce_seconds
        )
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

    def _enqueue(self, run: BranchRun, delay: float) -> None:
        """A branch run goes to the index queue, a full one to ``settings.full_index_queue``."""
        queue = self.settings.full_index_queue if run.full else QUEUE_INDEX
        self._send(
            run.task, [run.repo_id, run.branch], task_id=run.task_id, queue=queue, countdown=delay
        )

    def submit_push(
        self, repo_id: str, branch: str, after_sha: str, received_at: float, *, full: bool = False
    ) -> str:
        return self.folding.submit_push(repo_id, branch, after_sha, received_at, full=full)

    def reschedule(
        self, repo_id: str, branch: str, *, stale_after: float | None = None
    ) -> str | None:
        """Queue a run for an orphaned pending commit (see :meth:`PushFolding.reschedule`)."""
        return self.folding.reschedule(repo_id, branch, stale_after=stale_after)

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
