"""Pick the index backend from the settings: the composition root's only index decision.

Where each embedding model's vectors live (docs/MODELS.md): the settings' own model
(``default``) in the index that existed before any model was added (the ``collection``, or
the Edge shard in ``index_dir``); an added model ``M`` in collection ``<collection>__M`` on a
server, or in its own Edge shard directory ``data_dir/index-models/M/`` (its own LOCK, so a
command can build it while ``coderag serve`` owns the served one). On a server the alias
``<collection>__active`` names the collection being served.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coderag.index.base import VectorIndex
    from coderag.settings import Settings

__all__ = [
    "DEFAULT_MODEL",
    "active_alias",
    "model_collection",
    "model_from_collection",
    "model_index_dir",
    "open_index",
    "open_model_index",
    "peek_state",
]

DEFAULT_MODEL = "default"
_SEP = "__"


def open_index(settings: Settings) -> VectorIndex:
    """The backend ``settings.resolved_backend`` names, not yet opened.

    Cheap: no shard is opened and no connection made until the caller runs
    ``ensure(dim)`` (from the FastAPI lifespan or the worker's init), so building the app
    or importing a task module never touches the index.
    """
    if settings.resolved_backend == "server":
        from coderag.index.server import ServerIndex

        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ServerIndex(url=settings.qdrant_url, api_key=key, collection=settings.collection)
    from coderag.index.edge import EdgeIndex

    # The service's shard builds its HNSW graph in the background (coderag.index.edge_build).
    return EdgeIndex(settings.index_dir, collection=settings.collection, background_hnsw=True)


def model_collection(settings: Settings, model: str) -> str:
    """Collection of ``model``'s points on a server."""
    return settings.collection if model == DEFAULT_MODEL else f"{settings.collection}{_SEP}{model}"


def active_alias(settings: Settings) -> str:
    """The alias naming the served collection. Not ``<collection>`` itself: a site that
    indexed before models existed has a real collection of that name, and Qdrant refuses an
    alias named like a collection (``validate_collection_not_exists`` in ``update_aliases``)."""
    return f"{settings.collection}{_SEP}active"


def model_from_collection(settings: Settings, collection: str | None) -> str | None:
    """The model a collection (an alias target) belongs to; ``None`` if none of ours."""
    if collection is None or collection == settings.collection:
        return DEFAULT_MODEL
    prefix = f"{settings.collection}{_SEP}"
    return collection.removeprefix(prefix) if collection.startswith(prefix) else None


def model_index_dir(settings: Settings, model: str) -> Path:
    """Edge directory of ``model``'s shard (its LOCK and state file sit next to it)."""
    return settings.index_dir if model == DEFAULT_MODEL else settings.model_index_root / model


def open_model_index(
    settings: Settings, model: str, home: VectorIndex | None = None
) -> VectorIndex:
    """``model``'s own index, not yet opened: the home index itself for ``default``; on a
    server a sibling of ``home`` (same client) when one is given."""
    if model == DEFAULT_MODEL and home is not None:
        return home
    if settings.resolved_backend == "server":
        from coderag.index.server import ServerIndex

        name = model_collection(settings, model)
        if isinstance(home, ServerIndex):
            return home.sibling(name)
        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ServerIndex(url=settings.qdrant_url, api_key=key, collection=name)
    from coderag.index.edge import EdgeIndex

    return EdgeIndex(
        model_index_dir(settings, model), collection=settings.collection, background_hnsw=True
    )


def peek_state(
    settings: Settings, model: str, prefix: str = "", home: VectorIndex | None = None
) -> dict[str, dict[str, Any]]:
    """State records of ``model``'s index without taking it over: on Edge the state file
    is read as it is (its owner may be serving), on a server the collection is asked."""
    if settings.resolved_backend == "server":
        idx = open_model_index(settings, model, home)
        try:
            return idx.list_state(prefix)
        finally:
            if idx is not home:
                idx.close()
    from coderag.index.edge import read_state_file

    states = read_state_file(model_index_dir(settings, model), settings.collection)
    return {k: v for k, v in states.items() if k.startswith(prefix)}
