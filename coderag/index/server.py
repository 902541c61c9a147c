"""Qdrant server / cluster backend through ``qdrant-client`` (the distributed mode).

Every write uses ``wait=True``: the indexer records "commit X is indexed" in the state
right after writing, so the points must be applied (and searchable) when the call returns.

Index state lives in a second, vector-less collection ``{collection}_state``: one point per
key, its id the uuid5 of the key, the record in the payload. It travels with the index
(snapshots, replication) and needs no other store.

qdrant-client's local mode (``QdrantClient(":memory:")`` or ``path=...``) stands in for the
server in tests. What it does differently, and how this module copes:

* payload indexes: local mode ignores them and warns on creation, so they are not created
  there (filters still work, by scanning). Against a server they are created, ``repo`` as
  a tenant keyword index (``is_tenant=True``).
* threads: the local client is not thread-safe, so calls are serialised with a lock in
  local mode only. The remote client (httpx) is used from many threads without one.
* speed: local mode is pure Python and scans (``coderag bench vector-index --backend
  local -n 5000``: ~640 points/s upsert; filtered hybrid ~370 ms p50 at 5k points, growing
  linearly): a stand-in for tests, never a deployment.

Fused hybrid search uses parametrised RRF (``RrfQuery(rrf=Rrf(k=60))``, the same k as on
Edge, so both backends rank alike). That request shape is recent: it needs a Qdrant server
that accepts ``{"rrf": {"k": ...}}`` (1.16 or later, by the client's models; not checked
against a live server here).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from qdrant_client import QdrantClient
from qdrant_client import models as qm

from coderag.errors import ConfigError, IndexError_, InputError, translate
from coderag.index._shared import RRF_K, Mode, QdrantIndexBase
from coderag.index.base import DENSE, INDEXED_FIELDS, SPARSE, IndexPoint, ScoredRecord, SparseVec
from coderag.index.filters import Depth, FilterPlan, Match

__all__ = ["ServerIndex"]

_STATE_NS = uuid.uuid5(uuid.NAMESPACE_URL, "coderag:index-state")


def state_point_id(key: str) -> str:
    """Deterministic point id of a state key in the ``{collection}_state`` collection."""
    return str(uuid.uuid5(_STATE_NS, key))


class ServerIndex(QdrantIndexBase):
    """:class:`~coderag.index.base.VectorIndex` on a Qdrant server, cluster or local mode.

    Pass ``url`` (and ``api_key``) for a server, or a ready ``client`` (tests: local mode).
    The constructor does no I/O; the first call connects. A client built here is closed
    by :meth:`close`; a client passed in belongs to the caller.
    """

    _name = "qdrant"

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        collection: str = "coderag",
        client: QdrantClient | None = None,
    ) -> None:
        if client is None and not url:
            raise ConfigError("ServerIndex needs a Qdrant url (CODERAG_QDRANT_URL) or a client")
        self.collection = collection
        self.state_collection = f"{collection}_state"
        self._owns_client = client is None
        if client is None:
            with translate(ConfigError, f"bad Qdrant url {url!r}"):
                # check_compatibility would call the server from the constructor (and warn
                # when it is down); constructors stay cheap, the first real call reports.
                client = QdrantClient(url=url, api_key=api_key, check_compatibility=False)
        self.client = client
        opts = client.init_options
        self.local_mode = opts.get("location") == ":memory:" or opts.get("path") is not None
        self._local_lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self.local_mode else contextlib.nullcontext()
        )
        self._state_ready = False
        self._closed = False

    def sibling(self, collection: str) -> ServerIndex:
        """Another collection through the same client (and, in local mode, the same lock:
        the local client is not thread-safe). Closing the sibling leaves the client open."""
        other = ServerIndex(collection=collection, client=self.client)
        other._local_lock = self._local_lock
        return other

    # --- aliases (the atomic pointer of a model switch) ------------------------------------------

    def alias_target(self, alias: str) -> str | None:
        """The collection ``alias`` points at; ``None`` when there is no such alias."""
        with self._op("get aliases"):
            for a in self.client.get_aliases().aliases:
                if a.alias_name == alias:
                    return str(a.collection_name)
        return None

    def point_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` in one request. Qdrant applies the delete and the
        create of one ``update_collection_aliases`` call together, with every collection
        locked (qdrant/qdrant ``lib/storage/src/content_manager/toc/collection_meta_ops.rs``,
        ``update_aliases``: "Prevent search on partially switched collections"), so a reader
        of the alias sees the old collection or the new one, never none. qdrant-client's
        local mode applies the list to a copy and saves it in one write
        (``qdrant_client/local/qdrant_local.py``, ``update_collection_aliases``)."""
        ops = [
            qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)),
            qm.CreateAliasOperation(
                create_alias=qm.CreateAlias(collection_name=collection, alias_name=alias)
            ),
        ]
        with self._op("update aliases"):
            self.client.update_collection_aliases(change_aliases_operations=ops)

    def exists(self) -> bool:
        """Whether the point collection exists (a shadow that was never built does not)."""
        with self._op("collection exists"):
            return bool(self.client.collection_exists(self.collection))

    # --- lifecycle ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _op(self, what: str, *, write: bool = False) -> Iterator[None]:
        if self._closed:
            raise IndexError_(f"qdrant: {what}: the index is closed")
        with self._local_lock, translate(IndexError_, f"qdrant: {what}"):
            yield

    def ensure(self, dim: int) -> None:
        """Create the collections and payload indexes if missing; check the dimension.

        Safe to run from several workers at once: a lost creation race is detected and the
        existing collection is checked instead.
        """
        if dim <= 0:
            raise InputError(f"vector dimension must be positive, got {dim}")
        with self._op("ensure"):
            if not self.client.collection_exists(self.collection):
                try:
                    self.client.create_collection(
                        self.collection,
                        vectors_config={
                            DENSE: qm.VectorParams(size=dim, distance=qm.Distance.COSINE)
                        },
                        sparse_vectors_config={
                            SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.IDF)
                        },
                    )
                except Exception:
                    if not self.client.collection_exists(self.collection):
                        raise
            self._check_schema(dim)
            if not self.local_mode:
                self._create_payload_indexes()
            self._ensure_state_collection()

    def _check_schema(self, dim: int) -> None:
        params = self.client.get_collection(self.collection).config.params
        vectors = params.vectors
        dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
        if dense is None:
            raise ConfigError(
                f"collection {self.collection!r} exists without a named {DENSE!r} vector; "
                "it was not created by coderag: pick another CODERAG_COLLECTION"
            )
        if dense.size != dim:
            raise ConfigError(
                f"collection {self.collection!r} holds {dense.size}-dim vectors but the "
                f"embedding model gives {dim}-dim ones; re-index into a new collection or "
                "configure the model the index was built with"
            )
        sparse = (params.sparse_vectors or {}).get(SPARSE)
        if sparse is None or sparse.modifier != qm.Modifier.IDF:
            raise ConfigError(
                f"collection {self.collection!r} lacks the {SPARSE!r} sparse vector with the "
                "IDF modifier; it was not created by coderag"
            )

    def _create_payload_indexes(self) -> None:
        have = set(self.client.get_collection(self.collection).payload_schema or {})
        for name in INDEXED_FIELDS:
            if name in have:
                continue
            schema: Any = (
                qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)
                if name == "repo"
                else qm.PayloadSchemaType.KEYWORD
            )
            self.client.create_payload_index(
                self.collection, field_name=name, field_schema=schema, wait=True
            )

    def _ensure_state_collection(self) -> None:
        if self._state_ready:
            return
        if not self.client.collection_exists(self.state_collection):
            try:
                self.client.create_collection(self.state_collection, vectors_config={})
            except Exception:
                if not self.client.collection_exists(self.state_collection):
                    raise
        self._state_ready = True

    def flush(self) -> None:
        """Nothing to do: every write already waited for the server to apply it."""

    def close(self) -> None:
        """Close the client if this index created it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            with self._local_lock, translate(IndexError_, "qdrant: close"):
                self.client.close()

    # --- primitives -------------------------------------------------------------------------

    def _p_upsert(self, points: Sequence[IndexPoint]) -> None:
        batch = [
            qm.PointStruct(
                id=p.id,
                vector={
                    DENSE: list(p.dense),
                    SPARSE: qm.SparseVector(
                        indices=list(p.sparse.indices), values=list(p.sparse.values)
                    ),
                },
                payload=p.payload,
            )
            for p in points
        ]
        self.client.upsert(self.collection, points=batch, wait=True)

    def _p_set_payload(self, ids: list[str], payload: dict[str, Any]) -> None:
        # By filter: set_payload by ids errors on a missing id; the filter skips it.
        sel = qm.FilterSelector(filter=qm.Filter(must=[qm.HasIdCondition(has_id=list(ids))]))
        self.client.set_payload(self.collection, payload=payload, points=sel, wait=True)

    def _p_delete_ids(self, ids: list[str]) -> None:
        sel = qm.PointIdsList(points=list(ids))
        self.client.delete(self.collection, points_selector=sel, wait=True)

    def _p_delete_plan(self, plan: FilterPlan) -> None:
        flt = _qm_filter(plan)
        assert flt is not None  # delete_where refuses empty plans
        sel = qm.FilterSelector(filter=flt)
        self.client.delete(self.collection, points_selector=sel, wait=True)

    def _p_retrieve(
        self, ids: list[str], fields: list[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        with_payload: bool | list[str] = True if fields is None else (list(fields) or False)
        recs = self.client.retrieve(
            self.collection, ids, with_payload=with_payload, with_vectors=False
        )
        return {str(r.id): dict(r.payload or {}) for r in recs}

    def _p_count(self, plan: FilterPlan) -> int:
        return self.client.count(self.collection, count_filter=_qm_filter(plan), exact=True).count

    def _p_scroll_page(
        self, plan: FilterPlan, fields: list[str] | None, offset: Any, limit: int
    ) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
        with_payload: bool | list[str] = True if fields is None else (list(fields) or False)
        recs, nxt = self.client.scroll(
            self.collection,
            scroll_filter=_qm_filter(plan),
            limit=limit,
            offset=offset,
            with_payload=with_payload,
            with_vectors=False,
        )
        return [(str(r.id), dict(r.payload or {})) for r in recs], nxt

    def _p_query(
        self,
        mode: Mode,
        dense: list[float] | None,
        sparse: SparseVec | None,
        plan: FilterPlan,
        limit: int,
        prefetch: int,
        fields: list[str] | None = None,
    ) -> list[ScoredRecord]:
        flt = _qm_filter(plan)
        with_payload: bool | list[str] = True if fields is None else (list(fields) or False)
        if mode == "dense":
            res = self.client.query_points(
                self.collection,
                query=dense,
                using=DENSE,
                query_filter=flt,
                limit=limit,
                with_payload=with_payload,
                with_vectors=False,
            )
        elif mode == "sparse":
            assert sparse is not None
            res = self.client.query_points(
                self.collection,
                query=_sv(sparse),
                using=SPARSE,
                query_filter=flt,
                limit=limit,
                with_payload=with_payload,
                with_vectors=False,
            )
        else:
            assert sparse is not None
            pre = [qm.Prefetch(query=dense, using=DENSE, limit=prefetch, filter=flt)]
            if sparse.indices:
                pre.append(qm.Prefetch(query=_sv(sparse), using=SPARSE, limit=prefetch, filter=flt))
            res = self.client.query_points(
                self.collection,
                prefetch=pre,
                query=qm.RrfQuery(rrf=qm.Rrf(k=RRF_K)),
                query_filter=flt,
                limit=limit,
                with_payload=with_payload,
                with_vectors=False,
            )
        return [ScoredRecord(str(p.id), float(p.score), dict(p.payload or {})) for p in res.points]

    # --- state ------------------------------------------------------------------------------

    def get_state(self, key: str) -> dict[str, Any] | None:
        with self._op("get_state"):
            self._ensure_state_collection()
            recs = self.client.retrieve(
                self.state_collection, [state_point_id(key)], with_payload=True
            )
        if not recs or not recs[0].payload:
            return None
        value = recs[0].payload.get("value")
        return value if isinstance(value, dict) else None

    def set_state(self, key: str, value: dict[str, Any] | None) -> None:
        """Write (``None``: delete) one record; applied on the server when this returns."""
        if value is not None and not isinstance(value, dict):
            raise InputError("state values must be JSON objects")
        with self._op("set_state"):
            self._ensure_state_collection()
            pid = state_point_id(key)
            if value is None:
                self.client.delete(
                    self.state_collection,
                    points_selector=qm.PointIdsList(points=[pid]),
                    wait=True,
                )
            else:
                point = qm.PointStruct(id=pid, vector={}, payload={"key": key, "value": value})
                self.client.upsert(self.state_collection, points=[point], wait=True)

    def list_state(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        offset: Any = None
        while True:
            with self._op("list_state"):
                self._ensure_state_collection()
                recs, offset = self.client.scroll(
                    self.state_collection, limit=256, offset=offset, with_payload=True
                )
            for r in recs:
                payload = r.payload or {}
                key, value = payload.get("key"), payload.get("value")
                if isinstance(key, str) and key.startswith(prefix) and isinstance(value, dict):
                    out[key] = value
            if offset is None or not recs:
                return out


# --- helpers ------------------------------------------------------------------------------


def _sv(v: SparseVec) -> qm.SparseVector:
    return qm.SparseVector(indices=list(v.indices), values=[float(x) for x in v.values])


def _cond(c: Match | Depth) -> qm.FieldCondition:
    if isinstance(c, Match):
        match: Any = (
            qm.MatchValue(value=c.values[0])
            if len(c.values) == 1
            else qm.MatchAny(any=list(c.values))
        )
        return qm.FieldCondition(key=c.key, match=match)
    return qm.FieldCondition(key=c.key, values_count=qm.ValuesCount(gte=c.n, lte=c.n))


def _qm_filter(plan: FilterPlan) -> qm.Filter | None:
    must: list[Any] = [_cond(c) for c in plan.must]
    if plan.any_of is not None:
        must.append(qm.Filter(should=[qm.Filter(must=[_cond(c) for c in g]) for g in plan.any_of]))
    if plan.has_ids is not None:
        must.append(qm.HasIdCondition(has_id=list(plan.has_ids)))
    must_not: list[Any] = (
        [qm.HasIdCondition(has_id=list(plan.exclude_ids))] if plan.exclude_ids else []
    )
    if not must and not must_not:
        return None
    return qm.Filter(must=must or None, must_not=must_not or None)
