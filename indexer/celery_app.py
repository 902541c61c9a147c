"""The Celery application of the distributed mode, configured from :class:`Settings`.

Rules (DESIGN.md, Polar and Onyx habits): JSON only, constant task names and queues, late
acks so a task dies with its worker and is redelivered, prefetch 1 so a long full index does
not sit on short pushes, and ``expires`` on every message. Nothing heavy happens at import:
the worker builds its :class:`~coderag.runtime.Runtime` (model + index) once per process in
``worker_process_init`` (prefork children and the solo pool) or on first use (threads pool).

GPU workers must not fork after CUDA is initialised: run them with ``--pool solo`` (one task
at a time, the model loaded in the worker process itself) or ``--pool threads``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from celery import Celery, signals
from celery.backends.redis import RedisBackend

from coderag.errors import ConfigError
from coderag.settings import Settings

if TYPE_CHECKING:
    from indexer.scheduler import JobContext

__all__ = [
    "DELETE_BRANCH",
    "EXPIRES_S",
    "INDEX_BRANCH",
    "QUEUES",
    "QUEUE_EMBED",
    "QUEUE_GIT",
    "QUEUE_INDEX",
    "REINDEX_REPO",
    "REMOVE_REPO",
    "StatusBackend",
    "create_celery",
    "install_context",
    "worker_context",
]

log = logging.getLogger(__name__)

INDEX_BRANCH = "coderag.index_branch"
DELETE_BRANCH = "coderag.delete_branch"
REINDEX_REPO = "coderag.reindex_repo"
REMOVE_REPO = "coderag.remove_repo"

QUEUE_GIT = "git"
"""Light git/bookkeeping work: listing branches for a reindex, removing a repository."""
QUEUE_INDEX = "index"
"""Pushes: incremental runs (diff, a few files embedded). The default queue."""
QUEUE_EMBED = "embed"
"""Embedding-heavy full runs when ``settings.full_index_queue == "embed"`` (GPU workers)."""
QUEUES = (QUEUE_GIT, QUEUE_INDEX, QUEUE_EMBED)

EXPIRES_S = {
    INDEX_BRANCH: 6 * 3600,
    DELETE_BRANCH: 6 * 3600,
    REINDEX_REPO: 24 * 3600,
    REMOVE_REPO: 7 * 24 * 3600,
}
"""Seconds a message may wait in a queue before it is discarded. A dropped push is not lost
work: its commit stays pending and the branch's schedule flag expires, so the next push
schedules the run again."""

_ROUTES = {
    INDEX_BRANCH: QUEUE_INDEX,
    DELETE_BRANCH: QUEUE_INDEX,
    REINDEX_REPO: QUEUE_GIT,
    REMOVE_REPO: QUEUE_GIT,
}

_state_lock = threading.Lock()
_build_lock = threading.Lock()
_settings: Settings | None = None
_context: JobContext | None = None
_reconciler: Any = None


class StatusBackend(RedisBackend):
    """Celery's Redis result backend, minus the pub/sub subscription made at send time.

    coderag reads a task's status with one GET (``AsyncResult.state``) and never waits on a
    result, so subscribing to every sent task's channel is pure cost in the API process, and
    with Redis down it turns a fast 503 into a 20-try reconnect loop.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None


def create_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings`` (tasks registered, worker signals connected).

    Building a fresh app per call keeps tests and tools with different brokers apart; a worker
    process calls it once.
    """
    global _settings
    if not settings.celery_broker_url:
        raise ConfigError("distributed mode needs CODERAG_CELERY_BROKER_URL")
    app = Celery("coderag", set_as_current=False)
    app.conf.update(
        broker_url=settings.celery_broker_url,
        result_backend=f"indexer.celery_app:StatusBackend+{settings.celery_broker_url}",
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE_INDEX,
        task_routes=dict(_ROUTES),
        task_track_started=True,
        result_expires=24 * 3600,
        result_extended=True,
        # Fail fast when the broker is down: the webhook answers 503 within a second and
        # GitLab retries, instead of a request that blocks on reconnects.
        broker_connection_timeout=1.0,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"socket_connect_timeout": 1.0, "socket_timeout": 5.0},
        redis_socket_connect_timeout=1.0,
        redis_socket_timeout=5.0,
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.1,
            "interval_max": 0.1,
        },
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
    )
    from indexer.tasks import register_tasks

    register_tasks(app)
    _survive_broker_restarts()
    with _state_lock:
        _settings = settings
    return app


def _survive_broker_restarts() -> None:
    """Keep a worker alive when Redis restarts while it holds unacked (late-ack) messages.

    On a lost broker connection Celery 5.7's consumer first ``collect()``s the kombu
    connection (dropping its client), then ``close()``s it; the Redis channel's close then
    tries to put the unacked messages back through that client and raises AttributeError,
    which ``ignore_errors`` does not cover: "Unrecoverable error", the worker exits (seen in
    ``tests/test_faults.py``). Swallowing that one error loses nothing: the messages stay in
    the broker's unacked set (restored after the visibility timeout) and their pushes stay
    pending in Redis for :mod:`indexer.recovery` to re-schedule.
    """
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel.close
    if getattr(original, "_coderag_safe", False):
        return

    def close(self: Any) -> None:
        try:
            original(self)
        except AttributeError as exc:  # the collected connection: see the docstring
            log.warning("broker channel closed after its connection was collected: %s", exc)

    close._coderag_safe = True  # type: ignore[attr-defined]
    kombu_redis.Channel.close = close  # type: ignore[method-assign]


def install_context(ctx: JobContext | None) -> None:
    """Use ``ctx`` for the tasks of this process (tests, launchers with a custom index)."""
    global _context
    with _state_lock:
        _context = ctx


def worker_context() -> JobContext:
    """The process's job context, built on first use: runtime (model + index), registry,
    Redis coordinator and a dispatcher for follow-up tasks."""
    global _context
    with _build_lock:  # one build per process: a second Edge open would fail (one owner)
        with _state_lock:
            if _context is not None:
                return _context
            if _settings is None:
                raise ConfigError("create_celery(settings) was not called in this process")
            settings = _settings
        from coderag.runtime import build_runtime

        runtime = build_runtime(settings)
        runtime.warm_up()
        ctx = context_for(runtime)
        with _state_lock:
            _context = ctx
        return ctx


def context_for(runtime: Any) -> JobContext:
    """Job context of a worker around an already built runtime."""
    import redis

    from coderag.repos import RepoRegistry
    from indexer.coordination import RedisCoordinator
    from indexer.dispatch import CeleryDispatcher
    from indexer.scheduler import JobContext

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
    if _settings is None:
        return
    try:
        worker_context()
    except Exception:  # keep the worker up; the first task reports the error
        log.exception("worker warm-up failed")


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    """Start the orphan sweep (:mod:`indexer.recovery`) in the worker's main process.

    It needs Redis and the broker only, not the model, so it runs beside any pool (in a
    prefork parent too) on its own connections; every worker runs one, and the flag makes
    concurrent sweeps queue one task per branch.
    """
    global _reconciler
    settings = _settings
    if settings is None or settings.recovery_interval_seconds <= 0:
        return
    from indexer.dispatch import CeleryDispatcher
    from indexer.recovery import Reconciler

    app = getattr(sender, "app", None)
    try:
        dispatcher = CeleryDispatcher(settings, app=app)
    except Exception:  # keep the worker up: pushes still schedule their own runs
        log.exception("orphan sweep not started")
        return
    with _state_lock:
        old, _reconciler = (
            _reconciler,
            Reconciler(
                dispatcher, settings.recovery_interval_seconds, settings.recovery_stale_seconds
            ),
        )
        _reconciler.start()
    if old is not None:
        old.stop()


@signals.worker_shutdown.connect
def _stop_reconciler(**_: Any) -> None:
    global _reconciler
    with _state_lock:
        rec, _reconciler = _reconciler, None
    if rec is not None:
        rec.stop()
        rec.dispatcher.close()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    """Close the index (an Edge shard must be released cleanly) when the process ends."""
    global _context
    with _state_lock:
        ctx, _context = _context, None
    if ctx is not None:
        try:
            ctx.runtime.close()
        except Exception:  # shutting down anyway
            log.exception("closing the runtime failed")
