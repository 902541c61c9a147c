"""The index: schema, contract and the two Qdrant backends (Edge embedded, server)."""

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

__all__ = [
    "DENSE",
    "INDEXED_FIELDS",
    "SPARSE",
    "IndexPoint",
    "ScoredRecord",
    "SearchFilter",
    "SparseVec",
    "VectorIndex",
    "ancestor_dirs",
]
