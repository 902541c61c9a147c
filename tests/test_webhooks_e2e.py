"""The real thing, end to end, in distributed mode:

- uvicorn serving ``coderag.api.app.create_app`` on loopback (in this process, sharing the
  session's warmed model for query embedding);
- a Celery worker **process** (``tests/launch_worker.py``, ``--pool solo``) on the running
  Redis (db 11);
- one index both of them use: qdrant-client local mode served by ``tests/standin.py`` (there
  is no Qdrant server here, and local mode has one owner process);
- a git repository on disk as the GitLab project's clone URL, pushed to by the test;
- only GitLab's REST API is a mock (``tests/gitlab_mock.py``), for hook registration.

Webhooks are the recorded-shape payloads of ``tests/fixtures/gitlab``; results are read the
way Continue reads them, through ``POST /v1/continue/context``.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coderag.index import SearchFilter
from coderag.settings import Settings
from tests.api_support import running_server
from tests.fault_support import wait_for
from tests.gitlab_mock import FakeGitLab
from tests.ingest_support import NULL_SHA, Remote, payload, snapshot
from tests.redis_support import redis_url
from tests.standin import connect, free_port, start_standin

pytestmark = pytest.mark.integration

REDIS_URL = redis_url(11)
REPO = "banking/payments-core"
GL_TOKEN = "glpat-e2eTestToken0123456789"
COLLECTION = "e2e"
LATENCIES: list[float] = []

LEDGER_PY = '''"""Ledger entries of the settlement engine."""


def post_ledger_entry(ledger, account, amount):
    """Append one debit or credit to the ledger of an account."""
    ledger.setdefault(account, []).append(amount)
    return sum(ledger[account])
'''

RECONCILE_PY = '''"""Nightly reconciliation."""


def reconcile_settlement_batch(batch, statement):
    """Match every settlement of a batch against the bank statement and return the
    settlements that have no matching statement line."""
    seen = {line["reference"] for line in statement}
    return [s for s in batch if s["reference"] not in seen]
'''

FX_PY = '''"""Foreign exchange."""


def convert_with_cached_fx_rate(amount, currency, rates):
    """Convert an amount into euros with the cached foreign exchange rate of the day."""
    return round(amount * rates[currency], 2)
'''


_wait = wait_for


class Stack:
    """The running system and the handles a test needs."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)
        self.http: httpx.Client
        self.remote: Remote
        self.secret: str
        self.app: Any
        self.worker_log: Path

    def webhook(self, event: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        headers = {
            "X-Gitlab-Event": event,
            "X-Gitlab-Token": self.secret,
            "Idempotency-Key": key or str(uuid.uuid4()),
            "X-Gitlab-Event-UUID": str(uuid.uuid4()),
            "User-Agent": "GitLab/17.9.0",
        }
        t0 = time.perf_counter()
        resp = self.http.post("/v1/webhooks/gitlab", json=body, headers=headers)
        LATENCIES.append(time.perf_counter() - t0)
        return resp

    def push(self, branch: str, before: str, after: str, name: str = "push") -> httpx.Response:
        body = payload(
            name,
            repo=REPO,
            clone_url=str(self.remote.bare),
            before=before,
            after=after,
            ref=f"refs/heads/{branch}",
        )
        return self.webhook("Push Hook", body)

    def context(self, text: str, branch: str = "main") -> list[dict[str, Any]]:
        body = {"query": "", "fullInput": text, "options": {"repo": REPO, "branch": branch}}
        resp = self.http.post("/v1/continue/context", json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def found(self, text: str, needle: str, branch: str = "main") -> bool:
        return any(needle in item["content"] for item in self.context(text, branch))

    def branch(self, branch: str) -> dict[str, Any]:
        resp = self.http.get(f"/v1/repos/{REPO}/status")
        assert resp.status_code == 200, resp.text
        return next((b for b in resp.json()["branches"] if b["branch"] == branch), {})

    def settled(self, branch: str, sha: str) -> bool:
        """Indexed at ``sha``, nothing pending, nothing queued."""
        b = self.branch(branch)
        depths = self.app.state.dispatcher.queue_depths()
        return (
            b.get("commit") == sha and not b.get("pending_commit") and depths.get("index", 0) == 0
        )

    def runs(self, branch: str) -> int:
        run = self.app.state.registry.branch_runs(REPO).get(f"run/{REPO}/{branch}") or {}
        return int(run.get("runs", 0))


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[Stack]:
    import redis

    from coderag.api import create_app
    from coderag.index.server import ServerIndex
    from coderag.runtime import build_runtime

    tmp = tmp_path_factory.mktemp("e2e")
    r = redis.Redis.from_url(REDIS_URL)
    r.flushdb()
    key = os.urandom(16)
    standin, addr = start_standin(tmp / "qdrant", key)
    remote = Remote(tmp / "git")
    remote.commit({"src/ledger.py": LEDGER_PY, "README.md": "# Payments core\n"}, "initial")
    remote.push("main")
    api_port = free_port()
    env_settings = {
        "CODERAG_DATA_DIR": str(tmp / "worker-data"),
        "CODERAG_CELERY_BROKER_URL": REDIS_URL,
        "CODERAG_REDIS_URL": REDIS_URL,
        "CODERAG_COLLECTION": COLLECTION,
        "CODERAG_PUSH_DEBOUNCE_SECONDS": "0.3",
        "CODERAG_MODEL_EXPORT_DIR": str(model_dir),
        "CODERAG_EMBEDDING_CACHE_DIR": str(tmp / "worker-cache"),
        "CODERAG_LOG_JSON": "false",
    }
    worker_log = tmp / "worker.log"
    worker = None
    exits = contextlib.ExitStack()
    gitlab = FakeGitLab(GL_TOKEN).__enter__()
    try:
        with worker_log.open("wb") as log_fh:  # the child keeps its own descriptor
            worker = subprocess.Popen(
                [sys.executable, "-m", "tests.launch_worker"],
                cwd=Path(__file__).resolve().parents[1],
                env={
                    **os.environ,
                    **env_settings,
                    "CODERAG_STANDIN_ADDR": f"{addr[0]}:{addr[1]}",
                    "CODERAG_STANDIN_KEY": key.hex(),
                },
                stdout=log_fh,
                stderr=subprocess.STDOUT,
            )
        # The worker loads its model while this process loads the session's (2 cores).
        embedder = request.getfixturevalue("embedder")
        gitlab.add_project(REPO, 15, str(remote.bare))
        settings = Settings(
            data_dir=tmp / "api-data",
            celery_broker_url=REDIS_URL,
            redis_url=REDIS_URL,
            collection=COLLECTION,
            push_debounce_seconds=0.3,
            gitlab_url=gitlab.url,
            gitlab_token=GL_TOKEN,
            public_url=f"http://127.0.0.1:{api_port}",
            log_json=False,
            log_level="WARNING",
        )
        rt = build_runtime(
            settings, index=ServerIndex(client=connect(addr, key), collection=COLLECTION)
        )
        rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
        app = create_app(settings, runtime=rt)
        exits.enter_context(running_server(app, port=api_port))
        http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30)

        # Turn indexing on, as a repo owner would: POST /v1/repos (hook created on "GitLab").
        created = http.post(
            "/v1/repos", json={"url": f"{gitlab.url}/{REPO}", "branches": ["main", "release/*"]}
        )
        assert created.status_code == 201, created.text
        hook = next(iter(gitlab.hooks.values()))
        assert hook["url"] == f"http://127.0.0.1:{api_port}/v1/webhooks/gitlab"
        st = Stack(
            http=http,
            remote=remote,
            secret=created.json()["secret"],
            app=app,
            worker_log=worker_log,
            gitlab=gitlab,
            tmp=tmp,
        )
        head = remote.push("main")
        _wait(
            lambda: st.branch("main").get("commit") == head,
            90,
            "the first full index by the worker",
            worker_log,
        )
        yield st
        http.close()
    finally:
        exits.close()
        if worker is not None:
            worker.terminate()  # warm shutdown; the interpreter's own exit (torch, OpenVINO
            try:  # thread pools) is not what this test is about: do not wait for it long
                worker.wait(timeout=2)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=10)
        standin.terminate()
        standin.wait(timeout=10)
        gitlab.__exit__(None, None, None)
        r.flushdb()
        r.close()


def test_a_push_becomes_searchable_through_the_continue_endpoint(stack: Stack):
    before = stack.remote.push("main")
    assert not stack.found(
        "reconcile settlement batch against bank statement", "reconcile_settlement_batch"
    )
    after = stack.remote.commit({"src/reconcile.py": RECONCILE_PY}, "reconciliation")
    stack.remote.push("main")
    t0 = time.perf_counter()
    resp = stack.push("main", before, after)
    assert resp.status_code == 202 and resp.json()["status"] == "accepted"
    _wait(
        lambda: stack.found(
            "reconcile settlement batch against bank statement", "reconcile_settlement_batch"
        ),
        30,
        "search hit",
        stack.worker_log,
    )
    print(f"\nINGEST-FIGURE push_to_searchable_s={time.perf_counter() - t0:.2f}")
    assert stack.branch("main")["last_push_to_indexed_seconds"] is not None


def test_duplicate_deliveries_run_once(stack: Stack):
    before = stack.remote.push("main")
    after = stack.remote.commit({"src/fx.py": FX_PY}, "fx")
    stack.remote.push("main")
    runs0 = stack.runs("main")
    body = payload(
        "push",
        repo=REPO,
        clone_url=str(stack.remote.bare),
        before=before,
        after=after,
        ref="refs/heads/main",
    )
    key = str(uuid.uuid4())
    first = stack.webhook("Push Hook", body, key=key)
    again = stack.webhook("Push Hook", body, key=key)  # GitLab's retry of the same delivery
    assert first.status_code == 202 and again.status_code == 200
    assert again.json() == {"status": "duplicate"}
    _wait(lambda: stack.settled("main", after), 30, "the run", stack.worker_log)
    time.sleep(0.5)  # anything a duplicate would have scheduled has had time to run
    assert stack.runs("main") == runs0 + 1
    assert stack.found("convert an amount with the cached fx rate", "convert_with_cached_fx_rate")


def test_branch_create_then_delete_removes_its_chunks(stack: Stack):
    index = stack.app.state.runtime.index
    main_before = index.count(SearchFilter(repos=[REPO], branch="main"))
    stack.remote.checkout("release/2025.03", create=True)
    sha = stack.remote.commit(
        {
            "src/release_notes.py": "def release_cutover_checklist():\n"
            '    """Steps of the release cutover."""\n    return []\n'
        }
    )
    stack.remote.push("release/2025.03")
    stack.remote.checkout("main")
    resp = stack.push("release/2025.03", NULL_SHA, sha, name="branch_create")
    assert resp.status_code == 202 and resp.json()["branch"] == "release/2025.03"
    _wait(lambda: stack.settled("release/2025.03", sha), 30, "branch index", stack.worker_log)
    assert stack.found(
        "release cutover checklist", "release_cutover_checklist", branch="release/2025.03"
    )
    assert index.count(SearchFilter(repos=[REPO], branch="release/2025.03")) > 0

    stack.remote.delete_branch("release/2025.03")
    resp = stack.push("release/2025.03", sha, NULL_SHA, name="branch_delete")
    assert resp.status_code == 202 and resp.json()["action"] == "delete"
    _wait(
        lambda: index.count(SearchFilter(repos=[REPO], branch="release/2025.03")) == 0,
        30,
        "branch deletion",
        stack.worker_log,
    )
    assert index.count(SearchFilter(repos=[REPO], paths=["src/release_notes.py"])) == 0
    assert index.count(SearchFilter(repos=[REPO], branch="main")) == main_before
    assert not stack.found(
        "release cutover checklist", "release_cutover_checklist", branch="release/2025.03"
    )


def test_twenty_quick_pushes_fold_into_at_most_two_runs(
    stack: Stack, embedder: Any, tmp_path: Path
):
    from coderag.runtime import build_runtime

    before = stack.remote.push("main")
    runs0 = stack.runs("main")
    shas = []
    for i in range(20):
        text = RECONCILE_PY + f"\n\ndef settlement_window_{i}():\n    return {i}\n"
        shas.append(stack.remote.commit({"src/reconcile.py": text}, f"push {i}"))
    stack.remote.upload()
    prev = before
    for sha in shas:  # 20 pushes, one after the other, as fast as GitLab would send them
        stack.remote.set_ref("main", sha)
        resp = stack.push("main", prev, sha)
        assert resp.status_code == 202, resp.text
        prev = sha
    _wait(lambda: stack.settled("main", shas[-1]), 60, "the folded run", stack.worker_log)
    runs = stack.runs("main") - runs0
    print(f"\nINGEST-FIGURE runs_for_20_pushes={runs}")
    assert 1 <= runs <= 2

    fresh = build_runtime(Settings(data_dir=tmp_path / "fresh", index_backend="edge"))
    fresh.embedder = fresh.indexer.embedder = fresh.retriever.embedder = embedder
    try:
        fresh.indexer.index(stack.remote.work, REPO, "main", shas[-1])
        got = snapshot(stack.app.state.runtime.index, REPO)
        assert got == snapshot(fresh.index, REPO)
    finally:
        fresh.close()


def test_webhook_answers_within_a_second():
    assert len(LATENCIES) >= 20
    ordered = sorted(LATENCIES)
    p50 = statistics.median(ordered)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    print(
        f"\nINGEST-FIGURE webhook_latency_ms p50={p50 * 1000:.1f} p95={p95 * 1000:.1f} "
        f"n={len(ordered)}"
    )
    assert p95 < 1.0
