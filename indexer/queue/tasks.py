"""Thin Celery tasks: ids in, a call into :mod:`indexer.jobs`, a JSON summary out.

Messages carry a repo id and a branch, never a payload or a commit: the commit to index is the
newest pending one at the time the task runs (see :mod:`indexer.queue.coordination`), which
is what makes redelivered, retried and duplicated messages harmless.

Retries: :data:`indexer.jobs.RETRYABLE` errors back off exponentially (1, 2, 4, 8, 16 s with
jitter, at most :data:`~indexer.queue.names.MAX_RETRIES`). A branch another run is holding is
not an error: the task is re-sent a moment later as a fresh message (not a retry, so it never
exhausts).

The tasks get their :class:`~indexer.jobs.JobContext` from the ``context`` callable given to
:func:`register_tasks` (the worker process's, see :mod:`indexer.queue.celery_app`).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from celery import Celery, Task

from coderag.errors import CoderagError
from indexer.jobs import RETRYABLE, BranchBusy, JobContext, reindex_repo, remove_repo, run_branch
from indexer.queue.names import (
    DELETE_BRANCH,
    EXPIRES_S,
    INDEX_BRANCH,
    MAX_RETRIES,
    QUEUE_INDEX,
    REINDEX_REPO,
    REMOVE_REPO,
    backoff,
)

__all__ = ["BUSY_COUNTDOWN_S", "register_tasks"]

log = logging.getLogger(__name__)

BUSY_COUNTDOWN_S = 1.0
"""About how long a task waits before trying a branch another run holds again."""

ContextFn = Callable[[], JobContext]


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


def _branch(task: Task, context: ContextFn, repo_id: str, branch: str) -> dict[str, Any]:
    try:
        return run_branch(context(), repo_id, branch)
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
        _hold_schedule(context, repo_id, branch, task.request.id)
        raise _retry(task, exc) from exc


def _hold_schedule(context: ContextFn, repo_id: str, branch: str, task_id: str | None) -> None:
    """Make the retry the branch's scheduled run (the failed run had cleared the flag).

    Without it, pushes during the backoff each queue a run of their own, and the orphan
    sweep (:mod:`indexer.queue.recovery`) takes the branch for orphaned and queues a duplicate.
    Taken as a lease; if the retry cannot be published the lease lapses and the sweep
    re-schedules the push.
    """
    if not task_id:
        return
    with contextlib.suppress(CoderagError):  # Redis down too: the sweep covers it
        context().coordinator.claim_schedule(repo_id, branch, task_id)


def register_tasks(app: Celery, context: ContextFn) -> dict[str, Task]:
    """Define the four tasks on ``app`` under their constant names; each call of a task runs
    its job in ``context()``."""

    @app.task(name=INDEX_BRANCH, bind=True, max_retries=MAX_RETRIES, shared=False)
    def index_branch(self: Task, repo_id: str, branch: str) -> dict[str, Any]:
        """Index the newest pending commit of a branch (folding later pushes in)."""
        return _branch(self, context, repo_id, branch)

    @app.task(name=DELETE_BRANCH, bind=True, max_retries=MAX_RETRIES, shared=False)
    def delete_branch(self: Task, repo_id: str, branch: str) -> dict[str, Any]:
        """Same loop: a deletion is a pending all-zeros commit, so it orders with pushes."""
        return _branch(self, context, repo_id, branch)

    @app.task(name=REINDEX_REPO, bind=True, max_retries=MAX_RETRIES, shared=False)
    def reindex(self: Task, repo_id: str, full: bool = True) -> dict[str, Any]:
        """Fetch the mirror and schedule a (full) run of every selected branch."""
        try:
            return reindex_repo(context(), repo_id, full=full)
        except RETRYABLE as exc:
            raise _retry(self, exc) from exc

    @app.task(name=REMOVE_REPO, bind=True, max_retries=MAX_RETRIES, shared=False)
    def remove(self: Task, repo_id: str, requested_at: float | None = None) -> dict[str, Any]:
        """Delete every point of the repository and forget its pending work."""
        try:
            return remove_repo(context(), repo_id, requested_at)
        except RETRYABLE as exc:
            raise _retry(self, exc) from exc

    return {t.name: t for t in (index_branch, delete_branch, reindex, remove)}
