"""How a running process (API, worker) learns of a model switch: it looks, once a second.

A daemon thread started by :meth:`coderag.runtime.Runtime.warm_up` checks every
``model_watch_seconds`` which model is active (:func:`coderag.model_active.active_model`):

* Edge: one ``stat`` of the registry file; it is read again only when the stat changes
  (the switch replaces it whole, so a changed file is a complete one).
* Server: the collection alias, asked only when a model was added on this machine (a
  process without the model's files could not serve it anyway).

When the answer differs from what the process serves, the new model's bundle is built and
warmed *beside* the old one (model loaded, index opened) and only then swapped in with one
reference assignment (:meth:`Runtime.swap`): requests never wait for a model load, never fail
because of the switch, and each is answered wholly by one model. If the new bundle cannot be
made ready (files missing on this machine, shard still locked by a build), the process keeps
serving the old pair, logs why, and tries again at the next check. Retired bundles are closed
after ``model_retire_seconds``, which frees an Edge shard for the next build.

Polling rather than an admin endpoint: it needs no credentials, no route, and works the same
for API replicas and Celery workers, on one box or many, with at most one second of delay.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from coderag.index.factory import DEFAULT_MODEL

if TYPE_CHECKING:
    from coderag.index.base import VectorIndex
    from coderag.settings import Settings


class Followed(Protocol):
    """What the watcher needs of the runtime it follows (:class:`coderag.runtime.Runtime`);
    a protocol, so that this module, which the runtime starts, does not import it back."""

    settings: Settings
    home: VectorIndex

    @property
    def model(self) -> str: ...

    def parked(self, model: str) -> Any: ...

    def prepare(self, name: str) -> Any: ...

    def swap(self, new: Any) -> Any: ...

    def close_retired(self, *, now: float | None = None) -> int: ...

__all__ = ["ModelWatcher"]

log = logging.getLogger(__name__)

_REPEAT_LOG_S = 60.0


class ModelWatcher:
    """Follows the active model for one runtime (see module docstring)."""

    def __init__(self, runtime: Followed, interval: float | None = None) -> None:
        from coderag.models_registry import ModelRegistry

        self.runtime = runtime
        self.interval = runtime.settings.model_watch_seconds if interval is None else interval
        self.registry = ModelRegistry.of(runtime.settings)
        self._server = runtime.settings.resolved_backend == "server"
        self._sig: tuple[int, int, int] | None = None
        self._edge_active = DEFAULT_MODEL
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: tuple[str, float] | None = None
        self.swaps = 0

    def start(self) -> ModelWatcher:
        self._thread = threading.Thread(target=self._loop, name="coderag-model-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check_once()
            except Exception as exc:  # the watcher must outlive any one failure
                self._report(exc)

    # --- one check -------------------------------------------------------------------------------
    def wanted(self) -> str:
        """The model that should serve now."""
        if self._server:
            if not self.registry.exists():
                return DEFAULT_MODEL
            from coderag.model_active import active_model

            return active_model(self.runtime.settings, self.runtime.home)
        sig = self.registry.signature()
        if sig != self._sig:
            self._edge_active = self.registry.read().active if sig is not None else DEFAULT_MODEL
            self._sig = sig
        return self._edge_active

    def check_once(self) -> bool:
        """Swap if another model is active; True when it swapped."""
        self.runtime.close_retired()
        target = self.wanted()
        if target == self.runtime.model or self._stop.is_set():
            return False
        bundle = self.runtime.parked(target) or self.runtime.prepare(target)
        self.runtime.swap(bundle)
        self.swaps += 1
        self._last_error = None
        return True

    def _report(self, exc: Exception) -> None:
        """Log a failure once a minute, not once a second."""
        text = f"{type(exc).__name__}: {getattr(exc, 'detail', None) or exc}"
        now = time.monotonic()
        last = self._last_error
        if last is not None and last[0] == text and now - last[1] < _REPEAT_LOG_S:
            return
        self._last_error = (text, now)
        log.error(
            "cannot switch model; still serving the current one",
            extra={"model": self.runtime.model, "error": text},
        )
