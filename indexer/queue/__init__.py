"""The indexer's queue machinery: how a push becomes one folded indexing run.

- :mod:`~indexer.queue.names`: task and queue names, message expiry, retry policy;
- :mod:`~indexer.queue.coordination`: pending commits, "scheduled" flags and branch locks;
- :mod:`~indexer.queue.dispatcher`: the :class:`Dispatcher` protocol;
- :mod:`~indexer.queue.factory`: :func:`dispatcher_from_settings`;
- :mod:`~indexer.queue.folding`: the push-folding rules, written once for both dispatchers;
- :mod:`~indexer.queue.embedded`: :class:`EmbeddedDispatcher`, jobs in threads, no Celery;
- :mod:`~indexer.queue.celery_app`, :mod:`~indexer.queue.tasks`,
  :mod:`~indexer.queue.celery_dispatcher`: the distributed mode on Celery (sending side);
- :mod:`~indexer.queue.worker`: what a worker process sets up (job context, signals);
- :mod:`~indexer.queue.recovery`: the sweep that re-schedules orphaned pushes.

The jobs themselves are :mod:`indexer.jobs`. Every name below is exported lazily (on first
access), so importing one submodule, or :class:`EmbeddedDispatcher` from here, never loads
Celery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.queue.celery_app import (
        StatusBackend,
        create_celery,
        install_context,
        worker_context,
    )
    from indexer.queue.celery_dispatcher import CeleryDispatcher
    from indexer.queue.coordination import (
        Coordinator,
        MemoryCoordinator,
        Pending,
        RedisCoordinator,
    )
    from indexer.queue.dispatcher import Dispatcher
    from indexer.queue.embedded import EmbeddedDispatcher
    from indexer.queue.factory import dispatcher_from_settings
    from indexer.queue.folding import PushFolding
    from indexer.queue.names import (
        DELETE_BRANCH,
        EXPIRES_S,
        INDEX_BRANCH,
        MAX_RETRIES,
        QUEUE_EMBED,
        QUEUE_GIT,
        QUEUE_INDEX,
        QUEUES,
        REINDEX_REPO,
        REMOVE_REPO,
        backoff,
    )
    from indexer.queue.recovery import Reconciler, recover_orphans
    from indexer.queue.worker import context_for

__all__ = [
    "DELETE_BRANCH",
    "EXPIRES_S",
    "INDEX_BRANCH",
    "MAX_RETRIES",
    "QUEUES",
    "QUEUE_EMBED",
    "QUEUE_GIT",
    "QUEUE_INDEX",
    "REINDEX_REPO",
    "REMOVE_REPO",
    "CeleryDispatcher",
    "Coordinator",
    "Dispatcher",
    "EmbeddedDispatcher",
    "MemoryCoordinator",
    "Pending",
    "PushFolding",
    "Reconciler",
    "RedisCoordinator",
    "StatusBackend",
    "backoff",
    "context_for",
    "create_celery",
    "dispatcher_from_settings",
    "install_context",
    "recover_orphans",
    "worker_context",
]

_HOMES = {
    "celery_app": (
        "StatusBackend",
        "create_celery",
        "install_context",
        "worker_context",
    ),
    "celery_dispatcher": ("CeleryDispatcher",),
    "coordination": ("Coordinator", "MemoryCoordinator", "Pending", "RedisCoordinator"),
    "dispatcher": ("Dispatcher",),
    "factory": ("dispatcher_from_settings",),
    "folding": ("PushFolding",),
    "embedded": ("EmbeddedDispatcher",),
    "names": (
        "DELETE_BRANCH",
        "EXPIRES_S",
        "INDEX_BRANCH",
        "MAX_RETRIES",
        "QUEUES",
        "QUEUE_EMBED",
        "QUEUE_GIT",
        "QUEUE_INDEX",
        "REINDEX_REPO",
        "REMOVE_REPO",
        "backoff",
    ),
    "recovery": ("Reconciler", "recover_orphans"),
    "worker": ("context_for",),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
