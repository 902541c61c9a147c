"""Proof under faults, in distributed mode, on loopback with real processes.

The module runs the whole stack of ``tests/fault_support.py`` once (a private redis-server
with AOF, the Qdrant stand-in, a Celery worker process, the API under uvicorn); each test
registers its own repositories and breaks one part while work is in flight, then leaves the
part running again:

1. the index refuses writes for a while during a run;
2. the worker's git mirror of the repository is corrupted before a push;
3. the worker is SIGKILLed mid-index, then a new one is started;
4. Redis is restarted in the middle of a burst of webhooks to three repositories.

In every case the end state must equal a fresh index of the last pushed commit built with
``IndexService`` directly (same point ids and payloads, ``snapshot()``), and every webhook the
API answered 2xx must be reflected (the branch ends at the newest pushed commit). Each webhook
is delivered once, as GitLab does (it never re-sends on its own): during a Redis outage the API
must still answer 2xx, the delivery waiting in its spool until the broker is back.

Each test prints one ``FAULT-FIGURE {json}`` line (run with ``-s``) for docs/RELIABILITY.md.
``CODERAG_SOAK=1`` makes every scenario heavier (more files, more pushes, two Redis restarts,
an index outage longer than the task's retries, so the orphan sweep must finish the job).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from indexer.git import GitRepo
from tests.fault_support import FaultStack, corrupt, fault_stack, fresh_snapshot, wait_for

pytestmark = pytest.mark.integration

SOAK = os.environ.get("CODERAG_SOAK") == "1"
REPO_RO = "banking/readonly"
REPO_GIT = "banking/mirror"
REPO_KILL = "banking/killed"
WORDS = [
    "ledger",
    "settlement",
    "invoice",
    "payment",
    "refund",
    "account",
    "balance",
    "transfer",
    "clearing",
    "statement",
    "currency",
    "rate",
    "batch",
    "reconcile",
    "audit",
    "journal",
    "posting",
    "fee",
    "interest",
    "limit",
    "mandate",
]


def module(i: int, tag: str) -> str:
    """A small Python module with distinct, realistic-looking functions."""
    rnd = random.Random(f"{tag}-{i}")
    parts = [f'"""{tag.title()} module {i}: {" ".join(rnd.sample(WORDS, 4))}."""\n']
    for j in range(4):
        a, b, c = rnd.sample(WORDS, 3)
        parts.append(
            f"\n\ndef {a}_{b}_{tag}_{i}_{j}(items, {c}=None):\n"
            f'    """Compute the {a} {b} of {c} for module {i}, step {j}."""\n'
            f"    total = 0\n"
            f"    for item in items:\n"
            f"        if item.get({c!r}) == {c}:\n"
            f"            total += item[{a!r}] * {rnd.randint(2, 97)}\n"
            f"    return total - {rnd.randint(0, 999)}\n"
        )
    return "".join(parts)


def modules(n: int, tag: str) -> dict[str, str | None]:
    return {f"src/{tag}/m{i:03d}.py": module(i, tag) for i in range(n)}


def start(st: FaultStack, repo: str, n: int = 3) -> str:
    """Register ``repo`` with ``n`` modules and wait for its first full index."""
    sha = st.add_repo(repo, {"README.md": f"# {repo}\n", **modules(n, "base")})
    wait_for(lambda: st.settled(repo, sha), 180, f"the first index of {repo}", st.worker_log)
    return sha


def assert_equals_fresh(
    st: FaultStack, embedder: Any, tmp: Path, heads: dict[str, str]
) -> dict[str, int]:
    """The index equals a fresh one of each repo's last pushed commit; returns point counts."""
    want = fresh_snapshot(
        embedder, tmp / "fresh", {r: (st.remotes[r].work, sha) for r, sha in heads.items()}
    )
    counts = {}
    for repo, sha in heads.items():
        assert st.branch(repo)["commit"] == sha
        got = st.snapshot(repo)
        assert set(got) == set(want[repo]), f"{repo}: point ids differ from a fresh index"
        assert got == want[repo], f"{repo}: payloads differ from a fresh index"
        counts[repo] = len(got)
    return counts


def figure(**data: Any) -> None:
    print("\nFAULT-FIGURE " + json.dumps(data, sort_keys=True))


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, embedder: Any
) -> Iterator[FaultStack]:
    """One stack for the four scenarios (a worker boot costs many seconds on 2 cores), on a
    private redis-server with AOF as in docker/compose.yaml. Each test uses its own repos and
    leaves every part running again; the Redis restart test runs last in file order."""
    with fault_stack(tmp_path_factory.mktemp("faults"), model_dir, embedder, aof=True) as st:
        yield st


# ----------------------------------------------------------------------------- 1. index
def test_index_unwritable_for_a_while_then_the_run_converges(
    stack: FaultStack, tmp_path: Path, embedder: Any
):
    # Default: 6 s, inside the task's own retries (1 + 2 + 4 s backoff). Soak: 45 s, longer
    # than all five retries, so the orphan sweep has to pick the push up again.
    window = 45.0 if SOAK else 6.0
    st = stack
    mark = st.log_mark()
    base = start(st, REPO_RO)
    remote = st.remotes[REPO_RO]
    sha = remote.commit({**modules(30, "fx"), "src/base/m000.py": None}, "fx")
    remote.push("main")
    fault = st.standin()
    # The window opens now and closes ``window`` seconds after the run's first write met
    # it, however long the run took to reach its writes on a loaded machine.
    fault.refuse_writes(window + 600)
    t0 = time.perf_counter()
    resp = st.push_hook(REPO_RO, base, sha)
    assert resp.status_code == 202, resp.text
    wait_for(lambda: fault.refused_writes() >= 1, 300, "a write in the window", st.worker_log)
    time.sleep(window)
    refused = fault.refused_writes()
    fault.refuse_writes(0)  # disk writable again
    wait_for(lambda: st.settled(REPO_RO, sha), window + 120, "convergence", st.worker_log)
    converged_s = time.perf_counter() - t0
    retries = st.log_count(mark, "retrying coderag.index_branch")
    assert refused >= 1, "no write met the read-only window"
    assert retries >= 1
    assert converged_s >= window * 0.8  # it could not have finished inside the window
    counts = assert_equals_fresh(st, embedder, tmp_path, {REPO_RO: sha})
    figure(
        fault="index_unwritable",
        window_s=window,
        refused_writes=refused,
        task_retries=retries,
        sweeps_rescheduled=st.log_count(mark, "re-scheduled orphaned pushes"),
        points=counts[REPO_RO],
        equals_fresh=True,
        accepted=1,
        reflected=1,
        push_to_converged_s=round(converged_s, 1),
    )


# ----------------------------------------------------------------------------- 2. mirror
def test_corrupt_mirror_is_recloned_and_the_push_indexed(
    stack: FaultStack, tmp_path: Path, embedder: Any
):
    st = stack
    mark = st.log_mark()
    base = start(st, REPO_GIT, n=6)
    mirror = st.mirror(REPO_GIT)
    damaged = corrupt(mirror)
    assert not GitRepo(mirror).is_sound()
    remote = st.remotes[REPO_GIT]
    sha = remote.commit({**modules(5, "cards"), "src/base/m001.py": None}, "cards")
    remote.push("main")
    assert GitRepo(remote.bare).is_sound(), "the corruption leaked into the remote"
    t0 = time.perf_counter()
    resp = st.push_hook(REPO_GIT, base, sha)
    assert resp.status_code == 202, resp.text
    wait_for(lambda: st.settled(REPO_GIT, sha), 90, "convergence", st.worker_log)
    converged_s = time.perf_counter() - t0
    assert GitRepo(mirror).is_sound()
    recloned = st.log_count(mark, "cloning it again")
    assert recloned >= 1
    counts = assert_equals_fresh(st, embedder, tmp_path, {REPO_GIT: sha})
    if SOAK:  # and once more, with the refs gone as well
        base, sha = sha, remote.commit(modules(40, "soak"), "soak")
        remote.push("main")
        corrupt(mirror)
        for ref in (mirror / "refs" / "heads").glob("*"):
            ref.unlink()
        (mirror / "packed-refs").unlink(missing_ok=True)
        assert st.push_hook(REPO_GIT, base, sha).status_code == 202
        wait_for(lambda: st.settled(REPO_GIT, sha), 120, "soak convergence", st.worker_log)
        counts = assert_equals_fresh(st, embedder, tmp_path / "soak", {REPO_GIT: sha})
    figure(
        fault="corrupt_mirror",
        objects_damaged=damaged,
        reclones=recloned,
        points=counts[REPO_GIT],
        equals_fresh=True,
        accepted=1,
        reflected=1,
        push_to_converged_s=round(converged_s, 1),
    )


# ----------------------------------------------------------------------------- 3. worker
def test_worker_sigkilled_mid_index_then_restarted_converges(
    stack: FaultStack, tmp_path: Path, embedder: Any
):
    n_files = 400 if SOAK else 100
    st = stack
    mark = st.log_mark()
    base = start(st, REPO_KILL)
    remote = st.remotes[REPO_KILL]
    big = remote.commit(modules(n_files, "ledger"), f"{n_files} modules")
    remote.push("main")
    resp = st.push_hook(REPO_KILL, base, big)
    assert resp.status_code == 202, resp.text
    wait_for(lambda: st.locked(REPO_KILL), 30, "the run to start", st.worker_log)
    time.sleep(1.5)  # well into chunking and embedding
    assert st.branch(REPO_KILL)["commit"] == base, "the run finished before the kill"
    st.kill_worker()
    assert st.locked(REPO_KILL), "the killed run's lock should outlive it (until its TTL)"
    t0 = time.perf_counter()
    st.start_worker()
    wait_for(lambda: st.settled(REPO_KILL, big), 180, "convergence after the kill", st.worker_log)
    recovered_s = time.perf_counter() - t0
    # The killed task's message waits in the broker's unacked set for the visibility
    # timeout (an hour): the orphan sweep is what ran the push again.
    swept = st.log_count(mark, "re-scheduled orphaned pushes")
    assert swept >= 1
    counts = assert_equals_fresh(st, embedder, tmp_path, {REPO_KILL: big})
    figure(
        fault="sigkill_worker_mid_index",
        files=n_files,
        points=counts[REPO_KILL],
        equals_fresh=True,
        accepted=1,
        reflected=1,
        sweeps_rescheduled=swept,
        restart_to_converged_s=round(recovered_s, 1),
    )


# ----------------------------------------------------------------------------- 4. redis
class Burst:
    """Pushes of successive commits to several repos, one sender thread per repo, each
    delivery sent once, as GitLab does: no answer is retried."""

    def __init__(self, st: FaultStack, shas: dict[str, list[str]], base: dict[str, str]):
        self.st = st
        self.shas = shas
        self.base = base
        self.mu = threading.Lock()
        self.sent = 0
        self.answers: list[tuple[str, str, int, dict[str, Any]]] = []  # one per delivery
        self.errors: list[BaseException] = []

    def _deliver(self, http: httpx.Client, repo: str, before: str, after: str) -> None:
        try:
            resp = self.st.push_hook(repo, before, after, key=str(uuid.uuid4()), http=http)
            status, body = resp.status_code, resp.json()
        except httpx.TransportError as exc:
            status, body = 599, {"error": repr(exc)}  # no answer: GitLab logs a failure
        with self.mu:
            self.answers.append((repo, after, status, body))
            self.sent += 1

    def _sender(self, repo: str) -> None:
        try:
            with httpx.Client(base_url=str(self.st.http.base_url), timeout=30) as http:
                prev = self.base[repo]
                for sha in self.shas[repo]:
                    self.st.remotes[repo].set_ref("main", sha)
                    self._deliver(http, repo, prev, sha)
                    prev = sha
        except BaseException as exc:  # re-raised in the test thread
            self.errors.append(exc)

    def run(self, fault: Any, at: int) -> None:
        threads = [threading.Thread(target=self._sender, args=(r,), daemon=True) for r in self.shas]
        for t in threads:
            t.start()
        wait_for(lambda: self.sent >= at or self.errors, 120, "the burst to get going")
        fault()
        for t in threads:
            t.join(timeout=180)
        if self.errors:
            raise self.errors[0]


def test_redis_restart_during_a_webhook_burst_loses_no_accepted_webhook(
    stack: FaultStack, tmp_path: Path, embedder: Any
):
    repos = ["banking/ledger", "banking/fx", "banking/cards"]
    per_repo = 50 if SOAK else 17
    restarts = 2 if SOAK else 1
    # AOF as in docker/compose.yaml: without it a restart forgets every pending push.
    st = stack
    mark = st.log_mark()
    base = {r: st.add_repo(r, {"README.md": f"# {r}\n", **modules(2, "base")}) for r in repos}
    for r in repos:
        wait_for(lambda r=r: st.settled(r, base[r]), 180, "first index", st.worker_log)
    shas: dict[str, list[str]] = {}
    for r in repos:
        remote = st.remotes[r]
        shas[r] = [
            remote.commit(
                {f"src/{r.split('/')[1]}/step{i % 5}.py": module(i, f"s{i % 5}")},
                f"push {i}",
            )
            for i in range(per_repo)
        ]
        remote.upload()
    burst = Burst(st, shas, base)
    outages: list[float] = []

    def restart_redis() -> None:
        for n in range(restarts):
            if n:
                time.sleep(2.0)
            t0 = time.perf_counter()
            st.redis_server.stop()  # SIGTERM, as `docker restart` does
            time.sleep(1.5)
            st.redis_server.start()
            outages.append(time.perf_counter() - t0)

    burst.run(restart_redis, at=len(repos) * per_repo // 3)
    heads = {r: shas[r][-1] for r in repos}
    for r in repos:
        wait_for(lambda r=r: st.settled(r, heads[r]), 180, f"{r} to converge", st.worker_log)
    counts = assert_equals_fresh(st, embedder, tmp_path, heads)
    failed = [(r, sha[:8], s) for r, sha, s, _ in burst.answers if not 200 <= s < 300]
    spooled = sum(1 for *_, body in burst.answers if body.get("queued") is False)
    assert len(burst.answers) == len(repos) * per_repo
    assert failed == [], f"non-2xx answers during the Redis restart: {failed}"
    assert all(body.get("status") == "accepted" for *_, body in burst.answers)
    assert spooled >= 1, "no webhook met the outage: the fault was not exercised"
    spool = st.app.state.webhook_spool.stats()
    assert spool.pending == 0 and spool.failed == 0, spool  # every delivery reached the queue
    figure(
        fault="redis_restart_during_burst",
        webhooks=len(repos) * per_repo,
        answered_non_2xx=len(failed),
        accepted_2xx=len(burst.answers) - len(failed),
        spooled_while_broker_down=spooled,
        reflected_repos=len(heads),
        points=counts,
        equals_fresh=True,
        outage_s=[round(o, 1) for o in outages],
        worker_retries=st.log_count(mark, "retrying coderag."),
        sweeps_rescheduled=st.log_count(mark, "re-scheduled orphaned pushes"),
    )
