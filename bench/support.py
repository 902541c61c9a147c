"""What the benchmarks share: percentiles, a synthetic code corpus, a loopback server.

* :func:`pct` and :func:`latency_summary`: every bench's percentiles, through the one
  definition in :mod:`coderag.stats` (nearest rank: a reported p95 is a latency that was
  actually measured), rounded for JSON, ``None`` (which JSON can say, unlike ``NaN``) when
  nothing was measured;
* :func:`python_chunk`, :func:`java_chunk`, :func:`synthesize_index`, :func:`queries`:
  code-like text, an index of synthetic chunks written straight through ``index.upsert``
  (so what a bench measures is search, not embedding a corpus), and queries that are all
  distinct (the embedder caches recent queries; repeating them would measure that cache);
* :func:`free_port`, :func:`start_server`, :func:`wait_ready`, :func:`stop_process`,
  :func:`serve_in_thread`: the API on 127.0.0.1, in its own process (so the load generator
  does not share its GIL) or in a thread of this one (tests: the session's warmed model).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from coderag.stats import percentile, summarize

__all__ = [
    "APP_FACTORY",
    "free_port",
    "java_chunk",
    "latency_summary",
    "pct",
    "python_chunk",
    "queries",
    "serve_in_thread",
    "start_server",
    "stop_process",
    "synthesize_index",
    "wait_ready",
]

APP_FACTORY = "coderag.api.app:create_app"
"""The uvicorn factory string of the API (``uvicorn APP_FACTORY --factory``)."""


# --- percentiles ----------------------------------------------------------------------------


def pct(
    values: Sequence[float], q: float, *, ndigits: int = 2, empty: float | None = None
) -> float | None:
    """Nearest-rank percentile (:func:`coderag.stats.percentile`), rounded to ``ndigits``;
    ``empty`` (default ``None``) when there are no values."""
    return round(percentile(values, q), ndigits) if values else empty


def latency_summary(ms: Sequence[float]) -> dict[str, float | None]:
    """``p50_ms``, ``p95_ms``, ``p99_ms`` and ``max_ms`` of millisecond latencies (the keys
    of the load benches' reports), rounded to 0.01; ``None`` each when nothing was
    measured."""
    return {
        **summarize(ms, (50, 95, 99), key="p{q}_ms"),
        "max_ms": round(max(ms), 2) if ms else None,
    }


# --- a synthetic code corpus ----------------------------------------------------------------

_VERBS = (  # noqa: SIM905 - word lists read better as text
    "get load save parse render build validate compute merge send fetch update delete create "
    "resolve encode decode flush retry apply check convert format normalise register"
).split()
_NOUNS = (  # noqa: SIM905
    "user account session token header payment ledger transaction invoice report config cache "
    "queue record branch commit chunk index request response balance customer rate limit "
    "schedule audit statement transfer currency settlement"
).split()
_ADJ = "pending active stale remote local cached signed partial daily monthly".split()  # noqa: SIM905


def _ident(rng: random.Random) -> str:
    return f"{rng.choice(_VERBS)}_{rng.choice(_ADJ)}_{rng.choice(_NOUNS)}"


def python_chunk(rng: random.Random, name: str) -> str:
    """A Python function named ``name`` (6-30 body lines of code-like statements)."""
    noun, other = rng.choice(_NOUNS), rng.choice(_NOUNS)
    lines = [
        f"def {name}({noun}, {other}=None, *, strict=False):",
        f'    """{rng.choice(_VERBS).capitalize()} the {rng.choice(_ADJ)} {noun} '
        f'for a {other}; raises ValueError when strict and the {noun} is invalid."""',
    ]
    for _ in range(rng.randint(6, 30)):
        a, b = _ident(rng), rng.choice(_NOUNS)
        lines.append(
            rng.choice(
                [
                    f"    {b} = {a}({noun}, {other})",
                    f"    if {b} is None and strict:\n        raise ValueError('{b} missing')",
                    f"    for item in {noun}.{b}s:\n        {a}(item)",
                    f"    {other}_{b} = {{k: v for k, v in {b}.items() if v}}",
                    f"    log.debug('{a} %s', {b})",
                ]
            )
        )
    lines.append(f"    return {rng.choice(_NOUNS)}")
    return "\n".join(lines)


def java_chunk(rng: random.Random, name: str) -> str:
    """A Java method derived from ``name`` (6-25 body lines)."""
    cls = "".join(p.capitalize() for p in name.split("_")[1:])
    meth = name.split("_")[0] + cls
    lines = [f"public {cls}Result {meth}({cls}Request request) {{"]
    for _ in range(rng.randint(6, 25)):
        a, b = _ident(rng), rng.choice(_NOUNS)
        lines.append(
            rng.choice(
                [
                    f"    var {b} = this.{b}Service.{a.split('_')[0]}(request.get{cls}());",
                    f'    if ({b} == null) {{ throw new IllegalStateException("{b}"); }}',
                    f'    log.info("{a} {{}}", {b});',
                ]
            )
        )
    lines += [f"    return new {cls}Result({rng.choice(_NOUNS)});", "}"]
    return "\n".join(lines)


def synthesize_index(index: Any, dim: int, n: int, repos: int, seed: int = 7) -> dict[str, Any]:
    """Write ``n`` code-like chunks: one synthetic code base forked into ``repos`` repos.

    Each repo holds the same ``n / repos`` chunks (same paths, lines, texts and therefore
    exact BM25 sparse vectors, computed once per text: tokenising is the slow part), like the
    forks and long-lived branches of a bank's monorepo. Dense vectors are random unit
    vectors, distinct per point, so the HNSW graph is not made of duplicates.
    """
    import dataclasses
    import math

    import numpy as np

    from coderag.index import ChunkPayload, IndexPoint
    from coderag.models import content_hash, point_id
    from embeddings import sparse_document

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    per_repo = math.ceil(n / repos)
    per_file = 5
    t0 = time.perf_counter()
    base: list[tuple[ChunkPayload, Any]] = []  # (payload of no repo yet, its sparse vector)
    file_no, in_file, line, path, java = -1, per_file, 1, "", False
    for _ in range(per_repo):
        if in_file == per_file:
            file_no, in_file, line = file_no + 1, 0, 1
            java = file_no % 4 == 3
            module = _NOUNS[file_no % len(_NOUNS)]
            path = (
                f"src/main/java/com/bank/{module}/{module.capitalize()}{file_no}.java"
                if java
                else f"src/{module}/{rng.choice(_NOUNS)}_{file_no}.py"
            )
        name = _ident(rng)
        text = java_chunk(rng, name) if java else python_chunk(rng, name)
        start, end = line, line + text.count("\n")
        line, in_file = end + 2, in_file + 1
        payload = ChunkPayload(
            repo="",
            branches=("main",),
            path=path,
            language="java" if java else "python",
            start_line=start,
            end_line=end,
            text=text,
            hash=content_hash(text),
            symbol=name,
            kind="method" if java else "function",
            commit="0" * 40,
        )
        base.append((payload, sparse_document(f"{name}\n{text}", path)))
    sparse_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    written = 0
    for r in range(repos):
        repo = f"bench/repo{r}"
        for lo in range(0, per_repo, 2000):
            rows = base[lo : min(lo + 2000, per_repo, n - written + lo)]
            if not rows:
                break
            vecs = nrng.standard_normal((len(rows), dim), dtype=np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            points = []
            for (row, sparse), vec in zip(rows, vecs, strict=True):
                pid = point_id(repo, row.path, row.start_line, row.end_line, row.hash)
                payload = dataclasses.replace(row, repo=repo).to_dict()
                points.append(IndexPoint(pid, vec.tolist(), sparse, payload))
            index.upsert(points)
            written += len(points)
    write_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    # The graph is built the service's way (off the request path, coderag.index.edge_build),
    # with every CPU: nothing is served yet.
    build = getattr(index, "build_hnsw", None)
    if callable(build):
        build(threads=os.cpu_count() or 1)
    return {
        "chunks": written,
        "repos": repos,
        "distinct_texts": per_repo,
        "sparse_seconds": round(sparse_s, 2),
        "write_seconds": round(write_s, 2),
        "hnsw_build_seconds": round(time.perf_counter() - t2, 2),
    }


_QUERY_TEMPLATES = (
    "how do we {verb} the {adj} {noun} of a {noun2}",
    "where is the {noun} {verb}ed when the {noun2} is {adj}",
    "{verb}_{adj}_{noun}",
    "{Noun}Service {verb} {noun2}",
    "what happens to a {adj} {noun} after {verb}",
    "def {verb}_{noun}({noun2}, strict=False)",
)


def queries(n: int, seed: int) -> list[str]:
    """``n`` distinct queries: the embedder caches recent queries, and a benchmark that
    repeats ten queries would measure that cache, not the embedding every real query pays."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        q = rng.choice(_QUERY_TEMPLATES).format(
            verb=rng.choice(_VERBS),
            adj=rng.choice(_ADJ),
            noun=rng.choice(_NOUNS),
            Noun=rng.choice(_NOUNS).capitalize(),
            noun2=rng.choice(_NOUNS),
        )
        out.setdefault(f"{q} {rng.randrange(10_000)}" if q in out else q)
    return list(out)


# --- the API on loopback --------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server that must be told its port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Any, port: int = 0, *, start_timeout: float = 120.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 in a thread of this process until the block
    ends; yields the base URL. ``port=0`` takes a free port; a fixed one is for apps that
    must know their own URL beforehand (``public_url`` for GitLab hooks). In-process serving
    shares this process's warmed model, which is what benches and tests of the API want."""
    import uvicorn

    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="coderag-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """The API in its own process (uvicorn, one worker) on 127.0.0.1:``port``, configured by
    ``env``; its output goes to ``log``. Wait for it with :func:`wait_ready`."""
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        APP_FACTORY,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    with log.open("wb") as fh:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll ``/readyz`` until it answers 200; raise with the log's tail if the process exits
    first, or when ``timeout`` seconds pass."""
    import httpx

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate ``proc`` (a graceful shutdown first), killing it after 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
