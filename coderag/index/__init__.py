"""The index: schema, contract and the two Qdrant backends (Edge embedded, server).

The backends (and :func:`open_index`) are imported on first access: ``qdrant_client``
alone takes ~1 s to import, and most modules that need the records and the contract
(chunkers, the CLI's ``--help``) never touch a backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coderag.index.base import (
    DENSE,
    INDEXED_FIELDS,
    SPARSE,
    IndexPoint,
    ScoredRecord,
    SearchFilter,
    SparseVec,
    VectorIndex,
    ancestor_dirs,
)
from coderag.index.filters import compile_globs, glob_match
from coderag.index.payload import (
    ChunkPayload,
    branch_state_key,
    branch_state_prefix,
    tag_label,
)

if TYPE_CHECKING:
    from coderag.index.edge import EdgeIndex
    from coderag.index.factory import open_index
    from coderag.index.server import ServerIndex

__all__ = [
    "DENSE",
    "INDEXED_FIELDS",
    "SPARSE",
    "ChunkPayload",
    "EdgeIndex",
    "IndexPoint",
    "ScoredRecord",
    "SearchFilter",
    "ServerIndex",
    "SparseVec",
    "VectorIndex",
    "ancestor_dirs",
    "branch_state_key",
    "branch_state_prefix",
    "compile_globs",
    "glob_match",
    "open_index",
    "tag_label",
]

_LAZY = {
    "EdgeIndex": "coderag.index.edge",
    "ServerIndex": "coderag.index.server",
    "open_index": "coderag.index.factory",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
