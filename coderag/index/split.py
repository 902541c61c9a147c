"""An added model's index: its own points and branch states, the site's records elsewhere.

Each embedding model has its own collection (server) or shard (Edge), because vectors of
two models must never meet in one search. Branch states (``branch/<repo>/<branch>``: the
commit indexed and the fingerprint) describe those points, so they live with them. Every
other state record (the repository registry, run records, reconciliation state, aliases of
moved projects) describes the site, not a model: it stays in the *home* index, the one that
existed before any model was added, so switching models neither copies nor loses it.

:class:`SplitStateIndex` routes each call accordingly and is otherwise the model's index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from coderag.index.base import IndexPoint, ScoredRecord, SearchFilter, SparseVec, VectorIndex
from coderag.index.payload import branch_state_prefix

__all__ = ["SplitStateIndex"]

_BRANCH = branch_state_prefix()


class SplitStateIndex:
    """:class:`~coderag.index.base.VectorIndex` over ``points`` with non-branch state in
    ``home``. Closing it closes ``points`` only: ``home`` belongs to the runtime."""

    def __init__(self, points: VectorIndex, home: VectorIndex) -> None:
        self.points = points
        self.home = home

    # --- points: the model's own index ----------------------------------------------------------
    def ensure(self, dim: int) -> None:
        self.points.ensure(dim)

    def upsert(self, points: Sequence[IndexPoint]) -> None:
        self.points.upsert(points)

    def set_branches(self, ids_to_branches: dict[str, list[str]]) -> None:
        self.points.set_branches(ids_to_branches)

    def delete(self, ids: Sequence[str]) -> None:
        self.points.delete(ids)

    def delete_where(self, flt: SearchFilter) -> None:
        self.points.delete_where(flt)

    def retrieve(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self.points.retrieve(ids)

    def scroll(
        self, flt: SearchFilter, fields: Sequence[str] | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        return self.points.scroll(flt, fields)

    def count(self, flt: SearchFilter | None = None) -> int:
        return self.points.count(flt)

    def search_dense(
        self,
        vector: Sequence[float],
        flt: SearchFilter,
        limit: int,
        fields: Sequence[str] | None = None,
    ) -> list[ScoredRecord]:
        return self.points.search_dense(vector, flt, limit, fields)

    def search_sparse(
        self,
        vector: SparseVec,
        flt: SearchFilter,
        limit: int,
        fields: Sequence[str] | None = None,
    ) -> list[ScoredRecord]:
        return self.points.search_sparse(vector, flt, limit, fields)

    def search_hybrid(
        self,
        dense: Sequence[float],
        sparse: SparseVec,
        flt: SearchFilter,
        limit: int,
        prefetch: int = 100,
    ) -> list[ScoredRecord]:
        return self.points.search_hybrid(dense, sparse, flt, limit, prefetch)

    def flush(self) -> None:
        self.points.flush()

    def close(self) -> None:
        self.points.close()

    def __getattr__(self, name: str) -> Any:  # backend extras (EdgeIndex.optimize, ...)
        return getattr(self.points, name)

    # --- state: branch records with the points, the rest at home --------------------------------
    def _for(self, key: str) -> VectorIndex:
        return self.points if key.startswith(_BRANCH) else self.home

    def get_state(self, key: str) -> dict[str, Any] | None:
        return self._for(key).get_state(key)

    def set_state(self, key: str, value: dict[str, Any] | None) -> None:
        self._for(key).set_state(key, value)

    def list_state(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        if prefix.startswith(_BRANCH):
            return self.points.list_state(prefix)
        site = {k: v for k, v in self.home.list_state(prefix).items() if not k.startswith(_BRANCH)}
        if _BRANCH.startswith(prefix):  # "" (everything) or a prefix of "branch/"
            site.update(self.points.list_state(_BRANCH))
        return site
