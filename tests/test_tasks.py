"""The jobs behind the tasks, run by the embedded executor (the default mode) on a real
runtime: the bundled model, an Edge index on disk, git repositories built by the test.

What ``test_webhooks_e2e.py`` proves for Celery worker processes, this proves for the
in-process executor, plus the failure paths (retries, permanent errors, a busy branch).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coderag.errors import GitError
from coderag.index import SearchFilter
from coderag.repos import RepoRecord, RepoRegistry, hash_secret
from coderag.runtime import Runtime, build_runtime
from coderag.settings import Settings
from indexer.jobs import BranchBusy, JobContext, run_branch
from indexer.mirrors import mirror_for_url
from indexer.queue import EmbeddedDispatcher, RedisCoordinator
from tests.ingest_support import NULL_SHA, Remote, snapshot

pytestmark = pytest.mark.integration

RATES_PY = '''def convert_currency(amount, rate):
    """Convert an amount of money from one currency to another at the given rate."""
    return amount * rate
'''
ROUND_PY = '''def round_half_even(value, digits):
    """Round a decimal amount with banker's rounding."""
    return round(value, digits)
'''


def _runtime(tmp_path: Path, embedder: Any, name: str = "data", **kw: Any) -> Runtime:
    settings = Settings(data_dir=tmp_path / name, index_backend="edge", **kw)
    rt = build_runtime(settings)
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    rt.warm_up()  # as the app's lifespan and a worker's init do before any task
    return rt


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[Runtime]:
    """One runtime for the module (opening an Edge shard costs ~1 s); each test has its own
    repository id, so tests never see each other's points."""
    runtime = _runtime(tmp_path_factory.mktemp("tasks"), embedder)
    yield runtime
    runtime.close()


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    return "grp/" + request.node.name.removeprefix("test_")[:60]


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    r = Remote(tmp_path / "git")
    r.commit({"src/rates.py": RATES_PY}, "initial")
    r.push("main")
    return r


@pytest.fixture
def registry(rt: Runtime, remote: Remote, repo: str) -> RepoRegistry:
    reg = RepoRegistry(rt.index)
    reg.put(
        RepoRecord(
            id=repo,
            url=str(remote.bare),
            branches=["main", "release/*"],
            secret_hash=hash_secret("x" * 32),
        )
    )
    return reg


def _runs(registry: RepoRegistry, repo: str, branch: str) -> int:
    return int((registry.branch_runs(repo).get(f"run/{repo}/{branch}") or {}).get("runs", 0))


def test_push_index_search_and_branch_delete(
    rt: Runtime, remote: Remote, registry: RepoRegistry, repo: str
):
    d = EmbeddedDispatcher(rt, registry=registry, debounce=0.05)
    try:
        head = remote.push("main")
        tid = d.submit_push(repo, "main", head, time.time())
        assert d.wait_idle(60)
        assert d.task_status(tid)["state"] == "SUCCESS"
        hit = rt.retriever.search("convert money between currencies", repos=[repo], k=1)[0]
        assert hit.symbol == "convert_currency"

        remote.checkout("release/1", create=True)
        sha = remote.commit({"src/rounding.py": ROUND_PY}, "rounding")
        remote.push("release/1")
        d.submit_push(repo, "release/1", sha, time.time())
        assert d.wait_idle(60)
        assert rt.index.count(SearchFilter(repos=[repo], branch="release/1")) == 2
        run = registry.require(repo).last_run
        assert run is not None and run["branch"] == "release/1" and run["lag_seconds"] >= 0

        d.submit_delete_branch(repo, "release/1", time.time())
        assert d.wait_idle(60)
        assert rt.index.count(SearchFilter(repos=[repo], branch="release/1")) == 0
        assert rt.index.count(SearchFilter(repos=[repo])) == 1  # main's chunk stays
        assert rt.indexer.indexed_commit(repo, "release/1") is None
    finally:
        d.close()


def test_twenty_pushes_fold_and_equal_a_fresh_index(
    rt: Runtime, remote: Remote, registry: RepoRegistry, repo: str, tmp_path: Path, embedder: Any
):
    d = EmbeddedDispatcher(rt, registry=registry, debounce=0.3)
    try:
        shas = [
            remote.commit({"src/rates.py": RATES_PY + f"\n\ndef fee_{i}():\n    return {i}\n"})
            for i in range(20)
        ]
        remote.upload()
        ids = set()
        for sha in shas:
            remote.set_ref("main", sha)
            ids.add(d.submit_push(repo, "main", sha, time.time()))
        assert len(ids) == 1  # one scheduled run took every push
        assert d.wait_idle(60)
        assert _runs(registry, repo, "main") <= 2
        assert rt.indexer.indexed_commit(repo, "main") == shas[-1]
        fresh = _runtime(tmp_path, embedder, "fresh")
        try:
            fresh.indexer.index(remote.work, repo, "main", shas[-1])
            assert snapshot(rt.index, repo) == snapshot(fresh.index, repo)
        finally:
            fresh.close()
    finally:
        d.close()


def test_transient_fetch_errors_are_retried(
    rt: Runtime, remote: Remote, registry: RepoRegistry, repo: str
):
    calls = {"n": 0}

    def flaky_fetch(rec: RepoRecord) -> Path:
        calls["n"] += 1
        if calls["n"] == 1:
            raise GitError("git fetch failed: Connection timed out")
        return mirror_for_url(rec.url, rt.settings)

    d = EmbeddedDispatcher(rt, registry=registry, debounce=0.0, fetch=flaky_fetch)
    try:
        head = remote.push("main")
        tid = d.submit_push(repo, "main", head, time.time())
        assert d.wait_idle(60)
        assert calls["n"] == 2 and d.task_status(tid)["state"] == "SUCCESS"
        assert rt.indexer.indexed_commit(repo, "main") == head
    finally:
        d.close()


def test_a_vanished_commit_is_recorded_and_the_next_push_still_runs(
    rt: Runtime, remote: Remote, registry: RepoRegistry, repo: str
):
    d = EmbeddedDispatcher(rt, registry=registry, debounce=0.0)
    try:
        d.submit_push(repo, "main", "f" * 40, time.time())  # force-pushed away meanwhile
        assert d.wait_idle(60)
        rec = registry.require(repo)
        assert rec.last_error and "not_found" in rec.last_error
        head = remote.push("main")
        d.submit_push(repo, "main", head, time.time())
        assert d.wait_idle(60)
        assert registry.require(repo).last_error is None
        assert rt.indexer.indexed_commit(repo, "main") == head
    finally:
        d.close()


def test_reindex_and_remove(rt: Runtime, remote: Remote, registry: RepoRegistry, repo: str):
    d = EmbeddedDispatcher(rt, registry=registry, debounce=0.0)
    try:
        remote.checkout("release/2", create=True)
        remote.commit({"src/rounding.py": ROUND_PY})
        remote.push("release/2")
        remote.checkout("feature/x", create=True)
        remote.push("feature/x")  # matches no pattern: not indexed
        d.submit_reindex(repo)
        assert d.wait_idle(60)
        states = rt.index.list_state(f"branch/{repo}/")
        assert sorted(s["branch"] for s in states.values()) == ["main", "release/2"]
        assert {r["mode"] for r in registry.branch_runs(repo).values()} == {"full"}

        d.submit_remove(repo)
        assert d.wait_idle(60)
        assert rt.index.count(SearchFilter(repos=[repo])) == 0
        assert registry.get(repo) is None and rt.index.list_state(f"branch/{repo}/") == {}
        # a push for a removed repo is dropped, not indexed
        d.submit_push(repo, "main", remote.push("main"), time.time())
        assert d.wait_idle(60)
        assert rt.index.count(SearchFilter(repos=[repo])) == 0
    finally:
        d.close()


def test_a_removal_overtaken_by_a_new_registration_is_superseded(
    rt: Runtime, remote: Remote, registry: RepoRegistry, repo: str
):
    """DELETE forgets the record at once and queues the removal; when the project is
    registered again before the task runs, the task must not wipe the new registration."""
    d = EmbeddedDispatcher(rt, registry=registry, debounce=0.05)
    try:
        d.submit_push(repo, "main", remote.push("main"), time.time())
        assert d.wait_idle(60)
        requested_at = time.time()
        old = registry.require(repo)
        registry.delete(repo)  # what the API does when it accepts the DELETE
        time.sleep(0.01)
        registry.put(old.model_copy(update={"created_at": time.time()}))  # registered again
        time.sleep(0.01)
        tid = d.submit_remove(repo, requested_at)
        assert d.wait_idle(60)
        assert d.task_status(tid)["result"]["superseded"] is True
        assert registry.get(repo) is not None
        assert rt.index.count(SearchFilter(repos=[repo])) > 0

        tid = d.submit_remove(repo, time.time())  # a removal asked for after it: goes ahead
        assert d.wait_idle(60)
        assert "superseded" not in d.task_status(tid)["result"]
        assert registry.get(repo) is None and rt.index.count(SearchFilter(repos=[repo])) == 0
    finally:
        d.close()


def test_one_run_per_branch_across_workers(
    rt: Runtime, remote: Remote, registry: RepoRegistry, repo: str
):
    """Two workers (threads here, sharing a Redis coordinator) get the same branch: one runs,
    the other is told the branch is busy (its task re-enqueues itself)."""
    import redis

    from tests.redis_support import redis_url

    r = redis.Redis.from_url(redis_url(12))
    r.flushdb()
    entered, release = threading.Event(), threading.Event()

    def slow_fetch(rec: RepoRecord) -> Path:
        entered.set()
        release.wait(10)
        return mirror_for_url(rec.url, rt.settings)

    ctx = JobContext(
        rt,
        registry,
        RedisCoordinator(r),
        scheduler=None,  # type: ignore[arg-type]
        fetch=slow_fetch,
    )
    ctx.coordinator.record(repo, "main", remote.push("main"), time.time())
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(first=run_branch(ctx, repo, "main")))
    t.start()
    try:
        assert entered.wait(10)
        with pytest.raises(BranchBusy):
            run_branch(ctx, repo, "main")
        run_branch(ctx, repo, "other-branch")  # other branches are not blocked
    finally:
        release.set()
        t.join(30)
        r.flushdb()
        r.close()
    assert len(out["first"]["runs"]) == 1


def test_deleting_a_never_indexed_branch_is_harmless(
    rt: Runtime, remote: Remote, registry: RepoRegistry, repo: str
):
    d = EmbeddedDispatcher(rt, registry=registry, debounce=0.0)
    try:
        d.submit_push(repo, "release/9", NULL_SHA, time.time())
        assert d.wait_idle(30)
        run = registry.branch_runs(repo)[f"run/{repo}/release/9"]
        assert run["action"] == "delete" and run["error"] is None
    finally:
        d.close()
