"""``coderag bench serve``: search latency and webhook-to-searchable, over real HTTP.

It measures, over loopback in embedded mode, and prints JSON:

* ``/v1/search`` latency (p50/p95/p99, client side, query embedding included) and requests/s
  at concurrency 1 and 8, on an index of N synthetic chunks (default 100k): a code-like code
  base forked into a few repos, exact BM25 sparse vectors, random unit dense vectors, written
  straight through ``index.upsert`` (the cost measured is search, not embedding the corpus;
  every query is new, so each request pays its query embedding). The server is a separate
  process (``uvicorn coderag.api.app:create_app --factory``), so the load generator does not
  share its GIL. ``--data-dir`` keeps the index for the next run;
* webhook-to-searchable seconds for one-file pushes: commit, POST a GitLab push event to the
  webhook, poll ``/v1/search`` until the new function is found (push debounce included).

The targets it prints beside the figures: search p95 at most 20 ms (concurrency 1), a
one-file push searchable within 1 s (p95). ``--debounce`` sets the push debounce of the
server (default: the settings' ``push_debounce_seconds``); the report says which was used.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.support import (
    free_port,
    pct,
    python_chunk,
    queries,
    start_server,
    stop_process,
    synthesize_index,
    wait_ready,
)
from coderag.settings import Settings

__all__ = ["bench_serve"]


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic ValidationError: the reason, not a traceback
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _load(
    base: str, requests: int, concurrency: int, repos: int, texts: list[str]
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
        mine = texts[seed * per : (seed + 1) * per]
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
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "p99_ms": pct(lat, 99),
        "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
        "server_took_p50_ms": pct(server, 50),
        "server_took_p95_ms": pct(server, 95),
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
            python_chunk(random.Random(i), f"handler_{i}") + "\n", encoding="utf-8"
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
        "p50_s": pct(out, 50, ndigits=3),
        "p95_s": pct(out, 95, ndigits=3),
        "max_s": round(max(out), 3),
        "seconds": [round(s, 3) for s in out],
    }


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
    debounce: Annotated[
        float | None,
        typer.Option(help="Push debounce seconds of the server (default: the settings')."),
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
            result["build"] = synthesize_index(rt.index, rt.embedder.dim, chunks, repos)
            rt.index.set_state(_BENCH_STATE, {**wanted, **result["build"]})
        src = _webhook_repo(root)
        secret = uuid.uuid4().hex
        repo_id = "bench/webhook"
        rt.indexer.delete_repo(repo_id)  # leftovers of an earlier run on a kept data dir
        RepoRegistry(rt.index).put(
            RepoRecord(id=repo_id, url=str(src), branches=["main"], secret_hash=hash_secret(secret))
        )
        rt.close()  # the server process must own the shard

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "CODERAG_DATA_DIR": str(settings.data_dir),
            "CODERAG_MODEL_EXPORT_DIR": str(base_settings.models_dir),
            "CODERAG_INDEX_BACKEND": "edge",
            "CODERAG_API_TOKENS": "{}",
            "CODERAG_LOG_LEVEL": "WARNING",
        }
        debounce_s = base_settings.push_debounce_seconds if debounce is None else debounce
        env["CODERAG_PUSH_DEBOUNCE_SECONDS"] = str(debounce_s)
        result["push_debounce_seconds"] = debounce_s
        env.pop("CODERAG_CELERY_BROKER_URL", None)
        env.pop("CODERAG_QDRANT_URL", None)
        log = root / "server.log"
        proc = start_server(env, port, log)
        try:
            wait_ready(base, proc, log, timeout=300)
            # Other processes on the machine inflate every figure: say how busy it was.
            result["loadavg_1m_before"] = round(os.getloadavg()[0], 2)
            texts = queries(40 + 2 * requests, seed=11)
            _load(base, 40, 1, repos, texts[:40])  # warm-up: allocators, pools, pages
            result["search"] = [
                _load(base, requests, 1, repos, texts[40 : 40 + requests]),
                _load(base, requests, 8, repos, texts[40 + requests :]),
            ]
            result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
            result["webhook_to_searchable"] = _webhook_to_searchable(
                base, src, repo_id, secret, pushes
            )
        finally:
            stop_process(proc)
    result["targets"] = {"search_p95_ms_concurrency_1": 20, "webhook_to_searchable_p95_s": 1}
    print(json.dumps(result, indent=2))
