"""``coderag bench vector-index``: upsert throughput and filtered query latency, as JSON.

    coderag bench vector-index                            # Edge, 20k points, 384 dims
    coderag bench vector-index --backend local -n 5000    # qdrant-client local mode
    coderag bench vector-index --backend server --url http://127.0.0.1:6333

Synthetic data shaped like the real payload (repo, branches, path, dirs, language, symbol,
~500 bytes of text; 40 sparse terms out of 30k): enough to time the index, not retrieval
quality (that is ``evals/``). Everything runs in a temporary directory that is removed.
"""

from __future__ import annotations

import platform
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.support import pct
from coderag.index import ChunkPayload, IndexPoint, SearchFilter, SparseVec, VectorIndex
from coderag.index.edge import EdgeIndex, edge_points

__all__ = ["BACKENDS", "bench_vector_index"]

BACKENDS = ("edge", "local", "server")
"""``edge``: the embedded shard; ``local``: qdrant-client's local mode; ``server``: a Qdrant
server (``url``)."""


def _points(n: int, dim: int, seed: int = 0) -> list[IndexPoint]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        path = f"src/m{i % 100}/sub{i % 7}/f{i}.py"
        terms = sorted(rng.sample(range(30_000), 40))
        out.append(
            IndexPoint(
                id=str(uuid.UUID(int=rng.getrandbits(128))),
                dense=[rng.gauss(0, 1) for _ in range(dim)],
                sparse=SparseVec(terms, [rng.uniform(0.5, 3.0) for _ in terms]),
                payload=ChunkPayload(
                    repo=f"group/repo{i % 5}",
                    branches=("main",) if i % 2 else ("main", "dev"),
                    path=path,
                    language="python",
                    start_line=1,
                    end_line=40,
                    text="x" * 500,
                    hash=f"{i:016x}",
                    symbol=f"sym{i}",
                    kind="function",
                    commit="0" * 40,
                ).to_dict(),
            )
        )
    return out


def _latency(fn: Callable[[], Any], n: int) -> dict[str, float | None]:
    fn()  # warm
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": pct(ts, 50, ndigits=3), "p95_ms": pct(ts, 95, ndigits=3)}


def _queries(idx: VectorIndex, dim: int, n: int) -> dict[str, Any]:
    rng = random.Random(1)
    flt = SearchFilter(repos=["group/repo1", "group/repo2"], branch="dev")
    glob = SearchFilter(repos=["group/repo1"], path_globs=["src/m1*/**/*.py"])

    def dense() -> list[float]:
        return [rng.gauss(0, 1) for _ in range(dim)]

    def sparse() -> SparseVec:
        terms = sorted(rng.sample(range(30_000), 8))
        return SparseVec(terms, [1.0] * 8)

    return {
        "dense_filtered": _latency(lambda: idx.search_dense(dense(), flt, 10), n),
        "sparse_filtered": _latency(lambda: idx.search_sparse(sparse(), flt, 10), n),
        "hybrid_filtered": _latency(lambda: idx.search_hybrid(dense(), sparse(), flt, 10), n),
        "hybrid_glob": _latency(lambda: idx.search_hybrid(dense(), sparse(), glob, 10), n),
    }


def bench_vector_index(
    backend: str, n: int, dim: int, queries: int, url: str | None
) -> dict[str, Any]:
    """Upsert ``n`` synthetic points of ``dim`` dims into a fresh index of ``backend`` (in a
    temporary dir, removed after), then time ``queries`` filtered searches of each kind; on
    Edge, also where upsert time goes and the same searches after ``optimize``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}")
    if backend == "server" and not url:
        raise ValueError("--backend server needs --url")
    points = _points(n, dim)
    with tempfile.TemporaryDirectory(prefix="coderag-bench-") as tmp:
        idx: VectorIndex
        if backend == "edge":
            idx = EdgeIndex(Path(tmp))
        else:
            from qdrant_client import QdrantClient

            from coderag.index.server import ServerIndex

            client = QdrantClient(url=url) if backend == "server" else QdrantClient(path=tmp)
            idx = ServerIndex(client=client, collection=f"bench_{uuid.uuid4().hex[:8]}")
        try:
            idx.ensure(dim)
            t = time.perf_counter()
            for lo in range(0, n, 2048):  # how the indexer calls it: one call per embed batch
                idx.upsert(points[lo : lo + 2048])
            upsert_s = time.perf_counter() - t
            t = time.perf_counter()
            idx.upsert(points[:10])
            small_ms = (time.perf_counter() - t) * 1000
            result: dict[str, Any] = {
                "backend": backend,
                "points": n,
                "dim": dim,
                "machine": {"cpus": _cpus(), "python": platform.python_version()},
                "upsert_points_per_s": round(n / upsert_s),
                "upsert_10_points_ms": round(small_ms, 2),
                "query": _queries(idx, dim, queries),
            }
            if isinstance(idx, EdgeIndex):
                result["upsert_breakdown"] = _edge_breakdown(points, dim)
                t = time.perf_counter()
                idx.optimize()
                result["optimize_s"] = round(time.perf_counter() - t, 2)
                result["query_after_optimize"] = _queries(idx, dim, queries)
            return result
        finally:
            idx.close()
            if backend != "edge":
                client.close()


def _edge_breakdown(points: list[IndexPoint], dim: int) -> dict[str, Any]:
    """Where Edge upsert time goes: Python -> binding conversion vs the shard itself."""
    import qdrant_edge as qe

    n = len(points)
    t = time.perf_counter()
    ops = [
        qe.UpdateOperation.upsert_points(edge_points(points[lo : lo + 512]))
        for lo in range(0, n, 512)
    ]
    convert_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory(prefix="coderag-bench-") as tmp:
        idx = EdgeIndex(Path(tmp))
        idx.ensure(dim)
        shard = idx.shard
        t = time.perf_counter()
        for op in ops:
            shard.update(op)
        update_s = time.perf_counter() - t
        t = time.perf_counter()
        shard.flush()
        flush_s = time.perf_counter() - t
        idx.close()
    return {
        "convert_points_per_s": round(n / convert_s),
        "shard_update_points_per_s": round(n / update_s),
        "final_flush_s": round(flush_s, 3),
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
