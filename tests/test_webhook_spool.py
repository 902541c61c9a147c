"""The durable webhook spool and its forwarder: what is accepted survives a killed process,
a broker outage delays a push but never loses it, and the one answer that is not a 2xx is a
spool that cannot be written.

Real SQLite files, real processes (SIGKILL), and a real Redis broker that the test stops and
starts (:class:`tests.redis_support.RedisServer`) under a real ``CeleryDispatcher``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from coderag.errors import TransientError
from coderag.settings import Settings
from tests.redis_support import RedisServer
from tests.test_webhooks import REPO, close_app, fixture, make_app, post
from webhooks.spool import (
    KIND_REINDEX,
    KIND_REMOVE,
    Forwarder,
    SpoolError,
    WebhookSpool,
)

ROOT = Path(__file__).resolve().parents[1]
SHA = "a" * 40


def wait_for(cond: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- durability -----------------------------------------------------------------------------
def test_a_spooled_row_survives_sigkill_of_the_process(tmp_path: Path):
    """``add`` returns only once the row is fsynced: a process killed right after (before
    any forwarding) leaves the row pending for the next one."""
    path = tmp_path / "spool.sqlite3"
    code = (
        "import os, signal, sys, time\n"
        "from webhooks.spool import WebhookSpool\n"
        f"s = WebhookSpool({str(path)!r})\n"
        f"row = s.add({REPO!r}, 'main', {SHA!r}, time.time(), '15:key-1')\n"
        "print(row.id, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr
    row_id = int(proc.stdout.strip())
    spool = WebhookSpool(path)
    try:
        [row] = spool.pending()
        assert (row.id, row.repo, row.branch, row.sha) == (row_id, REPO, "main", SHA)
        assert spool.get(row_id)["state"] == "pending"
        assert spool.add(REPO, "main", SHA, time.time(), "15:key-1") is None  # still a dupe
    finally:
        spool.close()


def test_close_without_forwarding_keeps_rows_and_a_new_forwarder_sends_them(tmp_path: Path):
    path = tmp_path / "spool.sqlite3"
    spool = WebhookSpool(path)
    spool.add(REPO, "main", SHA, time.time(), "15:a")
    spool.add("g/new", "", "", time.time(), None, kind=KIND_REINDEX)
    asked = time.time() - 5  # the removal's request time travels with it
    spool.add("g/old", "", "", asked, None, kind=KIND_REMOVE)
    spool.close()

    calls: list[tuple[Any, ...]] = []

    class Disp:
        def submit_push(self, repo: str, branch: str, sha: str, at: float) -> str:
            calls.append(("push", repo, branch, sha))
            return "t1"

        def submit_reindex(self, repo: str, *, full: bool = True) -> str:
            calls.append(("reindex", repo, full))
            return "t2"

        def submit_remove(self, repo: str, requested_at: float | None = None) -> str:
            calls.append(("remove", repo, requested_at))
            return "t3"

    again = WebhookSpool(path)
    fwd = Forwarder(again, Disp(), interval=0.05, min_age=0.0).start()
    try:
        wait_for(lambda: again.stats().forwarded == 3, what="the restarted forwarder")
    finally:
        fwd.stop()
    assert calls == [
        ("push", REPO, "main", SHA),
        ("reindex", "g/new", False),
        ("remove", "g/old", asked),
    ]
    st = again.stats()
    assert (st.pending, st.forwarded, st.failed) == (0, 3, 0)
    again.close()


def test_a_full_disk_is_a_spool_error(tmp_path: Path):
    spool = WebhookSpool(tmp_path / "spool.sqlite3")
    with spool._conn() as db:  # SQLite's own "database or disk is full", for real
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(SpoolError, match="full"):
        for i in range(10_000):
            spool.add(REPO, "main", SHA, time.time(), f"15:{i}-" + "x" * 200)
    spool.close()


def test_claims_are_exclusive_and_stale_claims_are_taken_again(tmp_path: Path):
    spool = WebhookSpool(tmp_path / "spool.sqlite3")
    row = spool.add(REPO, "main", SHA, time.time(), None)
    assert row is not None
    assert spool.claim(row.id) and not spool.claim(row.id)
    assert spool.pending() == []  # claimed just now: nobody else's
    with spool._conn() as db:
        db.execute("UPDATE deliveries SET claimed_at=claimed_at-3600 WHERE id=?", (row.id,))
    assert [r.id for r in spool.pending()] == [row.id] and spool.claim(row.id)
    spool.release(row.id, "broker down")
    assert spool.get(row.id)["state"] == "pending"
    assert spool.get(row.id)["last_error"] == "broker down"
    spool.close()


def test_min_age_leaves_young_rows_to_the_inline_forward(tmp_path: Path):
    spool = WebhookSpool(tmp_path / "spool.sqlite3")
    spool.add(REPO, "main", SHA, time.time(), None)
    assert spool.pending(min_age=5.0) == [] and len(spool.pending()) == 1
    spool.close()


def test_forwarded_rows_are_pruned_after_the_retention(tmp_path: Path):
    spool = WebhookSpool(tmp_path / "spool.sqlite3", retention_s=60)
    row = spool.add(REPO, "main", SHA, time.time() - 120, "15:old")
    assert row is not None and spool.claim(row.id)
    spool.mark_forwarded(row.id, "t")
    assert spool.prune() == 1
    assert spool.add(REPO, "main", SHA, time.time(), "15:old") is not None  # forgotten
    spool.close()


def test_an_unknown_dispatcher_failure_keeps_the_row(tmp_path: Path):
    spool = WebhookSpool(tmp_path / "spool.sqlite3")

    class Broken:
        def submit_push(self, *a: Any) -> str:
            raise RuntimeError("boom")

    fwd = Forwarder(spool, Broken())
    row = spool.add(REPO, "main", SHA, time.time(), None)
    assert row is not None
    with pytest.raises(TransientError):
        fwd.forward(row)
    assert fwd.broker_down and spool.get(row.id)["state"] == "pending"
    spool.close()


# --- a real broker going down and coming back -----------------------------------------------
@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", aof=False)
    server.start()
    yield server
    server.stop(kill=True)


def test_broker_down_is_202_and_the_push_reaches_the_queue_when_it_is_back(
    tmp_path: Path, broker: RedisServer
):
    from indexer.queue import CeleryDispatcher

    settings = Settings(
        data_dir=tmp_path / "data",
        celery_broker_url=broker.url(),
        redis_url=broker.url(),
        push_debounce_seconds=0,
    )
    disp = CeleryDispatcher(settings)
    app = make_app(tmp_path, settings, disp)
    app.state.webhook_forwarder.max_backoff = 0.5
    payload = fixture("push")
    try:
        with TestClient(app) as c:
            up = post(c, payload, key="k-up")
            assert up.status_code == 202 and up.json()["queued"] is True, up.text
            assert disp.coordinator.pending(REPO, "main").sha == payload["after"]

            broker.stop()  # SIGTERM, as `docker restart` does
            later = {**payload, "after": "b" * 40}
            answers = [post(c, later, key=f"k-down-{i}") for i in range(3)]
            assert [a.status_code for a in answers] == [202, 202, 202]
            assert all(a.json()["queued"] is False for a in answers)
            spool = app.state.webhook_spool
            assert spool.stats().pending == 3

            broker.start()  # same port, empty (no AOF): only the spool remembers the pushes
            wait_for(lambda: spool.stats().pending == 0, 60, "the spool to drain")
            pending = disp.coordinator.pending(REPO, "main")
            assert pending is not None and pending.sha == "b" * 40
            assert disp.queue_depths()["index"] >= 1  # a run was queued for it
            ids = [a.json()["spool_id"] for a in answers]
            assert all(spool.get(i)["state"] == "forwarded" for i in ids)
            assert all(spool.get(i)["task_id"] for i in ids)
            assert post(c, later, key="k-down-0").json() == {"status": "duplicate"}
    finally:
        close_app(app)
        disp.close()


def test_the_api_spools_in_its_data_dir_and_forwards_leftovers_at_startup(
    tmp_path: Path, embedder: Any
):
    """``create_app``'s lifespan opens ``data_dir/webhooks/spool.sqlite3`` and starts the
    forwarder, which sends what a previous process left behind."""
    from coderag.api import create_app
    from coderag.runtime import build_runtime

    settings = Settings(data_dir=tmp_path / "data", index_backend="edge", log_json=False)
    assert settings.webhook_spool_file == tmp_path / "data" / "webhooks" / "spool.sqlite3"
    left = WebhookSpool(settings.webhook_spool_file)
    left.add("grp/none", "main", SHA, time.time() - 10, "1:left")
    left.close()
    rt = build_runtime(settings)
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    try:
        with TestClient(create_app(settings, runtime=rt)) as c:
            spool = c.app.state.webhook_spool
            assert spool.path == settings.webhook_spool_file
            wait_for(lambda: spool.stats().pending == 0, 30, "the leftover row to go")
            assert spool.stats().forwarded == 1
            assert c.app.state.webhook_forwarder.forwarded == 1
        assert c.app.state.webhook_spool is None  # closed at shutdown
    finally:
        rt.close()
