"""How work leaves the request: one :class:`Dispatcher` protocol, two ways to run it.

The protocol only: :func:`~indexer.queue.factory.dispatcher_from_settings` picks one, so
the jobs can name the protocol without importing the dispatchers that run them.

- :class:`~indexer.queue.celery_dispatcher.CeleryDispatcher` (distributed): records the push
  in Redis and sends a task by its constant name to the broker; Celery workers run it.
- :class:`~indexer.queue.embedded.EmbeddedDispatcher` (embedded default): the same jobs, the
  same folding rules, run by a background thread inside the API process; no broker, no Redis.

Both answer ``submit_*`` in milliseconds and never index in the caller's thread. When the
broker (or Redis) is down ``submit_*`` raises :class:`~coderag.errors.TransientError`; the
webhook has spooled the push durably first and answers 202 anyway, and the spool's forwarder
submits it again once the broker is back (:mod:`webhooks.spool`).

The folding rules of a push (record it as the branch's pending commit, queue a run only when
this push wins the branch's "scheduled" flag) are :class:`~indexer.queue.folding.PushFolding`,
which both dispatchers use; only how a run is queued differs.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Dispatcher"]


@runtime_checkable
class Dispatcher(Protocol):
    """Where the webhook, the repo routes and the jobs themselves send work (a reindex job
    schedules one push per branch). Every method returns fast."""

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
