"""The Celery application of the distributed mode, configured from :class:`Settings`.

Rules: JSON only, constant task names and queues (:mod:`indexer.queue.names`), late acks so
a task dies with its worker and is redelivered, prefetch 1 so a long full index does not sit
on short pushes, and ``expires`` on every message. Nothing heavy happens at import:
the worker builds its :class:`~coderag.runtime.Runtime` (model + index) once per process in
``worker_process_init`` (prefork children and the solo pool) or on first use (threads pool).

GPU workers must not fork after CUDA is initialised: run them with ``--pool solo`` (one task
at a time, the model loaded in the worker process itself) or ``--pool threads``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.backends.redis import RedisBackend

from coderag.errors import ConfigError
from coderag.settings import Settings
from indexer.queue.names import (
    DELETE_BRANCH,
    INDEX_BRANCH,
    QUEUE_GIT,
    QUEUE_INDEX,
    REINDEX_REPO,
    REMOVE_REPO,
)
from indexer.queue.tasks import register_tasks

if TYPE_CHECKING:
    from indexer.jobs import JobContext

__all__ = [
    "StatusBackend",
    "clear_context",
    "configured_settings",
    "create_celery",
    "current_context",
    "install_context",
    "set_context_builder",
    "worker_context",
]

log = logging.getLogger(__name__)

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
_builder: Callable[[Settings], JobContext] | None = None


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
        result_backend=f"indexer.queue.celery_app:StatusBackend+{settings.celery_broker_url}",
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
        # Fail fast when the broker is down: a submit fails within a second instead of
        # blocking the request on reconnects.
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
    register_tasks(app, worker_context)
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
    pending in Redis for :mod:`indexer.queue.recovery` to re-schedule.
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


def set_context_builder(builder: Callable[[Settings], JobContext] | None) -> None:
    """How a worker process builds its job context on first use. The worker side
    (:mod:`indexer.queue.worker`) installs its builder when imported; a process that only
    sends tasks (the API) never needs one."""
    global _builder
    with _state_lock:
        _builder = builder


def configured_settings() -> Settings | None:
    """The settings of the last :func:`create_celery` call in this process."""
    with _state_lock:
        return _settings


def current_context() -> JobContext | None:
    """The job context in use, if one was built or installed."""
    with _state_lock:
        return _context


def clear_context() -> JobContext | None:
    """Forget the job context and hand it back (the caller closes it)."""
    global _context
    with _state_lock:
        ctx, _context = _context, None
    return ctx


def worker_context() -> JobContext:
    """The process's job context, built on first use by the installed builder."""
    global _context
    with _build_lock:  # one build per process: a second Edge open would fail (one owner)
        with _state_lock:
            if _context is not None:
                return _context
            if _settings is None:
                raise ConfigError("create_celery(settings) was not called in this process")
            settings, builder = _settings, _builder
        if builder is None:
            raise ConfigError(
                "this process has no worker context: start workers with `coderag worker`"
            )
        ctx = builder(settings)
        with _state_lock:
            _context = ctx
        return ctx
