"""Push folding, written once for both dispatchers.

A push is recorded as its branch's pending commit; a run is queued only when this push wins
the branch's "scheduled" flag, so several pushes to one branch in a short window fold into
one run of the newest commit (see :mod:`indexer.queue.coordination`). Only how a run is
queued differs between the dispatchers: that is the ``enqueue`` callable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from coderag.errors import TransientError
from indexer.git import NULL_SHA
from indexer.queue.coordination import Coordinator, new_task_id
from indexer.queue.names import DELETE_BRANCH, INDEX_BRANCH

__all__ = ["BranchRun", "Enqueue", "PushFolding", "branch_task"]


def branch_task(sha: str) -> str:
    """The task that brings a branch to ``sha``: the all-zeros commit is a deletion, so it
    orders with the pushes of the branch."""
    return DELETE_BRANCH if sha == NULL_SHA else INDEX_BRANCH


@dataclass(frozen=True, slots=True)
class BranchRun:
    """A run of one branch to queue; its "scheduled" flag is already claimed for
    ``task_id``."""

    task: str
    repo_id: str
    branch: str
    task_id: str
    full: bool = False


Enqueue = Callable[[BranchRun, float], None]
"""Queue ``run`` to start in (at least) that many seconds; raises
:class:`~coderag.errors.TransientError` when it cannot."""


class PushFolding:
    """The push-folding rules (see :mod:`indexer.queue.coordination`), for any queue.

    ``enqueue`` is the dispatcher's own way of queueing a run; ``debounce`` is how long a
    fresh run waits, so that a burst of pushes folds into it.
    """

    def __init__(self, coordinator: Coordinator, enqueue: Enqueue, *, debounce: float) -> None:
        self.coordinator = coordinator
        self.enqueue = enqueue
        self.debounce = debounce

    def submit_push(
        self, repo_id: str, branch: str, after_sha: str, received_at: float, *, full: bool = False
    ) -> str:
        """Record the push; queue a run unless one is scheduled already (then return its id:
        the run will read this push as the branch's newest pending commit)."""
        self.coordinator.record(repo_id, branch, after_sha, received_at, full=full)
        run = BranchRun(branch_task(after_sha), repo_id, branch, new_task_id(), full)
        existing = self.coordinator.claim_schedule(repo_id, branch, run.task_id)
        if existing is not None:
            return existing  # folded into the run already scheduled
        return self._enqueue_claimed(run, self.debounce)

    def reschedule(
        self, repo_id: str, branch: str, *, stale_after: float | None = None
    ) -> str | None:
        """Queue a run for a pending commit that nothing will index
        (:mod:`indexer.queue.recovery`).

        Does nothing while a run holds the branch or a task is scheduled for it, unless that
        task was queued more than ``stale_after`` seconds ago (then its flag is replaced);
        returns the new task id, or ``None``.
        """
        coord = self.coordinator
        p = coord.pending(repo_id, branch)
        if p is None or coord.is_locked(repo_id, branch):
            return None
        if stale_after is not None:
            age = coord.schedule_age(repo_id, branch)
            if age is not None and age >= stale_after:
                coord.release_schedule(repo_id, branch)
        run = BranchRun(branch_task(p.sha), repo_id, branch, new_task_id(), p.full)
        if coord.claim_schedule(repo_id, branch, run.task_id) is not None:
            return None
        return self._enqueue_claimed(run, 0.0)

    def _enqueue_claimed(self, run: BranchRun, delay: float) -> str:
        """Queue the run whose flag we hold; confirm the flag once the run is queued.

        A failed enqueue clears the flag so that the next delivery of the push schedules the
        run; when Redis is too sick for that, the flag is only a short lease and lapses by
        itself (see :mod:`indexer.queue.coordination`). A failed confirm is harmless: the
        lease lapses while the task is queued and, at worst, a later push queues a second,
        folded run.
        """
        try:
            self.enqueue(run, delay)
        except TransientError:
            with contextlib.suppress(TransientError):
                self.coordinator.release_schedule(run.repo_id, run.branch)
            raise
        with contextlib.suppress(TransientError):
            self.coordinator.confirm_schedule(run.repo_id, run.branch, run.task_id)
        return run.task_id


# ----------------------------------------------------------------------------- factory
