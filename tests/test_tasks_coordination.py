"""The folding primitives and the Celery dispatcher, against a real Redis (db 12).

One contract, two implementations: :class:`RedisCoordinator` (distributed) and
:class:`MemoryCoordinator` (embedded) must behave the same, so both run every test here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from coderag.errors import GitError, TransientError
from coderag.settings import Settings
from indexer.queue import (
    INDEX_BRANCH,
    QUEUE_INDEX,
    CeleryDispatcher,
    MemoryCoordinator,
    RedisCoordinator,
    create_celery,
)
from tests.redis_support import redis_url

REDIS_URL = redis_url(12)
SHA = [f"{i:040x}" for i in range(1, 30)]


@pytest.fixture
def redis_db() -> Iterator[Any]:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


@pytest.fixture(params=["memory", "redis"])
def coord(request: pytest.FixtureRequest, redis_db: Any) -> Any:
    if request.param == "memory":
        return MemoryCoordinator()
    return RedisCoordinator(redis_db, lock_ttl=0.6)


def test_pending_keeps_the_newest_and_counts_pushes(coord: Any):
    assert coord.pending("g/p", "main") is None
    s1 = coord.record("g/p", "main", SHA[0], 100.0)
    s2 = coord.record("g/p", "main", SHA[1], 101.0)
    assert s2 > s1
    p = coord.pending("g/p", "main")
    assert (p.sha, p.seq, p.received_at, p.first_received_at, p.pushes, p.full) == (
        SHA[1],
        s2,
        101.0,
        100.0,
        2,
        False,
    )
    assert coord.pending("g/p", "other") is None
    assert coord.pending_count() == 1


def test_consume_is_compare_and_delete(coord: Any):
    s1 = coord.record("g/p", "main", SHA[0], 1.0)
    coord.record("g/p", "main", SHA[1], 2.0)  # arrived during the run of SHA[0]
    assert coord.consume("g/p", "main", s1) is False  # the newer push survives
    p = coord.pending("g/p", "main")
    assert p.sha == SHA[1]
    assert coord.consume("g/p", "main", p.seq) is True
    assert coord.pending("g/p", "main") is None


def test_full_flag_sticks_until_consumed(coord: Any):
    coord.record("g/p", "main", SHA[0], 1.0, full=True)
    coord.record("g/p", "main", SHA[1], 2.0)
    assert coord.pending("g/p", "main").full is True


def test_one_schedule_flag_per_branch(coord: Any):
    assert coord.claim_schedule("g/p", "main", "t1") is None
    assert coord.claim_schedule("g/p", "main", "t2") == "t1"  # folded into t1
    assert coord.claim_schedule("g/p", "dev", "t3") is None
    coord.release_schedule("g/p", "main")
    assert coord.claim_schedule("g/p", "main", "t4") is None


def test_lock_is_exclusive_and_released(coord: Any):
    with coord.lock("g/p", "main") as a:
        assert a is True
        with coord.lock("g/p", "main") as b:
            assert b is False
        with coord.lock("g/p", "dev") as c:
            assert c is True
    with coord.lock("g/p", "main") as d:
        assert d is True


def test_redis_lock_is_renewed_while_held_and_expires_when_abandoned(redis_db: Any):
    coord = RedisCoordinator(redis_db, lock_ttl=0.6)
    key = "coderag:lock:g/p:main"
    with coord.lock("g/p", "main") as held:
        assert held
        time.sleep(1.5)  # 2.5 TTLs: alive only because the run renews it
        assert redis_db.exists(key)
    assert not redis_db.exists(key)
    # A crashed holder (no renewal) frees the branch by expiry alone.
    redis_db.set(key, b"dead-worker-token", px=300)
    with coord.lock("g/p", "main") as held:
        assert held is False
    time.sleep(0.4)
    with coord.lock("g/p", "main") as held:
        assert held is True


def test_forget_repo_drops_only_that_repo(coord: Any):
    coord.record("g/p", "main", SHA[0], 1.0)
    coord.record("g/p", "release/1", SHA[0], 1.0)
    coord.claim_schedule("g/p", "main", "t")
    coord.record("g/other", "main", SHA[0], 1.0)
    coord.forget_repo("g/p")
    assert coord.pending("g/p", "main") is None and coord.pending("g/p", "release/1") is None
    assert coord.claim_schedule("g/p", "main", "t2") is None
    assert coord.pending("g/other", "main") is not None


def _race_end_of_run_with_a_push(coord: Any, branch: str) -> bool:
    """One interleaving; True when the push was neither read by the run nor scheduled."""
    coord.claim_schedule("g/p", branch, "run")  # a run is scheduled, and now it ends:
    barrier = threading.Barrier(2)
    seen: dict[str, Any] = {}

    def run_end() -> None:
        barrier.wait()
        coord.release_schedule("g/p", branch)
        seen["pending"] = coord.pending("g/p", branch)

    def push() -> None:
        barrier.wait()
        coord.record("g/p", branch, SHA[0], 1.0)
        seen["scheduled_new"] = coord.claim_schedule("g/p", branch, "new") is None

    threads = [threading.Thread(target=run_end), threading.Thread(target=push)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seen["pending"] is None and not seen["scheduled_new"]


def test_the_fold_race_loses_no_push(coord: Any):
    """The run clears the flag *before* reading pending: a push racing with the end of a run
    is either read by the run or schedules a new one, never neither (many interleavings)."""
    lost = sum(_race_end_of_run_with_a_push(coord, f"b{i}") for i in range(200))
    assert lost == 0


# --- the Celery dispatcher (a real broker, no worker needed) --------------------------------
def test_celery_dispatcher_folds_a_burst_into_one_message(tmp_path: Path, redis_db: Any):
    settings = Settings(
        data_dir=tmp_path,
        celery_broker_url=REDIS_URL,
        redis_url=REDIS_URL,
        push_debounce_seconds=0.5,
    )
    d = CeleryDispatcher(settings)
    try:
        ids = {d.submit_push("g/p", "main", SHA[i], time.time()) for i in range(5)}
        assert len(ids) == 1  # every push of the burst got the id of the one scheduled run
        assert d.queue_depths()[QUEUE_INDEX] == 1
        assert d.coordinator.pending("g/p", "main").sha == SHA[4]
        assert d.coordinator.pending("g/p", "main").pushes == 5
        d.submit_push("g/p", "dev", SHA[0], time.time())
        assert d.queue_depths()[QUEUE_INDEX] == 2

        raw = json.loads(redis_db.lindex(QUEUE_INDEX, 0))
        headers = raw["headers"]
        assert headers["task"] == INDEX_BRANCH
        expires = datetime.fromisoformat(headers["expires"]).timestamp() - time.time()
        eta = datetime.fromisoformat(headers["eta"]).timestamp() - time.time()
        assert 5 * 3600 < expires <= 6 * 3600  # set on enqueue, seconds from now
        assert 0 < eta <= 0.5  # the debounce countdown lets a burst fold
        assert raw["content-type"] == "application/json"
        assert d.ping() is True
    finally:
        d.close()


def test_celery_dispatcher_broker_down_is_transient_and_fast(tmp_path: Path, redis_db: Any):
    from tests.standin import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(data_dir=tmp_path, celery_broker_url=dead, redis_url=REDIS_URL)
    d = CeleryDispatcher(settings)
    try:
        t0 = time.perf_counter()
        with pytest.raises(TransientError):
            d.submit_push("g/p", "main", SHA[0], time.time())
        assert time.perf_counter() - t0 < 3.0
        # nothing was queued, so the flag is free again: GitLab's retry will schedule
        assert d.coordinator.claim_schedule("g/p", "main", "retry") is None
        assert d.ping() is False
    finally:
        d.close()
    # Redis (the coordinator) down as well: still a TransientError, not a crash
    d2 = CeleryDispatcher(Settings(data_dir=tmp_path, celery_broker_url=dead, redis_url=dead))
    with pytest.raises(TransientError):
        d2.submit_push("g/p", "main", SHA[0], time.time())


def test_celery_app_is_configured_for_safe_delivery(tmp_path: Path):
    app = create_celery(Settings(data_dir=tmp_path, celery_broker_url=REDIS_URL))
    c = app.conf
    assert c.task_serializer == "json" and c.accept_content == ["json"]
    assert c.task_acks_late and c.task_reject_on_worker_lost
    assert c.worker_prefetch_multiplier == 1
    assert "+redis://" in c.result_backend and type(app.backend).__name__ == "StatusBackend"
    names = set(app.tasks)
    assert {
        "coderag.index_branch",
        "coderag.delete_branch",
        "coderag.reindex_repo",
        "coderag.remove_repo",
    } <= names


# --- the Celery task bodies (run eagerly here; by a worker process in the e2e test) ----------
@pytest.fixture
def task_ctx(tmp_path: Path, redis_db: Any) -> Iterator[Any]:
    """A job context with a real registry and Redis coordinator; no model is needed because
    these tests stop before indexing (busy branch, failing fetch)."""
    from coderag.index.edge import EdgeIndex
    from coderag.repos import RepoRecord, RepoRegistry, hash_secret
    from indexer.jobs import JobContext
    from indexer.queue import install_context

    index = EdgeIndex(tmp_path / "index")
    registry = RepoRegistry(index)
    registry.put(
        RepoRecord(id="g/p", url=str(tmp_path / "nowhere.git"), secret_hash=hash_secret("s" * 32))
    )
    settings = Settings(data_dir=tmp_path, celery_broker_url=REDIS_URL, redis_url=REDIS_URL)
    app = create_celery(settings)
    calls: list[str] = []

    def failing_fetch(rec: Any) -> Any:
        calls.append(rec.id)
        raise GitError("git fetch failed: Connection timed out")

    ctx = JobContext(
        runtime=SimpleNamespace(settings=settings, indexer=None, index=index),
        registry=registry,  # type: ignore[arg-type]
        coordinator=RedisCoordinator(redis_db),
        scheduler=None,  # type: ignore[arg-type]
        fetch=failing_fetch,
    )
    install_context(ctx)
    try:
        yield app, ctx, calls
    finally:
        install_context(None)
        index.close()


def test_a_busy_branch_re_enqueues_the_task(task_ctx: Any, redis_db: Any):
    app, ctx, calls = task_ctx
    ctx.coordinator.record("g/p", "main", SHA[0], time.time())
    with ctx.coordinator.lock("g/p", "main") as held:  # another worker is running it
        assert held
        res = app.tasks[INDEX_BRANCH].apply(args=("g/p", "main"))
    assert res.state == "SUCCESS" and res.result["busy"] is True
    assert calls == []  # it did not touch the branch
    assert redis_db.llen(QUEUE_INDEX) == 1  # a fresh message, to come back shortly
    headers = json.loads(redis_db.lindex(QUEUE_INDEX, 0))["headers"]
    assert headers["task"] == INDEX_BRANCH and headers["eta"] and headers["expires"]


def test_transient_errors_are_retried_then_fail_and_keep_the_commit(task_ctx: Any):
    from indexer.queue import MAX_RETRIES

    app, ctx, calls = task_ctx
    ctx.coordinator.record("g/p", "main", SHA[0], time.time())
    res = app.tasks[INDEX_BRANCH].apply(args=("g/p", "main"))  # eager: retries run inline
    assert res.state == "FAILURE" and isinstance(res.result, GitError)
    assert len(calls) == 1 + MAX_RETRIES
    assert ctx.coordinator.pending("g/p", "main").sha == SHA[0]  # the next push retries it


def test_backoff_is_exponential_and_capped():
    from indexer.queue import backoff

    assert [round(backoff(n) / 2**n, 1) for n in range(5)] == pytest.approx([1.0] * 5, abs=0.21)
    assert backoff(20) <= 72
