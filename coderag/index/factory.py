"""Pick the index backend from the settings: the composition root's only index decision."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coderag.index.base import VectorIndex
    from coderag.settings import Settings

__all__ = ["open_index"]


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

    return EdgeIndex(settings.index_dir, collection=settings.collection)
