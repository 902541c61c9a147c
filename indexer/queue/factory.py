"""Choosing the dispatcher: Celery when a broker is configured, the in-process executor
otherwise. Kept apart from the :class:`~indexer.queue.dispatcher.Dispatcher` protocol, which
the jobs import, so that no job imports the dispatchers that run it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coderag.settings import Settings

if TYPE_CHECKING:
    from coderag.runtime import Runtime
    from indexer.queue.dispatcher import Dispatcher

__all__ = ["dispatcher_from_settings"]


def dispatcher_from_settings(settings: Settings, runtime: Runtime) -> Dispatcher:
    """Celery when a broker is configured, the in-process executor otherwise.

    Each dispatcher is imported only when chosen, so embedded mode never loads Celery.
    """
    if settings.distributed:
        from indexer.queue.celery_dispatcher import CeleryDispatcher

        return CeleryDispatcher(settings)
    from indexer.queue.embedded import EmbeddedDispatcher

    return EmbeddedDispatcher(runtime)
