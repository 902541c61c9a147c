"""Qdrant Edge backend: the embedded default, an on-disk shard owned by one process.

Layout under ``path`` (the settings' ``index_dir``)::

    LOCK                     exclusive flock of the owning process (holds its pid)
    <collection>/            the Edge shard (segments, WAL, edge_config.json)
    <collection>.state.json  index state (indexed commits, repo registry), atomic writes

Why the extra lock: Edge keeps its WAL locked, but the error it gives a second opener
("Can't init WAL: WouldBlock") says nothing useful, and the state file next to the shard is
not covered by it. One ``flock`` on ``LOCK`` protects both and names the owner's pid.

Thread safety (measured on qdrant-edge-py 0.9.0; ``tests/test_index_edge.py`` keeps
checking it): the binding is safe to call from several threads at once; 3 reader threads
ran ~16k queries while a fourth upserted 20k points, without an error. ``query`` releases
the GIL; ``update`` mostly holds it (so pipelining point conversion against ``update`` on
a helper thread gained nothing and was dropped). Reads are therefore not serialised;
writes are (one ``threading.Lock``) so that a call's batches and its flush stay together,
and ``close`` waits for in-flight calls instead of pulling the shard from under them.

Measured with ``coderag bench vector-index`` (prints JSON) on a 2-core VM shared with
other jobs (figures moved by up to 2x between runs): 20k points, 384 dims, 40 sparse terms,
12 payload fields (~600 bytes):

* upsert end to end through :meth:`EdgeIndex.upsert`: 5-6.5k points/s. The shard itself
  takes 13-37k points/s (``EdgeShard.update`` with the six keyword indexes); the cap is the
  binding's Python -> Rust payload conversion, 9-18k points/s (~3-4 us per string or
  number value, ~0.3 us per bool: it is the binding, not this code). ``flush`` once per
  call: 5-20 ms for a 10-point call, ~0.2 s after 20k points; flushing after every batch
  instead halved throughput.
* filtered query (2 repos + branch), limit 10, p50 / p95: dense 2.6 / 3.1 ms, sparse 0.4 /
  0.6 ms, hybrid RRF with 100+100 prefetch 3.9 / 4.7 ms, hybrid with a path glob (client-side
  check, over-fetch) 8 / 11 ms. After :meth:`EdgeIndex.optimize`: dense 1.8, hybrid 2.3,
  glob 6.7 ms p50. Edge builds no HNSW by itself: until ``optimize`` runs, search is a scan
  of the filtered points (fine at 20k, linear beyond).
* ``optimize`` at 20k points takes 10-16 s and holds the GIL throughout (every Python
  thread of the process stalls): run it after a bulk index, not while serving.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from coderag.atomic import atomic_write
from coderag.errors import ConfigError, IndexError_, IndexLockedError, InputError, translate
from coderag.index._shared import RRF_K, Mode, QdrantIndexBase
from coderag.index.base import DENSE, INDEXED_FIELDS, SPARSE, IndexPoint, ScoredRecord, SparseVec
from coderag.index.edge_build import JOURNAL_MAX_POINTS, BuildAbandoned, HnswBuilder
from coderag.index.filters import Depth, FilterPlan, Match

__all__ = ["EdgeIndex", "edge_points", "read_state_file"]


class _Gate:
    """Counts calls in flight so ``close`` can wait for them and refuse new ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False
        self._paused = False

    @contextlib.contextmanager
    def enter(self, what: str) -> Iterator[None]:
        with self._cond:
            if self._paused:
                self._cond.wait_for(lambda: not self._paused)
            if self._closed:
                raise IndexError_(f"edge: {what}: the index is closed")
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Run the block with no call in flight (new ones wait until it ends): the swap of
        the live shard. The caller must not be inside :meth:`enter` itself."""
        with self._cond:
            self._paused = True
            try:
                self._cond.wait_for(lambda: self._active == 0)
                yield
            finally:
                self._paused = False
                self._cond.notify_all()

    def close(self) -> bool:
        """Refuse new calls, wait for running ones. False if already closed."""
        with self._cond:
            if self._closed:
                return False
            self._closed = True
            self._cond.wait_for(lambda: self._active == 0)
            return True


class EdgeIndex(QdrantIndexBase):
    """:class:`~coderag.index.base.VectorIndex` on a Qdrant Edge shard in ``path``.

    The constructor only records paths (cheap, import-safe). The process lock is taken on
    first use; the shard is opened by :meth:`ensure` (or, for an existing shard, by the
    first read or write).
    """

    _name = "edge"
    candidate_cache_size = 1_000_000
    """One process owns the shard and writes only through this object: the candidate
    field cache stays exact. ~0.3 kB of Python heap per point (repo and path strings are
    shared), so ~300 MB when full: a 1M-chunk index is served from memory."""

    def __init__(
        self, path: Path, collection: str = "coderag", *, background_hnsw: bool = False
    ) -> None:
        self.path = Path(path)
        self.collection = collection
        self.state_file = self.path / f"{collection}.state.json"
        self.active_file = self.path / f"{collection}.active"
        self.lock_file = self.path / "LOCK"
        self.last_write = 0.0
        """``time.monotonic()`` of the last write (the HNSW builder waits for a quiet spell)."""
        self._live: str | None = None  # the live shard directory's name, once opened
        self._journal: list[Any] | None = None  # writes made while an HNSW copy is built
        self._journal_points = 0
        self._journal_overflow = False
        self._builder: HnswBuilder | None = HnswBuilder(self) if background_hnsw else None
        self._shard: qe.EdgeShard | None = None
        self._lock_fd: int | None = None
        self._state: dict[str, dict[str, Any]] | None = None
        self._open_lock = threading.Lock()  # lock file, shard open, state load
        self._write_lock = threading.Lock()  # one writer at a time: batches + flush together
        self._state_lock = threading.Lock()
        self._gate = _Gate()

    # --- process ownership ---------------------------------------------------------------------

    def _own(self) -> None:
        """Take the exclusive, non-blocking flock on ``LOCK`` (once per instance)."""
        if self._lock_fd is not None:
            return
        with self._open_lock:
            if self._lock_fd is not None:
                return
            with translate(IndexError_, f"edge: cannot create index dir {self.path}"):
                self.path.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                who = (
                    "this process (another EdgeIndex on the same path)"
                    if holder == os.getpid()
                    else f"another process (pid {holder if holder else 'unknown'})"
                )
                raise IndexLockedError(
                    f"index at {self.path} is open in {who}; stop it or use the server "
                    "backend (CODERAG_QDRANT_URL)"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- shard lifecycle --------------------------------------------------------------------

    @property
    def shard_dir(self) -> Path:
        """The live shard's directory: ``<collection>``, or the ``<collection>.g<N>`` that the
        last HNSW build swapped in (named by ``<collection>.active``)."""
        return self.path / (self._live or self._active_name())

    def _active_name(self) -> str:
        try:
            name = json.loads(self.active_file.read_text(encoding="utf-8")).get("dir")
        except (OSError, ValueError, AttributeError):
            return self.collection
        return name if isinstance(name, str) and self._is_shard_name(name) else self.collection

    def _is_shard_name(self, name: str) -> bool:
        gen = name.removeprefix(f"{self.collection}.g")
        return name == self.collection or (gen != name and gen.isdigit())

    def _remove_stale(self, live: str) -> None:
        """Directories of ours that are not the live shard: a build that did not finish, or
        the shard a finished build replaced (a crash between the switch and the removal)."""
        with contextlib.suppress(OSError):
            for entry in self.path.iterdir():
                if entry.name != live and self._is_shard_name(entry.name) and entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)

    def _config(self, dim: int) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        )

    def _shard_exists(self) -> bool:
        return (self.shard_dir / "edge_config.json").exists() or (
            self.shard_dir / "segments"
        ).is_dir()

    def _stored_dim(self) -> int | None:
        """Dense size recorded in the shard's ``edge_config.json`` (None if unreadable)."""
        try:
            cfg = json.loads((self.shard_dir / "edge_config.json").read_text())
            return int(cfg["vectors"][DENSE]["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def ensure(self, dim: int) -> None:
        """Create the shard (or load it) and its payload indexes; check the dimension.

        Idempotent. Raises :class:`ConfigError` when an existing shard was built for
        another dimension (a different embedding model): the index must be rebuilt.
        """
        if dim <= 0:
            raise InputError(f"vector dimension must be positive, got {dim}")
        # the write lock before the gate, as in :meth:`_op` (see :meth:`_finish_build`)
        with self._write_lock, self._gate.enter("ensure"):
            self._ensure(dim)

    def _ensure(self, dim: int) -> None:
        self._own()
        with self._open_lock:
            if self._shard is None:
                self._shard = self._open(dim)
            else:
                stored = self._stored_dim()
                if stored is not None and stored != dim:
                    raise self._dim_error(stored, dim)
            shard = self._shard
        with translate(IndexError_, "edge: create payload indexes"):
            missing = [n for n in INDEXED_FIELDS if n not in shard.info().payload_schema]
            if not missing:
                return
            for name in missing:
                schema: Any = (
                    qe.KeywordIndexParams(is_tenant=True)
                    if name == "repo"
                    else qe.PayloadSchemaType.Keyword
                )
                self._apply(qe.UpdateOperation.create_field_index(name, schema))
            shard.flush()

    def _dim_error(self, stored: int | None, dim: int) -> ConfigError:
        held = f"{stored}-dim vectors" if stored else "vectors of another size"
        return ConfigError(
            f"index at {self.shard_dir} holds {held} but the embedding model "
            f"gives {dim}-dim ones; re-index (remove {self.shard_dir} and "
            f"{self.state_file}) or configure the model the index was built with"
        )

    def _open(self, dim: int | None) -> qe.EdgeShard:
        """Load the shard when data exists, else create it (``dim`` required to create)."""
        self._live = self._active_name()
        self._remove_stale(self._live)
        if self._builder is not None:
            self._builder.start()
        if self._shard_exists():
            stored = self._stored_dim()
            if dim is not None and stored is not None and stored != dim:
                raise self._dim_error(stored, dim)
            try:
                return qe.EdgeShard.load(
                    str(self.shard_dir), self._config(dim) if dim is not None else None
                )
            except Exception as exc:
                if "ncompatible" in str(exc) and dim is not None:
                    raise self._dim_error(stored, dim) from exc
                if "WouldBlock" in str(exc):
                    raise IndexLockedError(
                        f"index at {self.path} is open elsewhere (its WAL is locked); "
                        "stop the other user or use the server backend"
                    ) from exc
                raise IndexError_(f"edge: cannot load shard {self.shard_dir}: {exc}") from exc
        if dim is None:
            raise IndexError_(f"edge: no index at {self.shard_dir} yet; call ensure(dim) first")
        with translate(IndexError_, f"edge: cannot create shard {self.shard_dir}"):
            return qe.EdgeShard.create(str(self.shard_dir), self._config(dim))

    def _get_shard(self) -> qe.EdgeShard:
        shard = self._shard
        if shard is not None:
            return shard
        self._own()
        with self._open_lock:
            if self._shard is None:
                self._shard = self._open(None)
            return self._shard

    @property
    def shard(self) -> qe.EdgeShard:
        """The open shard (opened, and this process made its owner, on first use).

        Everything else goes through the index methods; this is for measuring the binding
        itself (``coderag bench vector-index`` times ``shard.update`` without the index's
        locks and point conversion)."""
        return self._get_shard()

    @contextlib.contextmanager
    def _op(self, what: str, *, write: bool = False) -> Iterator[None]:
        # A writer takes the write lock before entering the gate: the HNSW swap holds the
        # write lock and then waits for the gate to drain, which a writer queued inside
        # the gate would never let happen.
        lock = self._write_lock if write else contextlib.nullcontext()
        with lock, self._gate.enter(what):
            self._get_shard()
            with translate(IndexError_, f"edge: {what}"):
                yield

    def flush(self) -> None:
        """Persist everything written so far (writes already flush at the end of each call)."""
        with self._op("flush", write=True):
            self._get_shard().flush()

    def optimize(self) -> bool:
        """Build HNSW / merge segments; blocks, and holds the GIL (see module docstring).

        Worth running after a bulk (cold) index: filtered search stops scanning (at 20k
        points, filtered hybrid p50 3.9 -> 2.3 ms; the gap grows with the index). Returns
        True if anything changed.
        """
        with self._op("optimize", write=True):
            return bool(self._get_shard().optimize())

    def close(self) -> None:
        """Flush, close the shard and release the process lock. Idempotent. A background
        HNSW build in progress is abandoned (its copy removed on the next open)."""
        if self._builder is not None:
            self._builder.stop()
        if not self._gate.close():
            return
        try:
            shard, self._shard = self._shard, None
            if shard is not None:
                with translate(IndexError_, "edge: close"):
                    try:
                        shard.flush()
                    finally:
                        shard.close()
        finally:
            self._release()

    # --- HNSW off the request path (coderag.index.edge_build) -------------------------------

    def _apply(self, op: Any, points: int = 0) -> None:
        """Apply one write to the live shard (caller holds the write lock) and, while an
        HNSW copy is being built, journal it for the copy."""
        self._get_shard().update(op)
        self.last_write = time.monotonic()
        if self._journal is not None:
            self._journal.append(op)
            self._journal_points += points
            if self._journal_points > JOURNAL_MAX_POINTS:
                self._journal, self._journal_overflow = None, True

    def unindexed_points(self) -> int:
        """Points whose dense vector has no HNSW graph yet (searched by a scan).

        From the shard's counters: every point's sparse vector counts as indexed, a dense
        one only once a graph holds it; deleted points can skew it by a little."""
        with self._op("info"):
            info = self._get_shard().info()
        return max(0, 2 * int(info.points_count) - int(info.indexed_vectors_count))

    def build_hnsw(self, *, threads: int | None = None) -> dict[str, Any]:
        """Build the HNSW graph now, off the request path (copy, child process, swap; see
        :mod:`coderag.index.edge_build`): reads and writes go on meanwhile. Blocks the
        calling thread only. Returns the build's report."""
        builder = self._builder or HnswBuilder(self)
        return builder.build_now(threads=threads)

    @property
    def hnsw_builder(self) -> HnswBuilder | None:
        """The background builder (``background_hnsw=True``), for its last report."""
        return self._builder

    def _begin_build(self) -> Path:
        """Copy the live shard for a build and start journalling writes (step 1)."""
        with self._write_lock, self._gate.enter("hnsw copy"):
            shard = self._get_shard()
            live = self._live or self._active_name()
            gen = live.removeprefix(f"{self.collection}.g")
            target = self.path / f"{self.collection}.g{int(gen) + 1 if gen.isdigit() else 1}"
            with translate(IndexError_, f"edge: copy the shard to {target}"):
                shutil.rmtree(target, ignore_errors=True)
                shard.flush()
                shutil.copytree(self.path / live, target)
            self._journal, self._journal_points, self._journal_overflow = [], 0, False
            return target

    def _finish_build(self, target: Path) -> dict[str, Any]:
        """Load the built copy, replay the journal, make it the live shard (step 3)."""
        t0 = time.perf_counter()
        with translate(IndexError_, f"edge: load the built shard {target}"):
            new = qe.EdgeShard.load(str(target))
        load_s = time.perf_counter() - t0
        try:
            with self._write_lock:
                if self._journal_overflow or self._journal is None:
                    raise BuildAbandoned("too many writes during the build")
                t1 = time.perf_counter()
                replayed = self._journal_points
                with translate(IndexError_, "edge: replay writes into the built shard"):
                    for op in self._journal:
                        new.update(op)
                    new.flush()
                atomic_write(self.active_file, json.dumps({"dir": target.name}))
                with self._gate.paused():
                    old, self._shard = self._shard, new
                    old_name, self._live = self._live, target.name
                    self._journal = None
                swap_s = time.perf_counter() - t1
        except BaseException:
            with contextlib.suppress(Exception):
                new.close()
            raise
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()
        if old_name and old_name != target.name:
            shutil.rmtree(self.path / old_name, ignore_errors=True)
        return {"load_s": round(load_s, 3), "swap_s": round(swap_s, 3), "journal_points": replayed}

    def _abort_build(self, target: Path) -> None:
        """Forget a build: stop journalling, remove its copy (never the live shard)."""
        with self._write_lock:
            self._journal, self._journal_points, self._journal_overflow = None, 0, False
            if target.name != (self._live or self._active_name()):
                shutil.rmtree(target, ignore_errors=True)

    # --- primitives -------------------------------------------------------------------------

    def _p_upsert(self, points: Sequence[IndexPoint]) -> None:
        self._apply(qe.UpdateOperation.upsert_points(edge_points(points)), len(points))

    def _p_commit(self) -> None:
        self._get_shard().flush()

    def _p_set_payload(self, ids: list[str], payload: dict[str, Any]) -> None:
        # By filter, not by ids: set_payload by ids fails on the first missing id after
        # having applied the others; the filter form skips missing ids atomically.
        flt = qe.Filter(must=[qe.HasIdCondition(set(ids))])
        self._apply(qe.UpdateOperation.set_payload_by_filter(flt, payload), len(ids))

    def _p_delete_ids(self, ids: list[str]) -> None:
        self._apply(qe.UpdateOperation.delete_points(list(ids)))

    def _p_delete_plan(self, plan: FilterPlan) -> None:
        flt = _edge_filter(plan)
        assert flt is not None  # delete_where refuses empty plans
        self._apply(qe.UpdateOperation.delete_points_by_filter(flt))

    def _p_retrieve(
        self, ids: list[str], fields: list[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        recs = self._get_shard().retrieve(list(ids), _selector(fields), False)
        return {str(r.id): dict(r.payload or {}) for r in recs}

    def _p_count(self, plan: FilterPlan) -> int:
        return int(self._get_shard().count(qe.CountRequest(exact=True, filter=_edge_filter(plan))))

    def _p_scroll_page(
        self, plan: FilterPlan, fields: list[str] | None, offset: Any, limit: int
    ) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
        with_payload: Any = True if fields is None else qe.PayloadSelector.Include(fields)
        if fields is not None and not fields:
            with_payload = False
        recs, nxt = self._get_shard().scroll(
            qe.ScrollRequest(
                offset=offset,
                limit=limit,
                filter=_edge_filter(plan),
                with_payload=with_payload,
                with_vector=False,
            )
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
        flt = _edge_filter(plan)
        with_payload = _selector(fields)
        if mode == "dense":
            assert dense is not None
            req = qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(dense, using=DENSE),
                filter=flt,
                with_payload=with_payload,
                with_vector=False,
            )
        elif mode == "sparse":
            assert sparse is not None
            req = qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(_sv(sparse), using=SPARSE),
                filter=flt,
                with_payload=with_payload,
                with_vector=False,
            )
        else:
            assert dense is not None and sparse is not None
            pre = [
                qe.Prefetch(limit=prefetch, query=qe.Query.Nearest(dense, using=DENSE), filter=flt)
            ]
            if sparse.indices:
                pre.append(
                    qe.Prefetch(
                        limit=prefetch,
                        query=qe.Query.Nearest(_sv(sparse), using=SPARSE),
                        filter=flt,
                    )
                )
            req = qe.QueryRequest(
                limit=limit,
                prefetches=pre,
                # the stub types `query` as Fusion; the binding takes the nested Fusion.Rrf
                query=qe.Fusion.Rrf(k=RRF_K),  # type: ignore[arg-type]
                filter=flt,
                with_payload=with_payload,
                with_vector=False,
            )
        hits = self._get_shard().query(req)
        return [ScoredRecord(str(h.id), float(h.score), dict(h.payload or {})) for h in hits]

    # --- state ------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, dict[str, Any]]:
        if self._state is None:
            self._own()
            try:
                raw = self.state_file.read_text(encoding="utf-8")
            except FileNotFoundError:
                self._state = {}
            except OSError as exc:
                raise IndexError_(f"edge: cannot read {self.state_file}: {exc}") from exc
            else:
                try:
                    data = json.loads(raw)
                except ValueError as exc:
                    raise IndexError_(f"edge: corrupt state file {self.state_file}: {exc}") from exc
                if not isinstance(data, dict):
                    raise IndexError_(f"edge: corrupt state file {self.state_file}: not an object")
                self._state = data
        return self._state

    def get_state(self, key: str) -> dict[str, Any] | None:
        with self._gate.enter("get_state"), self._state_lock:
            value = self._load_state().get(key)
            return json.loads(json.dumps(value)) if value is not None else None

    def set_state(self, key: str, value: dict[str, Any] | None) -> None:
        """Write one record; the whole file is replaced atomically, durable on return."""
        with self._gate.enter("set_state"), self._state_lock:
            current = self._load_state()
            new = dict(current)
            if value is None:
                new.pop(key, None)
            else:
                if not isinstance(value, dict):
                    raise InputError("state values must be JSON objects")
                new[key] = value
            try:
                text = json.dumps(new, sort_keys=True, indent=1)
            except (TypeError, ValueError) as exc:
                raise InputError(
                    f"state value for {key!r} is not JSON-serialisable: {exc}"
                ) from exc
            with translate(IndexError_, f"edge: write {self.state_file}"):
                atomic_write(self.state_file, text)
            self._state = json.loads(text)

    def list_state(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        with self._gate.enter("list_state"), self._state_lock:
            items = {k: v for k, v in self._load_state().items() if k.startswith(prefix)}
            copied: dict[str, dict[str, Any]] = json.loads(json.dumps(items))
            return copied


# --- helpers ------------------------------------------------------------------------------


def read_state_file(path: Path, collection: str = "coderag") -> dict[str, dict[str, Any]]:
    """The state records of the Edge index at ``path``, read without owning it.

    For another process than the owner (``coderag models build`` and ``switch`` read the
    serving index's branch states and registry while ``coderag serve`` holds its LOCK). Safe
    because the owner only ever replaces the file whole (:func:`_atomic_write`): a reader
    sees one complete version, perhaps one write old. Empty when the index has no state.
    """
    target = Path(path) / f"{collection}.state.json"
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise IndexError_(f"edge: cannot read {target}: {exc}") from exc
    if not isinstance(data, dict):
        raise IndexError_(f"edge: corrupt state file {target}: not an object")
    return data


def edge_points(points: Sequence[IndexPoint]) -> list[qe.Point]:
    """The binding's points for ``points``: the Python -> Rust conversion every upsert pays
    (public so ``coderag bench vector-index`` can time it apart from the shard's update)."""
    return [
        qe.Point(
            p.id,
            {DENSE: p.dense, SPARSE: qe.SparseVector(p.sparse.indices, p.sparse.values)},
            p.payload,
        )
        for p in points
    ]


def _selector(fields: list[str] | None) -> Any:
    """``with_payload`` for ``fields``: all (``None``), none (``[]``), or just those."""
    if fields is None:
        return True
    return qe.PayloadSelector.Include(list(fields)) if fields else False


def _sv(v: SparseVec) -> qe.SparseVector:
    return qe.SparseVector(list(v.indices), [float(x) for x in v.values])


def _cond(c: Match | Depth) -> qe.FieldCondition:
    if isinstance(c, Match):
        if len(c.values) == 1:
            return qe.FieldCondition(c.key, match=qe.MatchValue(c.values[0]))
        return qe.FieldCondition(c.key, match=qe.MatchAny(list(c.values)))
    return qe.FieldCondition(c.key, values_count=qe.ValuesCount(gte=c.n, lte=c.n))


def _edge_filter(plan: FilterPlan) -> qe.Filter | None:
    must: list[Any] = [_cond(c) for c in plan.must]
    if plan.any_of is not None:
        must.append(qe.Filter(should=[qe.Filter(must=[_cond(c) for c in g]) for g in plan.any_of]))
    if plan.has_ids is not None:
        must.append(qe.HasIdCondition(set(plan.has_ids)))
    must_not: list[Any] = [qe.HasIdCondition(set(plan.exclude_ids))] if plan.exclude_ids else []
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None
