"""``coderag bench search-load``: ``/v1/search`` under concurrent load *while indexing runs*.

A search benchmark on an idle index says little about a service whose single process (the
embedded default) also embeds and writes every push. Here the API runs in its own process
(see :class:`bench.webhooks.Target`); a repository of ``--files`` synthetic Python files is
registered and fully indexed first, then for ``--seconds``:

* ``--concurrency`` threads, one keep-alive HTTP client each, send ``/v1/search`` requests
  back to back (every query new, so each pays its query embedding; half filtered to a repo);
* a pusher moves the repository's branch to its next commit every ``--push-interval``
  seconds (each commit rewrites ``--files-per-commit`` files) and posts the GitLab push
  webhook, so the in-process executor embeds and writes all along.

Prints JSON: requests, errors and error rate, latency p50/p95/p99/max, throughput, and the
indexing done meanwhile (pushes, runs, chunks embedded, whether the branch caught up after).
Exits 1 when any request failed.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.support import latency_summary, pct, queries
from bench.webhooks import (
    BenchRepo,
    Target,
    branch_status,
    make_repo,
    push_body,
    register_repos,
    serving,
    set_head,
    wait_converged,
)

__all__ = ["bench_search_load", "run_search_load"]


def _chunks_embedded(client: Any) -> float:
    """``coderag_chunks_embedded_total`` from the API's ``/metrics`` (embedded mode: the
    API process embeds)."""
    resp = client.get("/metrics")
    total = 0.0
    for line in resp.text.splitlines():
        if line.startswith("coderag_chunks_embedded_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class _Pusher(threading.Thread):
    """Moves the branch one commit forward and posts its webhook, every ``interval`` s."""

    def __init__(self, base: str, repo: BenchRepo, interval: float) -> None:
        super().__init__(name="bench-pusher", daemon=True)
        self.base, self.repo, self.interval = base, repo, interval
        self.stop = threading.Event()
        self.pushed = 0
        self.failures: list[str] = []

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.base, timeout=30, trust_env=False) as client:
            for i in range(1, len(self.repo.shas)):
                if self.stop.is_set():
                    return
                set_head(self.repo.bare, self.repo.shas[i])
                resp = client.post(
                    "/v1/webhooks/gitlab",
                    json=push_body(self.repo.id, self.repo.shas[i - 1], self.repo.shas[i]),
                    headers={
                        "X-Gitlab-Event": "Push Hook",
                        "X-Gitlab-Token": self.repo.secret,
                        "Idempotency-Key": str(uuid.uuid4()),
                    },
                )
                if resp.status_code != 202:
                    self.failures.append(f"{resp.status_code} {resp.text[:200]}")
                self.pushed = i
                self.stop.wait(self.interval)


def _searcher(
    base: str,
    texts: list[str],
    repo_ids: list[str],
    until: float,
    seed: int,
    out: dict[str, Any],
    lock: threading.Lock,
) -> None:
    import httpx

    rng = random.Random(seed)
    lat: list[float] = []
    took: list[float] = []
    errors: list[str] = []
    with httpx.Client(base_url=base, timeout=30, trust_env=False) as client:
        n = 0
        while time.monotonic() < until:
            body: dict[str, Any] = {"query": texts[(seed * 7919 + n) % len(texts)], "k": 10}
            n += 1
            if rng.random() < 0.5:
                body["repos"] = [rng.choice(repo_ids)]
            t0 = time.perf_counter()
            try:
                resp = client.post("/v1/search", json=body)
            except httpx.HTTPError as exc:
                errors.append(f"no answer: {type(exc).__name__}")
                continue
            ms = (time.perf_counter() - t0) * 1000
            if resp.status_code == 200:
                lat.append(ms)
                took.append(float(resp.json()["took_ms"]))
            else:
                errors.append(f"{resp.status_code} {resp.text[:200]}")
    with lock:
        out["lat"] += lat
        out["took"] += took
        out["errors"] += errors


def run_search_load(
    target: Target,
    *,
    concurrency: int = 16,
    seconds: float = 60.0,
    files: int = 120,
    files_per_commit: int = 8,
    push_interval: float = 1.0,
    timeout: float = 600.0,
    work_dir: Path,
) -> dict[str, Any]:
    """Index a repo, then search under load while pushes keep it indexing; the report."""
    import httpx

    commits = int(seconds / max(push_interval, 0.05)) + 5
    t0 = time.perf_counter()
    repo = make_repo(
        work_dir / "remotes",
        f"bench/search-{uuid.uuid4().hex[:6]}",
        files=files,
        commits=commits,
        files_per_commit=files_per_commit,
        seed=3,
    )
    result: dict[str, Any] = {
        "mode": "distributed" if target.redis_url else "embedded",
        "cpu_count": os.cpu_count(),
        "files": files,
        "setup_seconds": round(time.perf_counter() - t0, 2),
    }
    with (
        serving(target, work_dir / "logs") as base,
        httpx.Client(base_url=base, timeout=30, trust_env=False) as client,
    ):
        t1 = time.perf_counter()
        register_repos(client, [repo])
        ok, st = wait_converged(client, [repo], timeout, want={repo.id: repo.shas[0]})
        if not ok:
            raise RuntimeError(f"the first index did not finish: {st}")
        result["first_index_seconds"] = round(time.perf_counter() - t1, 2)
        result["chunks_indexed"] = client.get(f"/v1/repos/{repo.id}/status").json()["chunks"]
        runs0, emb0 = branch_status(client, repo.id)["runs"], _chunks_embedded(client)
        texts = queries(20_000, seed=23)
        out: dict[str, Any] = {"lat": [], "took": [], "errors": []}
        lock = threading.Lock()
        result["loadavg_1m_before"] = round(os.getloadavg()[0], 2)

        pusher = _Pusher(base, repo, push_interval)
        pusher.start()
        time.sleep(min(push_interval, 1.0))  # the first run is under way when load starts
        start = time.monotonic()
        threads = [
            threading.Thread(
                target=_searcher,
                args=(base, texts, [repo.id], start + seconds, i, out, lock),
                name=f"bench-search-{i}",
            )
            for i in range(concurrency)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - start
        pusher.stop.set()
        pusher.join(timeout=60)
        mid = branch_status(client, repo.id)
        runs_during = mid["runs"] - runs0
        emb_during = _chunks_embedded(client) - emb0
        result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        want = {repo.id: repo.shas[pusher.pushed]}
        caught_up, _ = wait_converged(client, [repo], timeout, want=want)
        catch_up_s = time.monotonic() - start - wall

    lat, errors = out["lat"], out["errors"]
    total = len(lat) + len(errors)
    result.update(
        {
            "concurrency": concurrency,
            "seconds": round(wall, 2),
            "requests": total,
            "errors": len(errors),
            "error_rate": round(len(errors) / total, 6) if total else None,
            "error_samples": sorted(set(errors))[:5],
            "latency": {
                **latency_summary(lat),
                "mean_ms": round(sum(lat) / len(lat), 2) if lat else None,
            },
            "server_took_p50_ms": pct(out["took"], 50),
            "server_took_p95_ms": pct(out["took"], 95),
            "requests_per_s": round(total / wall, 1) if wall else None,
            "indexing_meanwhile": {
                "pushes": pusher.pushed,
                "push_failures": len(pusher.failures),
                "runs": runs_during,
                "chunks_embedded": int(emb_during),
                "commits_behind_when_load_ended": pusher.pushed
                - (repo.shas.index(mid["commit"]) if mid.get("commit") in repo.shas else 0),
                "caught_up_after_load": caught_up,
                "catch_up_seconds": round(catch_up_s, 2),
            },
        }
    )
    result["ok"] = bool(total and not errors and not pusher.failures and caught_up)
    return result


def bench_search_load(
    concurrency: Annotated[int, typer.Option(help="Search clients in parallel.")] = 16,
    seconds: Annotated[float, typer.Option(help="Measurement length.")] = 60,
    files: Annotated[int, typer.Option(help="Python files in the indexed repository.")] = 120,
    files_per_commit: Annotated[int, typer.Option(help="Files each push rewrites.")] = 8,
    push_interval: Annotated[float, typer.Option(help="Seconds between pushes.")] = 1.0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for indexing.")] = 600,
) -> None:
    """/v1/search at a fixed concurrency while pushes keep the indexer busy, embedded mode
    (JSON; exit 1 on any failed request)."""
    from coderag.settings import Settings

    base = Settings()
    with tempfile.TemporaryDirectory(prefix="coderag-bench-search-") as tmp:
        work = Path(tmp)
        target = Target(data_dir=work / "data", models_dir=base.models_dir)
        result = run_search_load(
            target,
            concurrency=concurrency,
            seconds=seconds,
            files=files,
            files_per_commit=files_per_commit,
            push_interval=push_interval,
            timeout=timeout,
            work_dir=work,
        )
    print(json.dumps(result, indent=2))
    if not result["ok"]:
        raise typer.Exit(1)
