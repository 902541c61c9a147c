"""``coderag bench webhooks``: a burst of GitLab push deliveries against a running API.

What it proves: every delivery is answered fast, duplicate
deliveries (same ``Idempotency-Key``, as GitLab's retries) are recognised, pushes that
arrive *after* newer ones (late deliveries) do not move a branch back, every repository ends
at its newest commit, and the many pushes fold into few indexing runs.

The setup is real end to end, over HTTP on loopback:

* N bare git repositories on disk (the "GitLab projects"), K commits each, written at once
  with ``git fast-import`` (one process per repo: creating 800 commits one ``git commit`` at a
  time would take longer than the burst);
* the API in its own process (``uvicorn coderag.api.app:create_app --factory``, embedded mode: the
  in-process executor indexes and folds runs), or with ``--redis`` in distributed mode with a
  ``coderag worker`` process (then a Qdrant server is needed: ``--qdrant-url``);
* the repos registered through ``POST /v1/repos`` (manual mode: no GitLab API), first full
  index awaited;
* the burst: phase 1 sends the push of commit 1, 2, ... K of every repo (interleaved across
  repos, the remote branch moved forward right before each push, as GitLab does) plus exact
  duplicates of earlier deliveries, ``--concurrency`` in flight; phase 2, once phase 1 is
  answered, sends the delayed deliveries of older commits (stale pushes) and more duplicates;
* then it polls ``GET /v1/repos/{id}/status`` until every branch is at its newest commit with
  nothing pending, and checks that the newest commit's new function is found by
  ``/v1/search``.

Prints JSON; exits 1 when a repository did not converge, a delivery got a 5xx or no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.support import (
    free_port,
    latency_summary,
    python_chunk,
    serve_in_thread,
    start_server,
    stop_process,
    wait_ready,
)

__all__ = [
    "BenchRepo",
    "Target",
    "bench_webhooks",
    "branch_status",
    "make_repo",
    "push_body",
    "register_repos",
    "run_webhook_bench",
    "serving",
    "set_head",
    "wait_converged",
]

BRANCH = "main"
_IDENT = "bench <bench@localhost> {t} +0000"


# --- repositories ---------------------------------------------------------------------------


@dataclass
class BenchRepo:
    """A bare repository and its commits, oldest first (``shas[0]`` is the initial one)."""

    id: str
    bare: Path
    shas: list[str]
    markers: list[str]
    """``markers[i]``: the function name commit ``i`` added (``markers[0]``: one of the
    initial files')."""
    secret: str = ""

    @property
    def newest(self) -> str:
        return self.shas[-1]


def make_repo(
    root: Path,
    repo_id: str,
    *,
    files: int,
    commits: int,
    functions_per_file: int = 4,
    files_per_commit: int = 1,
    seed: int = 0,
) -> BenchRepo:
    """A bare repo with an initial commit of ``files`` Python files and ``commits`` commits
    after it, each rewriting ``files_per_commit`` files with one new function apiece.

    All commits hang off ``refs/bench/all`` (so the objects stay reachable); the branch
    starts at the initial commit and :func:`set_head` moves it, like a push would.
    """
    rng = random.Random(seed)
    slug = repo_id.replace("/", "_").replace("-", "_")
    bare = root / f"{slug}.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True, capture_output=True)
    contents: dict[str, str] = {}
    for f in range(files):
        funcs = [python_chunk(rng, f"{slug}_f{f}_fn{j}") for j in range(functions_per_file)]
        contents[f"src/{slug}/module_{f}.py"] = "\n\n\n".join(funcs) + "\n"
    paths = sorted(contents)
    stream: list[bytes] = []
    markers = [f"{slug}_f0_fn0"]

    def commit(mark: int, changed: list[str], msg: str) -> None:
        head = f"commit refs/bench/all\nmark :{mark}\n"
        head += f"committer {_IDENT.format(t=1_700_000_000 + mark)}\n"
        body = msg.encode()
        stream.append(head.encode() + f"data {len(body)}\n".encode() + body + b"\n")
        if mark > 1:
            stream.append(f"from :{mark - 1}\n".encode())
        for p in changed:
            data = contents[p].encode()
            stream.append(f"M 100644 inline {p}\ndata {len(data)}\n".encode() + data + b"\n")
        stream.append(b"\n")

    commit(1, paths, "initial")
    for i in range(1, commits + 1):
        marker = f"{slug}_change_{i}"
        changed = [paths[(i * files_per_commit + k) % len(paths)] for k in range(files_per_commit)]
        for k, p in enumerate(dict.fromkeys(changed)):
            name = marker if k == 0 else f"{marker}_{k}"
            contents[p] += "\n\n" + python_chunk(rng, name) + "\n"
        markers.append(marker)
        commit(i + 1, list(dict.fromkeys(changed)), f"change {i}")
    marks = bare / "bench-marks"
    subprocess.run(
        ["git", "-C", str(bare), "fast-import", "--quiet", f"--export-marks={marks}"],
        input=b"".join(stream),
        check=True,
        capture_output=True,
    )
    by_mark = dict(line.split()[:2] for line in marks.read_text().splitlines())
    shas = [by_mark[f":{m}"] for m in range(1, commits + 2)]
    marks.unlink()
    set_head(bare, shas[0])
    return BenchRepo(id=repo_id, bare=bare, shas=shas, markers=markers)


def set_head(bare: Path, sha: str, branch: str = BRANCH) -> None:
    """Move the remote branch to ``sha`` (what a push does), in microseconds.

    Written as git writes a loose ref (new file, then rename): ``git update-ref`` would cost
    a process per push and turn the burst into a trickle. A loose ref wins over a packed one.
    """
    ref = bare / "refs" / "heads" / branch
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f".{ref.name}.{uuid.uuid4().hex}")
    tmp.write_text(sha + "\n")
    os.replace(tmp, ref)


def push_body(repo_id: str, before: str, after: str, branch: str = BRANCH) -> dict[str, Any]:
    """A Push Hook body with the fields coderag reads (GitLab sends many more)."""
    return {
        "object_kind": "push",
        "event_name": "push",
        "before": before,
        "after": after,
        "ref": f"refs/heads/{branch}",
        "checkout_sha": after,
        "total_commits_count": 1,
        "project": {"id": 1, "path_with_namespace": repo_id, "default_branch": branch},
        "commits": [{"id": after}],
    }


# --- the stack under test -------------------------------------------------------------------


@dataclass
class Target:
    """Where and how the API runs.

    ``runtime``: serve this (already built) runtime from a uvicorn thread of this process
    (tests: the session's warmed model, no second model load); otherwise the API is a
    separate process, so the load generator does not share its GIL. ``redis_url``:
    distributed mode, indexing by ``worker_cmd`` (default ``coderag worker``).
    """

    data_dir: Path
    models_dir: Path | None = None
    debounce: float | None = None
    runtime: Any | None = None
    redis_url: str | None = None
    qdrant_url: str | None = None
    worker_cmd: list[str] | None = None
    worker_env: dict[str, str] = field(default_factory=dict)
    collection: str | None = None

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CODERAG_") or k == "CODERAG_TEST_MODELS_DIR"
        }
        env.update(
            CODERAG_DATA_DIR=str(self.data_dir),
            CODERAG_API_TOKENS="{}",
            CODERAG_LOG_LEVEL="WARNING",
            CODERAG_LOG_JSON="false",
        )
        if self.models_dir is not None:
            env["CODERAG_MODEL_EXPORT_DIR"] = str(self.models_dir)
        if self.debounce is not None:
            env["CODERAG_PUSH_DEBOUNCE_SECONDS"] = repr(self.debounce)
        if self.redis_url:
            env.update(CODERAG_CELERY_BROKER_URL=self.redis_url, CODERAG_REDIS_URL=self.redis_url)
        if self.collection:
            env["CODERAG_COLLECTION"] = self.collection
        if self.qdrant_url:
            env.update(CODERAG_QDRANT_URL=self.qdrant_url, CODERAG_INDEX_BACKEND="server")
        else:
            env["CODERAG_INDEX_BACKEND"] = "edge"
        return env


@contextlib.contextmanager
def _in_process(runtime: Any) -> Iterator[str]:
    from coderag.api.app import create_app

    with serve_in_thread(create_app(runtime.settings, runtime=runtime)) as base:
        yield base


@contextlib.contextmanager
def serving(target: Target, logs: Path) -> Iterator[str]:
    """Start the API (and in distributed mode a worker); yield its base URL."""
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if target.redis_url:
            cmd = target.worker_cmd or [
                sys.executable,
                "-c",
                "from coderag.cli import main; main()",
                "worker",
                "--pool",
                "solo",
                "--metrics-port",
                "0",
                "--loglevel",
                "WARNING",
            ]
            with (logs / "worker.log").open("wb") as fh:
                procs.append(
                    subprocess.Popen(
                        cmd,
                        env={**target.env(), **target.worker_env},
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                    )
                )
        if target.runtime is not None:
            with _in_process(target.runtime) as base:
                yield base
            return
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = logs / "server.log"
        procs.append(start_server(target.env(), port, log))
        wait_ready(base, procs[-1], log, timeout=300)
        yield base
    finally:
        for p in reversed(procs):
            stop_process(p)


# --- talking to it --------------------------------------------------------------------------


def register_repos(client: Any, repos: list[BenchRepo]) -> None:
    """``POST /v1/repos`` in manual mode (local clone URL, no GitLab API): keeps each secret."""
    for r in repos:
        resp = client.post("/v1/repos", json={"url": str(r.bare), "id": r.id, "branches": [BRANCH]})
        if resp.status_code != 201:
            raise RuntimeError(f"registering {r.id}: {resp.status_code} {resp.text[:300]}")
        r.secret = resp.json()["secret"]


def branch_status(client: Any, repo_id: str) -> dict[str, Any]:
    """The ``main`` branch of ``GET /v1/repos/{id}/status`` plus the repo's run counter."""
    resp = client.get(f"/v1/repos/{repo_id}/status")
    resp.raise_for_status()
    body = resp.json()
    b = next((x for x in body.get("branches", []) if x["branch"] == BRANCH), {})
    runs = int((body.get("last_run") or {}).get("runs") or 0)
    return {**b, "runs": runs, "last_error": body.get("last_error")}


def wait_converged(
    client: Any, repos: list[BenchRepo], timeout: float, *, want: dict[str, str] | None = None
) -> tuple[bool, dict[str, dict[str, Any]]]:
    """Poll until every repo's branch is at its wanted commit (default: newest) with nothing
    pending; returns (converged, last statuses)."""
    want = want or {r.id: r.newest for r in repos}
    deadline = time.monotonic() + timeout
    while True:
        statuses = {r.id: branch_status(client, r.id) for r in repos}
        done = all(
            s.get("commit") == want[rid] and not s.get("pending_commit")
            for rid, s in statuses.items()
        )
        if done or time.monotonic() > deadline:
            return done, statuses
        time.sleep(0.1)


def marker_found(client: Any, repo_id: str, marker: str) -> bool:
    body = {"query": marker, "repos": [repo_id], "branch": BRANCH, "k": 5, "mode": "lexical"}
    resp = client.post("/v1/search", json=body)
    return resp.status_code == 200 and any(marker in r["text"] for r in resp.json()["results"])


# --- the burst ------------------------------------------------------------------------------


@dataclass
class Delivery:
    repo: BenchRepo
    commit: int
    key: str
    kind: str  # "push" (first delivery), "duplicate" (same key again), "stale" (late push)


@dataclass
class _Plan:
    phase1: list[tuple[str, Any]]  # ("ref", (repo, commit)) or ("send", Delivery)
    phase2: list[Delivery]
    duplicates: int
    stale: int


def plan_burst(repos: list[BenchRepo], deliveries: int, stale_fraction: float, seed: int) -> _Plan:
    """Order the deliveries (see the module docstring); ``deliveries`` in all."""
    rng = random.Random(seed)
    commits = len(repos[0].shas) - 1
    firsts = {
        (r.id, i): Delivery(r, i, str(uuid.uuid4()), "push")  # fresh keys: Redis remembers
        for r in repos
        for i in range(1, commits + 1)
    }
    delayed: set[tuple[str, int]] = set()
    for r in repos:
        n = min(commits - 1, round(stale_fraction * commits))
        delayed |= {(r.id, i) for i in rng.sample(range(1, commits), n)}
    for k in delayed:
        firsts[k].kind = "stale"
    phase1: list[tuple[str, Any]] = []
    for i in range(1, commits + 1):
        for r in rng.sample(repos, len(repos)):
            phase1.append(("ref", (r, i)))
            if (r.id, i) not in delayed:
                phase1.append(("send", firsts[(r.id, i)]))
    phase2 = [firsts[k] for k in sorted(delayed)]
    dups = deliveries - len(firsts)
    if dups < 0:
        raise ValueError(f"{deliveries} deliveries cannot carry {len(firsts)} pushes")
    originals = list(firsts.values())
    for _ in range(dups):
        o = rng.choice(originals)
        dup = Delivery(o.repo, o.commit, o.key, "duplicate")
        if (o.repo.id, o.commit) in delayed or rng.random() < 0.3:
            phase2.append(dup)
        else:  # somewhere after its original
            at = next(j for j, (kind, v) in enumerate(phase1) if kind == "send" and v is o)
            phase1.insert(rng.randint(at + 1, len(phase1)), ("send", dup))
    rng.shuffle(phase2)
    return _Plan(phase1, phase2, dups, len(delayed))


async def _fire(
    base: str, plan: _Plan, concurrency: int
) -> tuple[list[dict[str, Any]], float, float]:
    """Send phase 1 then phase 2; returns one record per delivery, the start and end
    (``time.monotonic``)."""
    import httpx

    out: list[dict[str, Any]] = []
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(
        base_url=base, timeout=30, limits=limits, trust_env=False
    ) as client:

        async def send(d: Delivery, phase: int) -> None:
            before = d.repo.shas[d.commit - 1]
            headers = {
                "X-Gitlab-Event": "Push Hook",
                "X-Gitlab-Token": d.repo.secret,
                "Idempotency-Key": d.key,
                "X-Gitlab-Event-UUID": d.key,
                "User-Agent": "GitLab/17.9.0",
            }
            rec: dict[str, Any] = {"kind": d.kind, "repo": d.repo.id, "phase": phase}
            t0 = time.perf_counter()
            try:
                body = push_body(d.repo.id, before, d.repo.shas[d.commit])
                resp = await client.post("/v1/webhooks/gitlab", json=body, headers=headers)
                rec["status"] = resp.status_code
                with contextlib.suppress(ValueError):
                    rec["outcome"] = resp.json().get("status") or resp.json().get("error_code")
            except httpx.HTTPError as exc:
                rec["status"] = None
                rec["outcome"] = f"no answer: {type(exc).__name__}"
            finally:
                rec["ms"] = (time.perf_counter() - t0) * 1000
                out.append(rec)
                sem.release()

        tasks: list[asyncio.Task[None]] = []
        t_start = time.monotonic()
        for kind, v in plan.phase1:
            if kind == "ref":
                r, i = v
                set_head(r.bare, r.shas[i])
                continue
            await sem.acquire()
            tasks.append(asyncio.create_task(send(v, 1)))
        await asyncio.gather(*tasks)
        tasks = []
        for d in plan.phase2:
            await sem.acquire()
            tasks.append(asyncio.create_task(send(d, 2)))
        await asyncio.gather(*tasks)
        return out, t_start, time.monotonic()


def run_webhook_bench(
    target: Target,
    *,
    repos: int = 10,
    deliveries: int = 1000,
    duplicate_fraction: float = 0.2,
    stale_fraction: float = 0.1,
    concurrency: int = 64,
    files: int = 8,
    timeout: float = 600.0,
    seed: int = 7,
    work_dir: Path,
) -> dict[str, Any]:
    """Build the repos, run the burst against ``target``, return the report (a dict)."""
    import httpx

    commits = max(2, round(deliveries * (1 - duplicate_fraction) / repos))
    t0 = time.perf_counter()
    run_id = uuid.uuid4().hex[:6]  # a shared Redis / Qdrant keeps earlier runs' state
    bench_repos = [
        make_repo(
            work_dir / "remotes", f"bench/hooks{i}-{run_id}", files=files, commits=commits, seed=i
        )
        for i in range(repos)
    ]
    result: dict[str, Any] = {
        "mode": "distributed" if target.redis_url else "embedded",
        "cpu_count": os.cpu_count(),
        "repos": repos,
        "commits_per_repo": commits,
        "setup_seconds": round(time.perf_counter() - t0, 2),
    }
    plan = plan_burst(bench_repos, deliveries, stale_fraction, seed)
    with (
        serving(target, work_dir / "logs") as base,
        httpx.Client(base_url=base, timeout=30, trust_env=False) as client,
    ):
        t1 = time.perf_counter()
        register_repos(client, bench_repos)
        ok, _ = wait_converged(
            client, bench_repos, timeout, want={r.id: r.shas[0] for r in bench_repos}
        )
        if not ok:
            raise RuntimeError("the first index of the repositories did not finish")
        result["first_index_seconds"] = round(time.perf_counter() - t1, 2)
        before = {r.id: branch_status(client, r.id)["runs"] for r in bench_repos}
        result["loadavg_1m_before"] = round(os.getloadavg()[0], 2)

        records, started, answered = asyncio.run(_fire(base, plan, concurrency))
        converged, statuses = wait_converged(client, bench_repos, timeout)
        done = time.monotonic()
        found = {r.id: marker_found(client, r.id, r.markers[-1]) for r in bench_repos}
        result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)

    codes = Counter(str(r["status"]) for r in records)
    outcomes = Counter(str(r.get("outcome")) for r in records)
    accepted = outcomes.get("accepted", 0)
    runs = sum(statuses[r.id]["runs"] - before[r.id] for r in bench_repos)
    at_newest = {
        r.id: statuses[r.id].get("commit") == r.newest and found[r.id] for r in bench_repos
    }
    no_answer = sum(1 for r in records if r["status"] is None)
    server_errors = sum(1 for r in records if r["status"] is not None and r["status"] >= 500)
    result.update(
        {
            "deliveries": len(records),
            "duplicates_sent": plan.duplicates,
            "stale_sent": plan.stale,
            "concurrency": concurrency,
            "status_codes": dict(sorted(codes.items())),
            "outcomes": dict(sorted(outcomes.items())),
            "duplicates_detected": outcomes.get("duplicate", 0),
            "answer_latency": latency_summary([r["ms"] for r in records]),
            "burst_seconds": round(answered - started, 2),
            "deliveries_per_s": round(len(records) / (answered - started), 1),
            "accepted": accepted,
            "runs": runs,
            "deliveries_per_run": round(accepted / runs, 1) if runs else None,
            "converged": converged,
            "converge_seconds_from_first_delivery": round(done - started, 2),
            "converge_seconds_after_last_answer": round(done - answered, 2),
            "at_newest_commit": at_newest,
            "lost": no_answer + sum(1 for ok in at_newest.values() if not ok),
            "server_errors": server_errors,
            "no_answer": no_answer,
        }
    )
    result["ok"] = bool(converged and result["lost"] == 0 and server_errors == 0)
    return result


def bench_webhooks(
    repos: Annotated[int, typer.Option(help="Repositories (GitLab projects).")] = 10,
    deliveries: Annotated[int, typer.Option(help="Webhook deliveries in the burst.")] = 1000,
    duplicates: Annotated[
        float, typer.Option(help="Fraction of deliveries that re-send an earlier one.")
    ] = 0.2,
    stale: Annotated[
        float, typer.Option(help="Fraction of each repo's pushes delivered late (phase 2).")
    ] = 0.1,
    concurrency: Annotated[int, typer.Option(help="Deliveries in flight.")] = 64,
    redis: Annotated[
        str | None,
        typer.Option("--redis", help="Distributed mode: Redis URL (broker + coordination)."),
    ] = None,
    qdrant_url: Annotated[
        str | None,
        typer.Option(
            "--qdrant-url",
            help="Distributed mode: the Qdrant server the worker and "
            "API share (an Edge shard has one owner process).",
        ),
    ] = None,
    debounce: Annotated[
        float | None, typer.Option(help="Push debounce seconds (default: the setting).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for convergence.")] = 600,
) -> None:
    """A burst of push webhooks (duplicates, late deliveries) across repos: answer latency,
    runs folded, every repo at its newest commit (JSON; exit 1 if not)."""
    from coderag.settings import Settings

    if redis and not qdrant_url:
        typer.echo("--redis needs --qdrant-url: workers cannot share an Edge shard", err=True)
        raise typer.Exit(2)
    base = Settings()
    with tempfile.TemporaryDirectory(prefix="coderag-bench-webhooks-") as tmp:
        work = Path(tmp)
        target = Target(
            data_dir=work / "data",
            models_dir=base.models_dir,
            debounce=debounce,
            redis_url=redis,
            qdrant_url=qdrant_url,
        )
        result = run_webhook_bench(
            target,
            repos=repos,
            deliveries=deliveries,
            duplicate_fraction=duplicates,
            stale_fraction=stale,
            concurrency=concurrency,
            timeout=timeout,
            work_dir=work,
        )
    print(json.dumps(result, indent=2))
    if not result["ok"]:
        raise typer.Exit(1)
