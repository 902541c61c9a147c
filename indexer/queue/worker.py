"""The worker side of the distributed mode: what a Celery worker process sets up.

Importing this module (``coderag worker`` does) installs the job-context builder in
:mod:`indexer.queue.celery_app` and connects the worker signals: the model loads and the index
opens in ``worker_process_init`` (after any fork), the orphan sweep
(:mod:`indexer.queue.recovery`) and the reconciliation pass (:mod:`coderag.freshness`) start
in ``worker_ready``, and the index closes on shutdown.
A process that only sends tasks (the API) never imports it, so sending stays light.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celery import signals

from coderag.settings import Settings
from indexer.queue import celery_app
from indexer.queue.celery_dispatcher import CeleryDispatcher

if TYPE_CHECKING:
    from indexer.jobs import JobContext

__all__ = ["build_context", "context_for"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_reconciler: Any = None
_freshness: Any = None


def build_context(settings: Settings) -> JobContext:
    """Runtime (model + index, warmed up) and the job context around it."""
    from coderag.runtime import build_runtime

    runtime = build_runtime(settings)
    runtime.warm_up()
    return context_for(runtime)


def context_for(runtime: Any) -> JobContext:
    """Job context of a worker around an already built runtime."""
    import redis

    from coderag.repos import RepoRegistry
    from indexer.jobs import JobContext
    from indexer.queue.coordination import RedisCoordinator

    settings = runtime.settings
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=1.0, socket_timeout=10.0
    )
    return JobContext(
        runtime=runtime,
        registry=RepoRegistry(runtime.index),
        coordinator=RedisCoordinator(client, lock_ttl=settings.branch_lock_ttl_seconds),
        scheduler=CeleryDispatcher(settings, redis_client=client),
    )


@signals.worker_process_init.connect
def _on_worker_process_init(**_: Any) -> None:
    """Load the model and open the index in the process that will run the tasks (after any
    fork), so the first task does not pay for it."""
    if celery_app.configured_settings() is None:
        return
    try:
        celery_app.worker_context()
    except Exception:  # keep the worker up; the first task reports the error
        log.exception("worker warm-up failed")


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """Start the orphan sweep (:mod:`indexer.queue.recovery`) in the worker's main process.

    It needs Redis and the broker only, not the model, so it runs beside any pool (in a
    prefork parent too) on its own connections; every worker runs one, and the flag makes
    concurrent sweeps queue one task per branch.
    """
    global _reconciler
    settings = celery_app.configured_settings()
    if settings is None or settings.recovery_interval_seconds <= 0:
        return
    from indexer.queue.recovery import Reconciler

    app = getattr(sender, "app", None)
    try:
        dispatcher = CeleryDispatcher(settings, app=app)
    except Exception:  # keep the worker up: pushes still schedule their own runs
        log.exception("orphan sweep not started")
        return
    with _lock:
        old, _reconciler = (
            _reconciler,
            Reconciler(
                dispatcher, settings.recovery_interval_seconds, settings.recovery_stale_seconds
            ),
        )
        _reconciler.start()
    if old is not None:
        old.stop()


@signals.worker_ready.connect
def _start_freshness(sender: Any = None, **_: Any) -> None:
    """Start the reconciliation pass (:mod:`coderag.freshness`) in the worker's main process;
    a Redis lock lets one worker of the fleet run each interval's pass."""
    global _freshness
    settings = celery_app.configured_settings()
    if settings is None:
        return
    from coderag.freshness import start_in_worker

    try:
        started = start_in_worker(settings, getattr(sender, "app", None))
    except Exception:  # keep the worker up: webhooks still schedule their own runs
        log.exception("reconcile pass not started")
        return
    with _lock:
        old, _freshness = _freshness, started
    if old is not None:
        old.stop()


@signals.worker_shutdown.connect
def _stop_reconciler(**_: Any) -> None:
    global _reconciler, _freshness
    with _lock:
        rec, _reconciler = _reconciler, None
    if rec is not None:
        rec.stop()
        rec.dispatcher.close()
    with _lock:
        fresh, _freshness = _freshness, None
    if fresh is not None:
        fresh.stop()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    """Close the index (an Edge shard must be released cleanly) when the process ends."""
    ctx = celery_app.clear_context()
    if ctx is not None:
        try:
            ctx.runtime.close()
        except Exception:  # shutting down anyway
            log.exception("closing the runtime failed")


celery_app.set_context_builder(build_context)
