"""The periodic freshness pass: reconciliation and hook health for every registered repo.

Every ``settings.reconcile_interval_seconds`` one pass, for each registered repository:

1. :func:`indexer.reconcile.reconcile_repo`: GitLab's branch heads against the indexed
   commits; what is behind is scheduled, vanished branches are removed;
2. :func:`webhooks.hook_health.check_hook`: the project hook's ``alert_status``, a
   temporarily disabled hook re-enabled (``settings.reconcile_reenable_hooks``);
3. the outcome is written to the index state under ``reconcile/<repo>``
   (:func:`coderag.status.reconcile_state_key`), where ``GET /v1/repos/{id}/status``,
   ``coderag status`` and the API's ``/metrics`` read it, whatever process wrote it.

Who runs it: in embedded mode the API process (its lifespan calls :func:`start_in_api`); in
distributed mode every worker (``worker_ready`` calls :func:`start_in_worker`), and a Redis
``SET NX PX`` lock of one interval lets only one of them run each interval's pass. The
first pass runs one interval after start, not at once: a fleet restarting together does not
list every remote at the same moment, and short-lived processes (tests, one-off commands)
never run one unless asked.

To run a pass now (tests, an operator's shell): :func:`run_pass`, or
:meth:`Freshness.run_once` with ``force=True`` to bypass the interval lock.

This module is a composition root (it joins the indexer's reconciliation and the webhooks'
hook check); only the API lifespan and the worker start it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from coderag.index import VectorIndex
from coderag.repos import RepoRecord, RepoRegistry
from coderag.settings import Settings
from coderag.status import reconcile_state_key, reconcile_states

__all__ = [
    "LOCK_KEY",
    "Freshness",
    "reconcile_one",
    "run_pass",
    "start_in_api",
    "start_in_worker",
]

log = logging.getLogger(__name__)

LOCK_KEY = "coderag:reconcile:lock"
"""The Redis key whose holder runs the current interval's pass (distributed mode)."""


def reconcile_one(
    settings: Settings, index: VectorIndex, dispatcher: Any, record: RepoRecord
) -> dict[str, Any]:
    """Reconcile one repository, check its hook, store and return the state record."""
    from indexer.reconcile import reconcile_repo
    from webhooks.hook_health import check_hook

    result = reconcile_repo(record, index=index, dispatcher=dispatcher, settings=settings)
    hook = check_hook(settings, record, reenable=settings.reconcile_reenable_hooks)
    key = reconcile_state_key(record.id)
    prev = index.get_state(key) or {}
    listed = result.ok or bool(result.heads)
    state = {
        "repo": record.id,
        "at": result.at,
        "ok": result.ok,
        "ok_at": result.at if result.ok else prev.get("ok_at"),
        # A failed listing leaves the heads of the last one that worked, and says so.
        "heads": result.heads if listed else dict(prev.get("heads") or {}),
        "scheduled": result.scheduled,
        "removed": result.removed,
        "pending": result.pending,
        "mirror": result.mirror,
        "error": result.error,
        "scheduled_total": int(prev.get("scheduled_total") or 0)
        + len(result.scheduled)
        + len(result.removed),
        "hook": hook.as_dict() if hook.managed else None,
    }
    index.set_state(key, state)
    return state


def run_pass(
    settings: Settings,
    index: VectorIndex,
    dispatcher: Any,
    *,
    registry: RepoRegistry | None = None,
) -> dict[str, dict[str, Any]]:
    """One pass over every registered repository now; returns repo -> state record.

    One repository's failure (its remote, its hook, even an unexpected bug) is logged and
    does not stop the others. Records of repositories no longer registered are dropped.
    """
    registry = registry or RepoRegistry(index)
    records = registry.list()
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        try:
            out[rec.id] = reconcile_one(settings, index, dispatcher, rec)
        except Exception:  # never let one repo end the pass
            log.exception("reconcile pass failed for a repository", extra={"repo": rec.id})
    known = {r.id for r in records}
    for repo in reconcile_states(index):
        if repo not in known and registry.get(repo) is None:
            index.set_state(reconcile_state_key(repo), None)
    return out


class Freshness:
    """A daemon thread running :func:`run_pass` every ``settings.reconcile_interval_seconds``.

    ``redis``: the client of the cross-process lock (distributed mode); ``None`` runs every
    interval's pass unconditionally (embedded mode: one process). ``owns``: resources to close
    on :meth:`stop` (an index or dispatcher built for this driver).
    """

    def __init__(
        self,
        settings: Settings,
        index: VectorIndex,
        dispatcher: Any,
        *,
        redis: Any | None = None,
        owns: tuple[Any, ...] = (),
    ) -> None:
        self.settings = settings
        self.index = index
        self.dispatcher = dispatcher
        self.redis = redis
        self.interval = float(settings.reconcile_interval_seconds)
        self.passes = 0
        self.last: dict[str, dict[str, Any]] = {}
        self._owns = owns
        self._me = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="coderag-freshness", daemon=True)

    def start(self) -> Freshness:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for obj in self._owns:
            try:
                obj.close()
            except Exception as exc:  # shutting down: log and carry on
                log.warning("closing %r failed: %r", obj, exc)

    def _claim(self) -> bool:
        """Whether this process runs this interval's pass (always, without Redis)."""
        if self.redis is None:
            return True
        ms = max(1, int(self.interval * 1000))
        try:
            return bool(self.redis.set(LOCK_KEY, self._me, nx=True, px=ms))
        except Exception as exc:  # Redis down: nothing could be submitted anyway
            log.warning("reconcile pass skipped: Redis unavailable (%r)", exc)
            return False

    def run_once(self, *, force: bool = False) -> dict[str, dict[str, Any]] | None:
        """Run a pass now if this process wins the interval (or ``force``); ``None`` when
        another process has this interval's pass."""
        if not force and not self._claim():
            return None
        t0 = time.monotonic()
        self.last = run_pass(self.settings, self.index, self.dispatcher)
        self.passes += 1
        log.info(
            "reconcile pass done",
            extra={
                "repos": len(self.last),
                "scheduled": sum(len(s["scheduled"]) for s in self.last.values()),
                "removed": sum(len(s["removed"]) for s in self.last.values()),
                "errors": sum(1 for s in self.last.values() if s.get("error")),
                "seconds": round(time.monotonic() - t0, 3),
            },
        )
        return self.last

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:  # the index briefly unavailable, ...: try next interval
                log.exception("reconcile pass failed")


def start_in_api(settings: Settings, index: VectorIndex, dispatcher: Any) -> Freshness | None:
    """The API lifespan's driver: embedded mode only (distributed: the workers run it)."""
    if settings.distributed or settings.reconcile_interval_seconds <= 0:
        return None
    return Freshness(settings, index, dispatcher).start()


def start_in_worker(
    settings: Settings, app: Any = None, *, index: VectorIndex | None = None
) -> Freshness | None:
    """A worker's driver (``worker_ready``, main process), on its own connections: a Celery
    dispatcher and a Redis client for the lock.

    The index: ``index`` when given; else the job context's own when this process runs the
    tasks too (``--pool solo``, or a launcher that installed one), an Edge shard included;
    else a client of its own to the Qdrant server. With an Edge index owned by another
    process (prefork children) there is none to read: not started (a distributed deployment
    uses a Qdrant server anyway).
    """
    if settings.reconcile_interval_seconds <= 0:
        return None
    import redis

    from indexer.queue.celery_app import current_context
    from indexer.queue.celery_dispatcher import CeleryDispatcher

    owned: list[Any] = []
    if index is None:
        ctx = current_context()
        if ctx is not None:
            index = ctx.runtime.index
        elif settings.resolved_backend == "server":
            from coderag.index.factory import open_index

            index = open_index(settings)
            owned.append(index)
        else:
            log.info("reconcile pass not started in this worker: the Edge index is not shared")
            return None
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=1.0, socket_timeout=5.0
    )
    dispatcher = CeleryDispatcher(settings, app=app, redis_client=client)
    return Freshness(
        settings, index, dispatcher, redis=client, owns=(dispatcher, *owned, client)
    ).start()
