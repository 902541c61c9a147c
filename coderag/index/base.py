"""The index contract: one interface, two Qdrant backends.

The indexer writes through it and the retriever reads through it; they never meet anywhere
else. Both backends (Qdrant Edge on disk, qdrant-client against a server) pass the same
contract test suite in ``tests/test_index_contract.py``.

Schema: one collection / shard, named dense vector ``dense`` (cosine) and named sparse vector
``sparse`` with the IDF modifier. Payload per point (built and read by
:class:`coderag.index.payload.ChunkPayload`): repo, branches (list), path, dirs (ancestor
directories, for glob prefiltering), language, symbol, kind, start_line, end_line, hash,
commit, text. Payload indexes on repo (tenant), branches, path, dirs, language, symbol.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

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

DENSE = "dense"
SPARSE = "sparse"
INDEXED_FIELDS = ("repo", "branches", "path", "dirs", "language", "symbol")


def ancestor_dirs(path: str) -> list[str]:
    """``"a/b/c.py"`` -> ``["a", "a/b"]``: stored so a glob's literal prefix filters in Qdrant."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass(frozen=True, slots=True)
class SparseVec:
    indices: list[int]
    values: list[float]


@dataclass(frozen=True, slots=True)
class IndexPoint:
    id: str
    dense: list[float]
    sparse: SparseVec
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ScoredRecord:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """Restricts any read. ``None`` / empty means "no restriction" on that field.

    ``repos`` is the tenant boundary: the API always sets it from the caller's token scope.
    ``path_globs`` are gitignore-free fnmatch globs (``src/**/*.py``); backends prefilter on
    the literal directory prefix in Qdrant and check the full glob on the results.
    """

    repos: Sequence[str] | None = None
    branch: str | None = None
    paths: Sequence[str] | None = None
    path_globs: Sequence[str] | None = None
    languages: Sequence[str] | None = None
    symbols: Sequence[str] | None = None
    exclude_ids: Sequence[str] = field(default_factory=tuple)


@runtime_checkable
class VectorIndex(Protocol):
    """What the rest of coderag may ask of an index backend.

    Conventions shared by both backends (pinned by ``tests/test_index_contract.py``):

    * point ids are uuid strings; they are normalised to the canonical lowercase form, and
      every id handed back is in that form. A non-uuid id raises ``InputError``.
    * every write is durable and visible to reads when it returns.
    * any library failure surfaces as ``coderag.errors.IndexError_`` (503), never raw.
    * reads may run concurrently from several threads of the process.
    """

    def ensure(self, dim: int) -> None:
        """Create the collection/shard and payload indexes if missing; check the dimension.

        Idempotent. Raises ``ConfigError`` when the index holds vectors of another size
        (the embedding model changed: re-index). Edge: also takes the process lock, and
        raises ``IndexLockedError`` when another process owns the index.
        """

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        """Insert or replace points (batched internally). Fills ``dirs`` from ``path`` when
        the payload lacks it, since glob filtering depends on it."""

    def set_branches(self, ids_to_branches: dict[str, list[str]]) -> None:
        """Overwrite the ``branches`` payload of existing points; ids not in the index are
        skipped. Ids with the same branch list are updated in one call."""

    def delete(self, ids: Sequence[str]) -> None:
        """Delete points by id; missing ids are ignored."""

    def delete_where(self, flt: SearchFilter) -> None:
        """Delete every point matching ``flt``. A filter that restricts nothing raises
        ``InputError`` rather than emptying the index."""

    def retrieve(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Payloads of the points that exist among ``ids`` (missing ids are absent)."""

    def scroll(
        self, flt: SearchFilter, fields: Sequence[str] | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every point matching ``flt``: (id, payload restricted to ``fields``).

        Lazy, page by page, in id order. ``fields=None``: the whole payload; ``fields=()``:
        ids only (empty payloads), the cheap form for garbage collection.
        """

    def count(self, flt: SearchFilter | None = None) -> int:
        """Exact number of points matching ``flt`` (``None``: all)."""

    def search_dense(
        self,
        vector: Sequence[float],
        flt: SearchFilter,
        limit: int,
        fields: Sequence[str] | None = None,
    ) -> list[ScoredRecord]:
        """Best ``limit`` points by cosine similarity, best first.

        ``fields=None``: complete payloads; otherwise only those payload fields (``()``: ids
        and scores only). Candidate lists ask for the few fields fusion reads: reading and
        converting a chunk's text is most of a payload's cost, and only the final results
        need it (:meth:`retrieve` fetches theirs)."""

    def search_sparse(
        self,
        vector: SparseVec,
        flt: SearchFilter,
        limit: int,
        fields: Sequence[str] | None = None,
    ) -> list[ScoredRecord]:
        """Sparse dot product with the IDF modifier applied by Qdrant (an empty vector
        returns ``[]``). Only points sharing a term with ``vector`` can come back.
        ``fields`` as in :meth:`search_dense`."""

    def search_hybrid(
        self,
        dense: Sequence[float],
        sparse: SparseVec,
        flt: SearchFilter,
        limit: int,
        prefetch: int = 100,
    ) -> list[ScoredRecord]:
        """Dense and sparse prefetch (``prefetch`` candidates each) fused inside Qdrant
        with RRF, k=60 on both backends; scores are RRF scores, not similarities."""

    def get_state(self, key: str) -> dict[str, Any] | None:
        """Durable index state (indexed commit per repo and branch, repo registry) kept
        next to the index; ``None`` when the key was never set or was deleted."""

    def set_state(self, key: str, value: dict[str, Any] | None) -> None:
        """Write (``None``: delete) one state record (a JSON object); durable when this
        returns, and never half-written."""

    def list_state(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Every state record whose key starts with ``prefix``."""

    def flush(self) -> None:
        """Persist pending writes (writes already persist before returning; kept for
        callers that want an explicit checkpoint)."""

    def close(self) -> None:
        """Release the index (Edge: flush, close the shard, drop the process lock).
        Idempotent; any later call raises ``IndexError_``."""
