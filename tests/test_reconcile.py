"""Reconciliation on real git remotes (``tests/ingest_support.Remote``), the embedded
executor and an Edge index: what no webhook announced is scheduled by the pass, what is gone
is removed, and an unreachable remote changes nothing. The cross-process lock of the
distributed mode runs against the suite's real Redis."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coderag.freshness import LOCK_KEY, Freshness, reconcile_one, run_pass
from coderag.index import SearchFilter
from coderag.index.edge import EdgeIndex
from coderag.repos import RepoRecord, RepoRegistry, hash_secret
from coderag.runtime import Runtime, build_runtime
from coderag.settings import Settings
from coderag.status import (
    commits_behind,
    reconcile_state_key,
    reconcile_states,
    repo_status,
)
from indexer.queue import EmbeddedDispatcher
from indexer.reconcile import reconcile_repo, remote_heads
from tests.ingest_support import NULL_SHA, Remote
from tests.redis_support import redis_url
from tests.standin import free_port

pytestmark = pytest.mark.integration

REDIS_DB = 13
"""This module's own database of the suite's Redis (flushed by its tests)."""

REPO = "grp/reconciled"
RATES_PY = '''def convert_currency(amount, rate):
    """Convert an amount of money from one currency to another at the given rate."""
    return amount * rate
'''


def _fee(i: int) -> str:
    doc = f'"""Fee rule {i} of the tariff."""'
    return f"def fee_rule_{i}(amount):\n    {doc}\n    return amount * {i}\n"


@pytest.fixture
def rt(tmp_path: Path, embedder: Any) -> Iterator[Runtime]:
    settings = Settings(data_dir=tmp_path / "data", index_backend="edge", log_json=False)
    runtime = build_runtime(settings)
    runtime.embedder = runtime.indexer.embedder = runtime.retriever.embedder = embedder
    runtime.warm_up()
    yield runtime
    runtime.close()


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    r = Remote(tmp_path / "git")
    r.commit({"src/rates.py": RATES_PY}, "initial")
    r.push("main")
    return r


@pytest.fixture
def registry(rt: Runtime, remote: Remote) -> RepoRegistry:
    reg = RepoRegistry(rt.index)
    reg.put(
        RepoRecord(
            id=REPO,
            url=str(remote.bare),
            branches=["main", "release/*"],
            secret_hash=hash_secret("x" * 32),
        )
    )
    return reg


@pytest.fixture
def disp(rt: Runtime, registry: RepoRegistry) -> Iterator[EmbeddedDispatcher]:
    d = EmbeddedDispatcher(rt, registry=registry, debounce=0.0)
    yield d
    d.close()


def _index(d: EmbeddedDispatcher, branch: str, sha: str) -> None:
    d.submit_push(REPO, branch, sha, time.time())
    assert d.wait_idle(60)


def _pass(rt: Runtime, d: EmbeddedDispatcher, registry: RepoRegistry) -> dict[str, Any]:
    state = reconcile_one(rt.settings, rt.index, d, registry.require(REPO))
    assert d.wait_idle(120)
    return state


def test_remote_heads_lists_every_branch(remote: Remote, rt: Runtime):
    main = remote.push("main")
    remote.checkout("feature/x", create=True)
    feat = remote.commit({"src/x.py": _fee(1)})
    remote.push("feature/x")
    assert remote_heads(str(remote.bare), rt.settings) == {"main": main, "feature/x": feat}


def test_a_branch_behind_is_scheduled(
    rt: Runtime, remote: Remote, registry: RepoRegistry, disp: EmbeddedDispatcher
):
    first = remote.push("main")
    _index(disp, "main", first)
    head = remote.commit({"src/fees.py": _fee(7)}, "fees")
    remote.push("main")  # no webhook: a missed delivery

    state = _pass(rt, disp, registry)
    assert state["scheduled"] == {"main": head} and state["removed"] == []
    assert state["error"] is None and state["ok_at"] == state["at"]
    assert rt.indexer.indexed_commit(REPO, "main") == head
    hit = rt.retriever.search("fee rule 7 of the tariff", repos=[REPO], k=1)[0]
    assert hit.symbol == "fee_rule_7"

    again = _pass(rt, disp, registry)  # up to date now: nothing to do
    assert again["scheduled"] == {} and again["scheduled_total"] == 1

    st = repo_status(rt.index, registry, disp, REPO)
    assert st is not None
    main = next(b for b in st["branches"] if b["branch"] == "main")
    assert main["gitlab_head"] == head and main["commit"] == head
    assert main["lag_commits"] == 0 and main["lag_seconds"] == 0.0
    assert main["last_reconciled_at"] == again["ok_at"] == st["last_reconciled_at"]
    assert st["reconcile_error"] is None and st["hook"] is None  # no GitLab hook here


def test_lag_commits_are_counted_in_the_mirror(
    rt: Runtime, remote: Remote, registry: RepoRegistry, disp: EmbeddedDispatcher
):
    first = remote.push("main")
    _index(disp, "main", first)
    for i in range(3):
        remote.commit({f"src/f{i}.py": _fee(i)})
    head = remote.push("main")
    # The pass found the branch behind, and a run's fetch brought the commits into the
    # mirror, but the run has not indexed them yet: three commits behind.
    state = reconcile_one(rt.settings, rt.index, _NoSubmit(), registry.require(REPO))
    from indexer.mirrors import mirror_for_url

    mirror_for_url(str(remote.bare), rt.settings)
    assert state["mirror"] and commits_behind(state["mirror"], first, head) == 3
    st = repo_status(rt.index, registry, None, REPO)
    assert st is not None
    main = next(b for b in st["branches"] if b["branch"] == "main")
    assert (main["commit"], main["gitlab_head"], main["lag_commits"]) == (first, head, 3)
    assert commits_behind(state["mirror"], first, "f" * 40) is None  # not in the mirror
    assert commits_behind(None, first, head) is None


class _NoSubmit:
    """A dispatcher that accepts and forgets: the pass's view without running anything."""

    coordinator = None

    def submit_push(self, *args: Any, **kw: Any) -> str:
        return "task"


def test_a_deleted_branch_is_removed(
    rt: Runtime, remote: Remote, registry: RepoRegistry, disp: EmbeddedDispatcher
):
    _index(disp, "main", remote.push("main"))
    remote.checkout("release/1", create=True)
    rel = remote.commit({"src/fees.py": _fee(3)})
    _index(disp, "release/1", remote.push("release/1"))
    assert rt.indexer.indexed_commit(REPO, "release/1") == rel
    remote.delete_branch("release/1")  # deleted on GitLab, its hook lost

    state = _pass(rt, disp, registry)
    assert state["removed"] == ["release/1"] and state["scheduled"] == {}
    assert "release/1" not in state["heads"]
    assert rt.indexer.indexed_commit(REPO, "release/1") is None
    assert rt.index.count(SearchFilter(repos=[REPO], branch="release/1")) == 0
    assert rt.index.count(SearchFilter(repos=[REPO], branch="main")) == 1  # untouched


def test_an_unreachable_remote_schedules_and_deletes_nothing(
    rt: Runtime, remote: Remote, registry: RepoRegistry, disp: EmbeddedDispatcher
):
    _index(disp, "main", remote.push("main"))
    good = _pass(rt, disp, registry)
    rec = registry.require(REPO)
    # GitLab is down: nothing listens on the clone URL's port.
    registry.put(rec.model_copy(update={"url": f"http://127.0.0.1:{free_port()}/grp/x.git"}))
    before = rt.index.count(SearchFilter(repos=[REPO]))

    state = _pass(rt, disp, registry)
    assert state["ok"] is False and state["error"]
    assert state["scheduled"] == {} and state["removed"] == []
    assert state["heads"] == good["heads"]  # the last listing that worked, kept
    assert state["ok_at"] == good["ok_at"]  # the last success, not this attempt
    assert rt.index.count(SearchFilter(repos=[REPO])) == before
    assert rt.indexer.indexed_commit(REPO, "main") is not None
    st = repo_status(rt.index, registry, disp, REPO)
    assert st is not None and st["reconcile_error"] == state["error"]


def test_an_empty_listing_removes_nothing(
    rt: Runtime, remote: Remote, registry: RepoRegistry, disp: EmbeddedDispatcher
):
    _index(disp, "main", remote.push("main"))
    remote.delete_branch("main")
    result = reconcile_repo(
        registry.require(REPO), index=rt.index, dispatcher=disp, settings=rt.settings
    )
    assert result.ok is False and "no branch" in (result.error or "")
    assert result.removed == [] and rt.indexer.indexed_commit(REPO, "main") is not None


def test_a_pending_branch_is_not_resubmitted(
    rt: Runtime, remote: Remote, registry: RepoRegistry, disp: EmbeddedDispatcher
):
    head = remote.push("main")
    disp.coordinator.record(REPO, "main", head, time.time())  # a push on its way
    result = reconcile_repo(
        registry.require(REPO), index=rt.index, dispatcher=disp, settings=rt.settings
    )
    assert result.pending == ["main"] and result.scheduled == {}
    assert disp.coordinator.pending(REPO, "main").pushes == 1  # not recorded again


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    out = subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=env
    )
    return out.stdout.strip()


def test_a_multi_ref_push_is_fully_indexed_after_one_pass(
    rt: Runtime, remote: Remote, registry: RepoRegistry, disp: EmbeddedDispatcher
):
    _index(disp, "main", remote.push("main"))
    heads = {}
    for i in range(1, 5):
        remote.checkout(f"release/{i}", create=True)
        heads[f"release/{i}"] = remote.commit({f"src/fee_{i}.py": _fee(i)}, f"release {i}")
        remote.checkout("main")
    heads["main"] = remote.commit({"src/fee_main.py": _fee(9)}, "main moves too")
    # One push of five branches: GitLab fires no push hook for more than 3 refs at once
    # (push_event_hooks_limit), so nothing announces any of them.
    _git(remote.work, "push", "-q", "origin", *(f"{b}:refs/heads/{b}" for b in sorted(heads)))

    state = run_pass(rt.settings, rt.index, disp)[REPO]
    assert disp.wait_idle(180)
    assert state["scheduled"] == heads
    for branch, sha in heads.items():
        assert rt.indexer.indexed_commit(REPO, branch) == sha, branch
    for i in range(1, 5):
        assert rt.index.count(SearchFilter(repos=[REPO], branch=f"release/{i}")) == 2


def test_unregistered_repos_lose_their_reconcile_record(
    rt: Runtime, remote: Remote, registry: RepoRegistry, disp: EmbeddedDispatcher
):
    run_pass(rt.settings, rt.index, disp)
    assert REPO in reconcile_states(rt.index)
    registry.delete(REPO)
    run_pass(rt.settings, rt.index, disp)
    assert rt.index.get_state(reconcile_state_key(REPO)) is None


def test_one_worker_runs_each_interval_pass(tmp_path: Path):
    """Several workers, one Redis: the lock of one interval lets one of them run the pass."""
    import redis

    client = redis.Redis.from_url(redis_url(REDIS_DB))
    client.flushdb()
    index = EdgeIndex(tmp_path / "index")
    settings = Settings(data_dir=tmp_path / "data", reconcile_interval_seconds=30)
    try:
        workers = [Freshness(settings, index, _NoSubmit(), redis=client) for _ in range(3)]
        outcomes = [w.run_once() for w in workers]
        assert sum(o is not None for o in outcomes) == 1
        assert 0 < client.pttl(LOCK_KEY) <= 30_000
        assert workers[1].run_once(force=True) == {}  # a forced pass ignores the lock
        client.delete(LOCK_KEY)  # the interval is over
        assert workers[2].run_once() == {}
    finally:
        client.flushdb()
        client.close()
        index.close()


def test_the_driver_runs_a_pass_every_interval(tmp_path: Path, remote: Remote):
    """``reconcile_interval_seconds`` is all a test needs to get passes quickly."""
    index = EdgeIndex(tmp_path / "index")
    settings = Settings(data_dir=tmp_path / "data", reconcile_interval_seconds=0.2)
    RepoRegistry(index).put(
        RepoRecord(id=REPO, url=str(remote.bare), secret_hash=hash_secret("y" * 32))
    )
    sink = _Recorder()
    driver = Freshness(settings, index, sink).start()
    try:
        deadline = time.monotonic() + 30
        while driver.passes < 2:
            assert time.monotonic() < deadline, "no two passes"
            time.sleep(0.05)
    finally:
        driver.stop()
        index.close()
    assert sink.calls[0][:3] == (REPO, "main", remote.push("main"))
    assert sink.calls[0][2] != NULL_SHA


class _Recorder(_NoSubmit):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def submit_push(self, *args: Any, **kw: Any) -> str:
        self.calls.append(args)
        return "task"


def test_a_worker_starts_its_driver_on_its_own_connections(tmp_path: Path, remote: Remote):
    """``start_in_worker`` (the ``worker_ready`` hook): a Celery dispatcher on the broker,
    the lock in Redis; no index to read (Edge owned elsewhere) means no driver."""
    from coderag.freshness import start_in_worker

    url = redis_url(REDIS_DB)
    settings = Settings(
        data_dir=tmp_path / "data",
        celery_broker_url=url,
        redis_url=url,
        reconcile_interval_seconds=0.2,
    )
    assert start_in_worker(settings) is None  # Edge, and no job context in this process
    assert start_in_worker(settings.model_copy(update={"reconcile_interval_seconds": 0})) is None
    index = EdgeIndex(tmp_path / "index")
    RepoRegistry(index).put(
        RepoRecord(id=REPO, url=str(remote.bare), secret_hash=hash_secret("z" * 32))
    )
    driver = start_in_worker(settings, index=index)
    assert driver is not None
    try:
        deadline = time.monotonic() + 30
        while not driver.last:
            assert time.monotonic() < deadline, "no pass"
            time.sleep(0.05)
        assert driver.last[REPO]["scheduled"] == {"main": remote.push("main")}
        assert driver.dispatcher.coordinator.pending(REPO, "main") is not None
    finally:
        driver.stop()
        import redis

        client = redis.Redis.from_url(url)
        client.flushdb()  # the lock, the pending push, the task sent to the broker
        client.close()
        index.close()
