"""``coderag serve`` and ``coderag bench serve``, mounted on the main CLI by :func:`register`.

``coderag serve`` runs the API under uvicorn, one process. In the embedded default that one
process owns the Edge shard, answers searches, and runs the indexing that webhooks enqueue in a
background thread (the dispatcher's embedded executor), so there is nothing else to start.

``coderag bench serve`` measures what DESIGN.md's goals name, over real HTTP on loopback, in
embedded mode, and prints JSON:

* ``/v1/search`` latency (p50/p95/p99, client side, query embedding included) and requests/s
  at concurrency 1 and 8, on an index of N synthetic chunks (default 100k): a code-like code
  base forked into a few repos, exact BM25 sparse vectors, random unit dense vectors, written
  straight through ``index.upsert`` (the cost measured is search, not embedding the corpus;
  every query is new, so each request pays its query embedding). The server is a separate
  process (``uvicorn coderag.app:create_app --factory``), so the load generator does not
  share its GIL. ``--data-dir`` keeps the index for the next run;
* webhook-to-searchable seconds for one-file pushes: commit, POST a GitLab push event to the
  webhook, poll ``/v1/search`` until the new function is found (push debounce included).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from coderag.settings import Settings

__all__ = ["bench_serve", "register", "serve"]


def _settings(**overrides: Any) -> Settings:
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except Exception as exc:  # pydantic ValidationError: the reason, not a traceback
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc


def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default CODERAG_API_HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default CODERAG_API_PORT).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Data dir (default: CODERAG_DATA_DIR).")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING...")] = None,
) -> None:
    """Serve the API (search, Continue, webhooks, metrics); embedded mode also indexes here."""
    import logging

    import uvicorn

    from coderag.app import create_app
    from coderag.logging import configure_logging

    settings = _settings(data_dir=data_dir, log_level=log_level)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    bind = host or settings.api_host
    if not settings.api_tokens and bind not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning(
            "auth is disabled (CODERAG_API_TOKENS is empty) on a non-loopback address: "
            "anyone who can reach %s can read every indexed repository",
            bind,
        )
    uvicorn.run(
        create_app(settings),
        host=bind,
        port=port or settings.api_port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


# --- bench ----------------------------------------------------------------------------------

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


def _python_chunk(rng: random.Random, name: str) -> str:
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


def _java_chunk(rng: random.Random, name: str) -> str:
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


def _synthesize(index: Any, dim: int, n: int, repos: int, seed: int = 7) -> dict[str, Any]:
    """Write ``n`` code-like chunks: one synthetic code base forked into ``repos`` repos.

    Each repo holds the same ``n / repos`` chunks (same paths, lines, texts and therefore
    exact BM25 sparse vectors, computed once per text: tokenising is the slow part), like the
    forks and long-lived branches of a bank's monorepo. Dense vectors are random unit
    vectors, distinct per point, so the HNSW graph is not made of duplicates.
    """
    import math

    import numpy as np

    from coderag.index import IndexPoint, ancestor_dirs
    from coderag.models import content_hash, point_id
    from embeddings import sparse_document

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    per_repo = math.ceil(n / repos)
    per_file = 5
    t0 = time.perf_counter()
    base: list[dict[str, Any]] = []
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
        text = _java_chunk(rng, name) if java else _python_chunk(rng, name)
        start, end = line, line + text.count("\n")
        line, in_file = end + 2, in_file + 1
        base.append(
            {
                "path": path,
                "dirs": ancestor_dirs(path),
                "language": "java" if java else "python",
                "symbol": name,
                "kind": "method" if java else "function",
                "start_line": start,
                "end_line": end,
                "hash": content_hash(text),
                "commit": "0" * 40,
                "text": text,
                "_sparse": sparse_document(f"{name}\n{text}", path),
            }
        )
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
            for row, vec in zip(rows, vecs, strict=True):
                payload = {k: v for k, v in row.items() if k != "_sparse"}
                payload.update(repo=repo, branches=["main"])
                pid = point_id(repo, row["path"], row["start_line"], row["end_line"], row["hash"])
                points.append(IndexPoint(pid, vec.tolist(), row["_sparse"], payload))
            index.upsert(points)
            written += len(points)
    write_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    optimize = getattr(index, "optimize", None)
    if callable(optimize):
        optimize()
    return {
        "chunks": written,
        "repos": repos,
        "distinct_texts": per_repo,
        "sparse_seconds": round(sparse_s, 2),
        "write_seconds": round(write_s, 2),
        "optimize_seconds": round(time.perf_counter() - t2, 2),
    }


_TEMPLATES = (
    "how do we {verb} the {adj} {noun} of a {noun2}",
    "where is the {noun} {verb}ed when the {noun2} is {adj}",
    "{verb}_{adj}_{noun}",
    "{Noun}Service {verb} {noun2}",
    "what happens to a {adj} {noun} after {verb}",
    "def {verb}_{noun}({noun2}, strict=False)",
)


def _queries(n: int, seed: int) -> list[str]:
    """``n`` distinct queries: the embedder caches recent queries, and a benchmark that
    repeats ten queries would measure that cache, not the embedding every real query pays."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        q = rng.choice(_TEMPLATES).format(
            verb=rng.choice(_VERBS),
            adj=rng.choice(_ADJ),
            noun=rng.choice(_NOUNS),
            Noun=rng.choice(_NOUNS).capitalize(),
            noun2=rng.choice(_NOUNS),
        )
        out.setdefault(f"{q} {rng.randrange(10_000)}" if q in out else q)
    return list(out)


def _free_port() -> int:
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


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    idx = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return round(s[idx], 2)


def _load(
    base: str, requests: int, concurrency: int, repos: int, queries: list[str]
) -> dict[str, Any]:
    """``requests`` searches split over ``concurrency`` threads, one keep-alive client each;
    every request sends a query not sent before."""
    import httpx

    lat: list[float] = []
    server: list[float] = []
    errors = 0
    lock = threading.Lock()
    per = max(1, requests // concurrency)

    def worker(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        mine = queries[seed * per : (seed + 1) * per]
        with httpx.Client(base_url=base, timeout=30, trust_env=False) as client:
            for query in mine:
                body: dict[str, Any] = {"query": query, "k": 10}
                if rng.random() < 0.5:
                    body["repos"] = [f"bench/repo{rng.randrange(repos)}"]
                t0 = time.perf_counter()
                resp = client.post("/v1/search", json=body)
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    if resp.status_code == 200:
                        lat.append(ms)
                        server.append(float(resp.json()["took_ms"]))
                    else:
                        errors += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": errors,
        "p50_ms": _pct(lat, 50),
        "p95_ms": _pct(lat, 95),
        "p99_ms": _pct(lat, 99),
        "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
        "server_took_p50_ms": _pct(server, 50),
        "server_took_p95_ms": _pct(server, 95),
        "requests_per_s": round(len(lat) / wall, 1) if wall else None,
    }


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def _webhook_repo(root: Path) -> Path:
    src = root / "webhook-src"
    (src / "app").mkdir(parents=True)
    _git(src, "init", "-q", "-b", "main")
    for i in range(20):
        (src / "app" / f"module_{i}.py").write_text(
            _python_chunk(random.Random(i), f"handler_{i}") + "\n", encoding="utf-8"
        )
    _git(src, "add", "-A")
    _git(src, "commit", "-qm", "initial")
    return src


def _push(client: Any, src: Path, repo_id: str, secret: str, before: str) -> str:
    after = _git(src, "rev-parse", "HEAD")
    payload = {
        "object_kind": "push",
        "before": before,
        "after": after,
        "ref": "refs/heads/main",
        "checkout_sha": after,
        "total_commits_count": 1,
        "project": {"id": 1, "path_with_namespace": repo_id, "default_branch": "main"},
        "commits": [{"id": after}],
    }
    resp = client.post(
        "/v1/webhooks/gitlab",
        json=payload,
        headers={
            "X-Gitlab-Event": "Push Hook",
            "X-Gitlab-Token": secret,
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )
    if resp.status_code != 202:
        raise RuntimeError(f"webhook answered {resp.status_code}: {resp.text[:300]}")
    return after


def _wait_found(client: Any, repo_id: str, marker: str, timeout: float = 60.0) -> bool:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        resp = client.post(
            "/v1/search",
            json={"query": marker, "repos": [repo_id], "k": 3, "mode": "lexical"},
        )
        if resp.status_code == 200 and any(marker in r["text"] for r in resp.json()["results"]):
            return True
        time.sleep(0.02)
    return False


def _webhook_to_searchable(base: str, src: Path, repo_id: str, secret: str, pushes: int) -> dict:
    import httpx

    out: list[float] = []
    with httpx.Client(base_url=base, timeout=30, trust_env=False) as client:
        # First push: the full index of the repo (not timed), then one-file pushes.
        before = _push(client, src, repo_id, secret, "0" * 40)
        if not _wait_found(client, repo_id, "handler_3", timeout=120):
            raise RuntimeError("the initial push never became searchable")
        for i in range(pushes):
            marker = f"bench_marker_{uuid.uuid4().hex[:10]}"
            target = src / "app" / f"module_{i % 20}.py"
            with target.open("a", encoding="utf-8") as fh:
                fh.write(
                    f"\n\ndef {marker}(rows):\n"
                    f'    """Total the settled amounts of rows."""\n'
                    f"    return sum(r.amount for r in rows if r.settled)\n"
                )
            _git(src, "commit", "-qam", f"push {i}")
            t0 = time.perf_counter()
            before = _push(client, src, repo_id, secret, before)
            if not _wait_found(client, repo_id, marker):
                raise RuntimeError(f"push {i} never became searchable")
            out.append(time.perf_counter() - t0)
    return {
        "measure": "webhook POST -> found by /v1/search (one-file push, embedded mode)",
        "pushes": len(out),
        "p50_s": round(statistics.median(out), 3),
        "max_s": round(max(out), 3),
        "seconds": [round(s, 3) for s in out],
    }


def _start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "coderag.app:create_app",
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


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
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


_BENCH_STATE = "bench/synthetic"


def bench_serve(
    chunks: Annotated[int, typer.Option(help="Synthetic chunks in the index.")] = 100_000,
    repos: Annotated[int, typer.Option(help="Forks of the synthetic code base.")] = 5,
    requests: Annotated[int, typer.Option(help="Searches per concurrency level.")] = 400,
    pushes: Annotated[int, typer.Option(help="Timed one-file webhook pushes.")] = 5,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Keep the synthetic index here and reuse it next time (building 100k chunks "
            "takes minutes, mostly the HNSW build). Default: a temporary dir.",
        ),
    ] = None,
) -> None:
    """Search latency/throughput over HTTP and webhook-to-searchable, embedded mode (JSON)."""
    from coderag.repos import RepoRecord, RepoRegistry, hash_secret
    from coderag.runtime import build_runtime

    base_settings = _settings()
    result: dict[str, Any] = {"mode": "embedded", "index": "edge", "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="coderag-bench-serve-") as tmp:
        root = Path(tmp)
        settings = Settings(
            data_dir=data_dir or root / "data",
            model_export_dir=base_settings.models_dir,  # reuse exported models
            index_backend="edge",
            api_tokens={},
            log_level="WARNING",
        )
        rt = build_runtime(settings)
        t0 = time.perf_counter()
        rt.warm_up()
        result["model_load_seconds"] = round(time.perf_counter() - t0, 2)
        result["embedding_backend"] = getattr(rt.embedder, "backend", None)
        result["embedding_device"] = getattr(rt.embedder, "device", None)
        wanted = {"chunks": chunks, "repos": repos, "format": 1}
        built = rt.index.get_state(_BENCH_STATE)
        if built and all(built.get(k) == v for k, v in wanted.items()):
            result["build"] = {**built, "reused": True}
        elif built or rt.index.count():
            rt.close()
            typer.echo(f"{settings.data_dir} holds another index: use an empty dir", err=True)
            raise typer.Exit(2)
        else:
            result["build"] = _synthesize(rt.index, rt.embedder.dim, chunks, repos)
            rt.index.set_state(_BENCH_STATE, {**wanted, **result["build"]})
        src = _webhook_repo(root)
        secret = uuid.uuid4().hex
        repo_id = "bench/webhook"
        rt.indexer.delete_repo(repo_id)  # leftovers of an earlier run on a kept data dir
        RepoRegistry(rt.index).put(
            RepoRecord(id=repo_id, url=str(src), branches=["main"], secret_hash=hash_secret(secret))
        )
        rt.close()  # the server process must own the shard

        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "CODERAG_DATA_DIR": str(settings.data_dir),
            "CODERAG_MODEL_EXPORT_DIR": str(base_settings.models_dir),
            "CODERAG_INDEX_BACKEND": "edge",
            "CODERAG_API_TOKENS": "{}",
            "CODERAG_LOG_LEVEL": "WARNING",
        }
        env.pop("CODERAG_CELERY_BROKER_URL", None)
        env.pop("CODERAG_QDRANT_URL", None)
        log = root / "server.log"
        proc = _start_server(env, port, log)
        try:
            _wait_ready(base, proc, log, timeout=300)
            # Other processes on the machine inflate every figure: say how busy it was.
            result["loadavg_1m_before"] = round(os.getloadavg()[0], 2)
            queries = _queries(40 + 2 * requests, seed=11)
            _load(base, 40, 1, repos, queries[:40])  # warm-up: allocators, pools, pages
            result["search"] = [
                _load(base, requests, 1, repos, queries[40 : 40 + requests]),
                _load(base, requests, 8, repos, queries[40 + requests :]),
            ]
            result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
            if _has_webhooks():
                result["webhook_to_searchable"] = _webhook_to_searchable(
                    base, src, repo_id, secret, pushes
                )
            else:
                result["webhook_to_searchable"] = {"skipped": "webhooks not installed"}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    result["targets"] = {"search_p95_ms": 20, "webhook_to_searchable_s": 2}
    print(json.dumps(result, indent=2))


def _has_webhooks() -> bool:
    import importlib.util

    return importlib.util.find_spec("webhooks.routes") is not None


# --- mounting -------------------------------------------------------------------------------


def _bench_group(app: typer.Typer) -> typer.Typer | None:
    for group in app.registered_groups:
        if group.name == "bench" and group.typer_instance is not None:
            return group.typer_instance
    return None


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the main app; ``serve``, ``webhooks`` and ``search-load`` to its
    ``bench`` group."""
    app.command("serve")(serve)
    bench = _bench_group(app)
    if bench is not None:
        bench.command("serve")(bench_serve)
        if _has_webhooks():  # ``bench webhooks`` and ``bench search-load``
            from webhooks.bench import register as register_webhook_benches

            register_webhook_benches(bench)
