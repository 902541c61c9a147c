"""Which embedding model a process serves: the one question the runtime, the watcher and
the model commands all ask, kept below all of them (it needs only the registry and the index
factory). Edge: the registry file's ``active``; server: the model of the collection the
shared alias names."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from coderag.errors import ConfigError
from coderag.index.factory import (
    DEFAULT_MODEL,
    active_alias,
    model_from_collection,
    open_model_index,
)
from coderag.models_registry import ModelRegistry, ModelSpec

if TYPE_CHECKING:
    from coderag.index.base import VectorIndex
    from coderag.settings import Settings

__all__ = ["active_model", "active_spec", "with_server"]


def active_model(settings: Settings, home: VectorIndex | None = None) -> str:
    """The model being served. Edge: the registry file's ``active``. Server: the model of the
    collection the alias names (the alias is shared by every process, the file is not);
    asked only once a model was added on this machine. No registry: ``default``."""
    registry = ModelRegistry.of(settings)
    if not registry.exists():
        return DEFAULT_MODEL
    if settings.resolved_backend != "server":
        return registry.read().active
    target = with_server(settings, home, lambda idx: idx.alias_target(active_alias(settings)))
    name = model_from_collection(settings, target)
    if name is None:
        raise ConfigError(
            f"alias {active_alias(settings)!r} points at {target!r}, which is not a coderag "
            "model collection; point it back with `coderag models switch`"
        )
    return name


def active_spec(settings: Settings, home: VectorIndex | None = None) -> ModelSpec:
    """The registry's spec of :func:`active_model`."""
    registry = ModelRegistry.of(settings)
    return registry.spec(active_model(settings, home), settings)


def with_server(settings: Settings, home: VectorIndex | None, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn`` on a ServerIndex: ``home`` when it is one, else a short-lived client."""
    from coderag.index.server import ServerIndex

    if isinstance(home, ServerIndex):
        return fn(home)
    idx = open_model_index(settings, DEFAULT_MODEL)
    try:
        return fn(idx)
    finally:
        idx.close()
