"""Thin Celery tasks: ids in, a call into :mod:`indexer.scheduler`, a JSON summary out.

Messages carry a repo id and a branch, never a payload or a commit: the commit to index is the
newest pending one at the time the task runs (see :mod:`indexer.coordination`), which is what
makes redelivered, retried and duplicated messages harmless.

Retries: :data:`indexer.scheduler.RETRYABLE` errors back off exponentially (1, 2, 4, 8, 16 s
with jitter, at most :data:`MAX_RETRIES`). A branch another run is holding is not an error:
the task is re-sent a moment later as a fresh message (not a retry, so it never exhausts).
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import Any

from celery import Celery, Task

from coderag.errors import CoderagError
from indexer.celery_app import (
    DELETE_BRANCH,
    EXPIRES_S,
    INDEX_BRANCH,
    QUEUE_INDEX,
    REINDEX_REPO,
    REMOVE_REPO,
    worker_context,
)
from indexer.scheduler import RETRYABLE, BranchBusy, reindex_repo, remove_repo, run_branch

__all__ = ["BUSY_COUNTDOWN_S", "MAX_RETRIES", "backoff", "register_tasks"]

log = logging.getLogger(__name__)

MAX_RETRIES = 5
BUSY_COUNTDOWN_S = 1.0


def backoff(retries: int) -> float:
    """Exponential backoff with jitter: about 1, 2, 4, 8, 16 seconds, capped at a minute."""
    return min(60.0, 2.0**retries) * random.uniform(0.8, 1.2)


def _retry(task: Task, exc: Exception) -> Exception:
    name = task.name
    return task.retry(
        exc=exc,
        countdown=backoff(task.request.retries),
        max_retries=MAX_RETRIES,
        expires=EXPIRES_S[name],  # seconds from now
    )


def _queue_of(task: Task) -> str:
    info = task.request.delivery_info or {}
    return info.get("routing_key") or QUEUE_INDEX


def _branch(task: Task, repo_id: str, branch: str) -> dict[str, Any]:
    try:
        return run_branch(worker_context(), repo_id, branch)
    except BranchBusy:
        # Another run owns the branch and will fold our commit in, unless it is just
        # finishing: come back shortly rather than trusting it (see coordination.py).
        task.apply_async(
            args=(repo_id, branch),
            countdown=BUSY_COUNTDOWN_S * random.uniform(0.8, 1.5),
            expires=EXPIRES_S[task.name],  # seconds from now
            queue=_queue_of(task),
        )
        return {"repo": repo_id, "branch": branch, "runs": [], "busy": True}
    except RETRYABLE as exc:
        log.warning("retrying %s %s:%s: %s", task.name, repo_id, branch, exc)
        _hold_schedule(repo_id, branch, task.request.id)
        raise _retry(task, exc) from exc


def _hold_schedule(repo_id: str, branch: str, task_id: str | None) -> None:
    """Make the retry the branch's scheduled run (the failed run had cleared the flag).

    Without it, pushes during the backoff each queue a run of their own, and the orphan
    sweep (:mod:`indexer.recovery`) takes the branch for orphaned and queues a duplicate.
    Taken as a lease; if the retry cannot be published the lease lapses and the sweep
    re-schedules the push.
    """
    if not task_id:
        return
    with contextlib.suppress(CoderagError):  # Redis down too: the sweep covers it
        worker_context().coordinator.claim_schedule(repo_id, branch, task_id)


def register_tasks(app: Celery) -> dict[str, Task]:
    """Define the four tasks on ``app`` under their constant names."""

    @app.task(name=INDEX_BRANCH, bind=True, max_retries=MAX_RETRIES, shared=False)
    def index_branch(self: Task, repo_id: str, branch: str) -> dict[str, Any]:
        """Index the newest pending commit of a branch (folding later pushes in)."""
        return _branch(self, repo_id, branch)

    @app.task(name=DELETE_BRANCH, bind=True, max_retries=MAX_RETRIES, shared=False)
    def delete_branch(self: Task, repo_id: str, branch: str) -> dict[str, Any]:
        """Same loop: a deletion is a pending all-zeros commit, so it orders with pushes."""
        return _branch(self, repo_id, branch)

    @app.task(name=REINDEX_REPO, bind=True, max_retries=MAX_RETRIES, shared=False)
    def reindex(self: Task, repo_id: str, full: bool = True) -> dict[str, Any]:
        """Fetch the mirror and schedule a (full) run of every selected branch."""
        try:
            return reindex_repo(worker_context(), repo_id, full=full)
        except RETRYABLE as exc:
            raise _retry(self, exc) from exc

    @app.task(name=REMOVE_REPO, bind=True, max_retries=MAX_RETRIES, shared=False)
    def remove(self: Task, repo_id: str, requested_at: float | None = None) -> dict[str, Any]:
        """Delete every point of the repository and forget its pending work."""
        try:
            return remove_repo(worker_context(), repo_id, requested_at)
        except RETRYABLE as exc:
            raise _retry(self, exc) from exc

    return {t.name: t for t in (index_branch, delete_branch, reindex, remove)}
