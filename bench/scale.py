"""``coderag bench scale``: how the index grows, from 10k to 1M chunks, as JSON.

    coderag bench scale                                   # 10k, 100k; Edge and the stand-in
    coderag bench scale --sizes 1000000 --backend edge --data-dir /big/disk

For each backend and size, in a child process of its own (so its RSS is its own): a fresh
index of N synthetic chunks, then the figures a capacity plan needs:

* ``upsert_points_per_s``: through ``index.upsert`` in the indexer's batches (2048), the
  Python -> Qdrant conversion included;
* ``hnsw``: on Edge, the graph built off the request path (:mod:`coderag.index.edge_build`:
  copy, child process, swap), as the service does it, with its seconds;
* ``search``: p50/p95/p99 of :meth:`retriever.search.Retriever.search`, hybrid, k=10, half
  the queries filtered to one repo, after the candidate field cache is warmed as a server
  warms it at start (``cache_warm``: points and seconds; ``search_cold_cache``: the same
  before it, on other queries): the index and fusion work of one ``/v1/search``, the
  query embedding left out (a stand-in embedder returns a unit vector per query; the model's
  cost does not grow with the index and ``coderag bench serve`` measures it);
* ``rss_peak_bytes`` and ``rss_after_bytes`` of the child, ``disk_bytes`` allocated.

The chunks are shaped as real ones (the payload of :class:`ChunkPayload`: repo, branches,
path, symbol, ~0.5-1.5 kB of code-like text; BM25 sparse vectors of that text) and dense
vectors are random unit vectors (384 dims). A corpus of at most 20k distinct texts is
repeated across repos, like the forks of a monorepo: tokenising 1M texts would time the
tokeniser, not the index.

The server backend is measured on qdrant-client's local mode standing in for a Qdrant server
(``"server_stand_in"`` says so): pure Python, it scans and is slow, so sizes above
``--local-max`` (default 10k) are skipped with the reason rather than run for hours.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["bench_scale", "run_one"]

DISTINCT_TEXTS = 20_000
REPOS = 10
BATCH = 2048
STAND_IN = "qdrant-client local mode"


class _UnitEmbedder:
    """Stands in for the model: a fixed random unit vector per query text."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def embed_queries(self, texts: list[str]) -> Any:
        import numpy as np

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            v = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(self.dim)
            out[i] = v / np.linalg.norm(v)
        return out


def _corpus(n: int) -> list[tuple[dict[str, Any], Any]]:
    """Distinct (payload without repo, sparse vector) rows, at most :data:`DISTINCT_TEXTS`."""
    import random

    from bench.support import java_chunk, python_chunk
    from coderag.index import ChunkPayload
    from coderag.models import content_hash
    from embeddings import sparse_document

    rng = random.Random(7)
    rows = []
    for i in range(min(n, DISTINCT_TEXTS)):
        java = i % 4 == 3
        name = f"handle_{i}_{rng.choice(['ledger', 'payment', 'session', 'token'])}"
        text = java_chunk(rng, name) if java else python_chunk(rng, name)
        path = (
            f"src/main/java/com/bank/m{i % 50}/F{i // 5}.java"
            if java
            else f"src/m{i % 50}/f{i // 5}.py"
        )
        payload = ChunkPayload(
            repo="",
            branches=("main",),
            path=path,
            language="java" if java else "python",
            start_line=1 + 40 * (i % 5),
            end_line=30 + 40 * (i % 5),
            text=text,
            hash=content_hash(text),
            symbol=name,
            kind="method" if java else "function",
            commit="0" * 40,
        ).to_dict()
        rows.append((payload, sparse_document(f"{name}\n{text}", path)))
    return rows


def _open(backend: str, path: Path, dim: int) -> Any:
    if backend == "edge":
        from coderag.index.edge import EdgeIndex

        idx: Any = EdgeIndex(path)
    else:
        from qdrant_client import QdrantClient

        from coderag.index.server import ServerIndex

        idx = ServerIndex(client=QdrantClient(path=str(path)), collection="scale")
    idx.ensure(dim)
    return idx


def _rss_now() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _disk_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total


def run_one(backend: str, n: int, path: Path, queries: int, dim: int = 384) -> dict[str, Any]:
    """One (backend, size) point: build the index in ``path`` and measure it (see module)."""
    import numpy as np

    from bench.support import latency_summary
    from bench.support import queries as make_queries
    from coderag.index import IndexPoint
    from coderag.models import point_id
    from retriever.search import Retriever

    t0 = time.perf_counter()
    rows = _corpus(n)
    corpus_s = time.perf_counter() - t0
    idx = _open(backend, path, dim)
    rng = np.random.default_rng(11)
    out: dict[str, Any] = {"backend": backend, "points": n, "dim": dim}
    if backend != "edge":
        out["server_stand_in"] = STAND_IN
    try:
        t1 = time.perf_counter()
        for lo in range(0, n, BATCH):
            size = min(BATCH, n - lo)
            vecs = rng.standard_normal((size, dim), dtype=np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            points = []
            for j in range(size):
                i = lo + j
                payload, sparse = rows[i % len(rows)]
                # past the distinct texts each repeat is another fork; below, round-robin
                fork = i // len(rows) if n > len(rows) else i
                repo = f"bench/repo{fork % REPOS}"
                pid = point_id(repo, payload["path"], i, payload["end_line"], payload["hash"])
                points.append(IndexPoint(pid, vecs[j].tolist(), sparse, {**payload, "repo": repo}))
            idx.upsert(points)
        upsert_s = time.perf_counter() - t1
        out["upsert_points_per_s"] = round(n / upsert_s)
        out["upsert_seconds"] = round(upsert_s, 1)
        out["corpus_seconds"] = round(corpus_s, 1)
        _progress(out)
        if backend == "edge":
            out["hnsw"] = idx.build_hnsw(threads=os.cpu_count() or 1)
            out["unindexed_after_build"] = idx.unindexed_points()
            _progress(out)
        retriever = Retriever(idx, _UnitEmbedder(dim))  # type: ignore[arg-type]
        texts = make_queries(2 * queries + 10, seed=5)
        for q in texts[:10]:  # warm pages and pools
            retriever.search(q, k=10)

        def timed(batch: list[str]) -> list[float]:
            ms = []
            for i, q in enumerate(batch):
                repos = [f"bench/repo{i % REPOS}"] if i % 2 else None
                t = time.perf_counter()
                retriever.search(q, repos=repos, k=10)
                ms.append((time.perf_counter() - t) * 1000)
            return ms

        what = "Retriever.search hybrid k=10, half filtered to a repo, no query model"
        cold = timed(texts[10 : 10 + queries])
        out["search_cold_cache"] = {
            "what": what + ", before the candidate cache is warmed",
            "queries": len(cold),
            **latency_summary(cold),
        }
        t2 = time.perf_counter()
        warmed = idx.warm_candidate_cache()
        out["cache_warm"] = {"points": warmed, "seconds": round(time.perf_counter() - t2, 2)}
        ms = timed(texts[10 + queries :])
        out["search"] = {
            "what": what + ", after the warm-up a server runs at start",
            "queries": len(ms),
            **latency_summary(ms),
        }
    finally:
        idx.close()
    out["rss_after_bytes"] = _rss_now()
    out["rss_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["disk_bytes"] = _disk_bytes(path)
    return out


def _progress(out: dict[str, Any]) -> None:
    """A point's figures so far, on stderr (a 1M point runs for many minutes)."""
    print(json.dumps({"progress": out, "rss_bytes": _rss_now()}), file=sys.stderr, flush=True)


def _child(backend: str, n: int, path: Path, queries: int) -> dict[str, Any]:
    """:func:`run_one` in a fresh interpreter: each point's RSS is its own."""
    code = (
        "import json,sys;from pathlib import Path;from bench.scale import run_one;"
        "print(json.dumps(run_one(sys.argv[1],int(sys.argv[2]),Path(sys.argv[3]),int(sys.argv[4]))))"
    )
    cmd = [sys.executable, "-c", code, backend, str(n), str(path), str(queries)]
    # stderr passes through: the child's progress lines show how far a long point got
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        return {"backend": backend, "points": n, "error": f"exit {proc.returncode}, see stderr"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        mult = 1_000_000 if part.endswith("m") else 1000 if part.endswith("k") else 1
        out.append(int(float(part.rstrip("mk")) * mult))
    return out


def bench_scale(
    sizes: Annotated[
        str, typer.Option(help="Index sizes, comma-separated (10k, 100k, 1m or plain numbers).")
    ] = "10k,100k",
    backend: Annotated[
        list[str] | None,
        typer.Option(
            "--backend", help="edge (embedded) or server (qdrant-client local mode); repeatable."
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="Where the indexes are built (one dir per point, removed after)."
        ),
    ] = None,
    queries: Annotated[int, typer.Option(help="Timed searches per point.")] = 200,
    local_max: Annotated[
        int, typer.Option(help="Largest size run on the server stand-in (local mode).")
    ] = 10_000,
) -> None:
    """Upsert rate, RSS, disk and search latency at each size, per backend (JSON)."""
    import shutil

    backends = backend or ["edge", "server"]
    bad = [b for b in backends if b not in ("edge", "server")]
    if bad:
        typer.echo(f"--backend must be edge or server, not {', '.join(bad)}", err=True)
        raise typer.Exit(2)
    try:
        wanted = _sizes(sizes)
    except ValueError as exc:
        typer.echo(f"--sizes: {exc}", err=True)
        raise typer.Exit(2) from exc
    root = Path(data_dir or tempfile.mkdtemp(prefix="coderag-bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    try:
        for b in backends:
            for n in wanted:
                if b == "server" and n > local_max:
                    results.append(
                        {
                            "backend": b,
                            "points": n,
                            "server_stand_in": STAND_IN,
                            "skipped": f"over --local-max {local_max}: local mode is pure "
                            "Python and scans every point (hours at this size); measure a "
                            "real server for it",
                        }
                    )
                    continue
                path = root / f"{b}-{n}"
                shutil.rmtree(path, ignore_errors=True)
                q = queries if b == "edge" else min(queries, 20)
                results.append(_child(b, n, path, q))
                shutil.rmtree(path, ignore_errors=True)
    finally:
        if data_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    report = {
        "bench": "scale",
        "cpu_count": os.cpu_count(),
        "server_stand_in": STAND_IN,
        "targets": {"search_p95_ms_at_1m": 50, "fits_in_bytes_at_1m": 24 * 1024**3},
        "results": results,
    }
    print(json.dumps(report, indent=2))
