"""The webhook's answer matrix, on the real router with a real registry (an Edge index's
state in a temp dir) and the recorded-shape GitLab payloads of ``tests/fixtures/gitlab``.

The dispatcher here records submits instead of running them: what a dispatcher does with a
submit is tested in ``test_tasks*.py`` and end to end in ``test_webhooks_e2e.py``. The spool
is real (SQLite in the test's temp dir); its own tests, and a real broker going down and
coming back, are in ``test_webhook_spool.py``.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from coderag.errors import TransientError
from coderag.index.edge import EdgeIndex
from coderag.repos import RepoRecord, RepoRegistry, hash_secret
from coderag.settings import Settings
from webhooks.routes import WEBHOOK_PATH, router
from webhooks.spool import Forwarder, SpoolError, WebhookSpool

FIXTURES = Path(__file__).parent / "fixtures" / "gitlab"
REPO = "banking/payments-core"
SECRET = "s3cr3t-webhook-token-for-tests-0123456789"
NULL = "0" * 40


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


class RecordingDispatcher:
    """Stands in for the queue: remembers submits, can play a broker outage."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str, str, float]] = []
        self.jobs: list[tuple[str, str]] = []
        self.down = False

    def submit_push(
        self, repo_id: str, branch: str, after_sha: str, received_at: float, *, full: bool = False
    ) -> str:
        if self.down:
            raise TransientError("broker unavailable: connection refused")
        self.pushes.append((repo_id, branch, after_sha, received_at))
        return f"task-{len(self.pushes)}"

    def submit_reindex(self, repo_id: str, *, full: bool = True) -> str:
        if self.down:
            raise TransientError("broker unavailable: connection refused")
        self.jobs.append(("reindex", repo_id))
        return f"job-{len(self.jobs)}"

    def submit_remove(self, repo_id: str, requested_at: float | None = None) -> str:
        if self.down:
            raise TransientError("broker unavailable: connection refused")
        self.jobs.append(("remove", repo_id))
        return f"job-{len(self.jobs)}"


def make_app(tmp_path: Path, settings: Settings, dispatcher: Any) -> FastAPI:
    """The router over a real registry and spool; ``close_app`` releases them."""
    index = EdgeIndex(tmp_path / "index")
    registry = RepoRegistry(index)
    registry.put(
        RepoRecord(
            id=REPO,
            url="https://gitlab.example.com/banking/payments-core.git",
            gitlab_project_id=15,
            branches=["main", "release/*"],
            secret_hash=hash_secret(SECRET),
            hook_id=42,
        )
    )
    app = FastAPI()
    app.include_router(router)
    app.state.settings = settings
    app.state.registry = registry
    app.state.dispatcher = dispatcher
    app.state.index = index
    spool = WebhookSpool(settings.webhook_spool_file)
    app.state.webhook_spool = spool
    app.state.webhook_forwarder = Forwarder(spool, dispatcher, interval=0.05, max_backoff=0.2)
    app.state.webhook_forwarder.start()
    return app


def close_app(app: FastAPI) -> None:
    app.state.webhook_forwarder.stop()
    app.state.webhook_spool.close()
    app.state.index.close()


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def disp() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", webhook_max_bytes=64 * 1024)


@pytest.fixture
def client(tmp_path: Path, settings: Settings, disp: RecordingDispatcher) -> Iterator[TestClient]:
    app = make_app(tmp_path, settings, disp)
    with TestClient(app) as c:
        yield c
    close_app(app)


def post(
    c: TestClient,
    payload: Any,
    event: str | None = "Push Hook",
    token: str | None = SECRET,
    key: str | None = None,
    **kw: Any,
) -> Any:
    headers = {"Content-Type": "application/json"}
    if event:
        headers["X-Gitlab-Event"] = event
    if token:
        headers["X-Gitlab-Token"] = token
    if key:
        headers["Idempotency-Key"] = key
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return c.post(WEBHOOK_PATH, content=body, headers=headers, **kw)


def assert_error(resp: Any, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error_code", "detail"} and body["error_code"] == code
    assert body["detail"]


# --- accepted -------------------------------------------------------------------------------
def _events(event: str, outcome: str) -> float:
    from prometheus_client import REGISTRY

    labels = {"event": event, "outcome": outcome}
    return REGISTRY.get_sample_value("coderag_webhook_events_total", labels) or 0.0


def test_push_is_accepted_and_enqueued_not_indexed(client: TestClient, disp: RecordingDispatcher):
    payload = fixture("push")
    t0 = time.time()
    counted = _events("push", "accepted"), _events("push", "unauthorized")
    resp = post(client, payload, key="2c3b3c8e-1d5f-4a7e-9b51-5d8e7f0c1a22")
    assert resp.status_code == 202
    post(client, payload, token="wrong")
    assert (_events("push", "accepted"), _events("push", "unauthorized")) == (
        counted[0] + 1,
        counted[1] + 1,
    )
    assert resp.json() == {
        "status": "accepted",
        "queued": True,
        "task_id": "task-1",
        "spool_id": 1,
        "repo": REPO,
        "branch": "main",
        "commit": payload["after"],
        "action": "index",
    }
    [(repo, branch, sha, received_at)] = disp.pushes
    assert (repo, branch, sha) == (REPO, "main", payload["after"])
    assert t0 <= received_at <= time.time()


def test_branch_create_on_a_pattern_and_branch_delete(
    client: TestClient, disp: RecordingDispatcher
):
    create = fixture("branch_create")
    assert post(client, create).json()["branch"] == "release/2025.03"
    delete = fixture("branch_delete")
    resp = post(client, delete)
    assert resp.status_code == 202
    assert resp.json()["action"] == "delete" and resp.json()["commit"] is None
    assert disp.pushes[-1][1:3] == ("release/2025.03", NULL)


def test_branch_outside_the_patterns_is_ignored(client: TestClient, disp: RecordingDispatcher):
    payload = fixture("push")
    payload["ref"] = "refs/heads/feature/fx-rates-cache"
    resp = post(client, payload)
    assert resp.status_code == 202
    assert resp.json()["status"] == "ignored"
    assert "feature/fx-rates-cache" in resp.json()["reason"]
    assert disp.pushes == []


@pytest.mark.parametrize("event,name", [("System Hook", "system_hook"), ("Pipeline Hook", "push")])
def test_other_events_are_acknowledged_and_ignored(
    client: TestClient, disp: RecordingDispatcher, event: str, name: str
):
    resp = post(client, fixture(name), event=event, token=None)
    assert resp.status_code == 202
    assert resp.json()["status"] == "ignored" and event in resp.json()["reason"]
    assert disp.pushes == []


def test_tag_push_only_when_tags_are_on(tmp_path: Path, disp: RecordingDispatcher):
    for on in (False, True):
        settings = Settings(data_dir=tmp_path / f"d{on}", index_tags=on)
        app = make_app(tmp_path / f"t{on}", settings, disp)
        with TestClient(app) as c:
            body = post(c, fixture("tag_push"), event="Tag Push Hook").json()
        close_app(app)
        if on:
            assert body["status"] == "accepted" and body["branch"] == "tag:v1.4.0"
        else:
            assert body["status"] == "ignored" and "CODERAG_INDEX_TAGS" in body["reason"]
    assert [p[1] for p in disp.pushes] == ["tag:v1.4.0"]


def test_merge_requests_index_same_project_source_branches(tmp_path: Path):
    disp = RecordingDispatcher()
    settings = Settings(data_dir=tmp_path / "d", index_merge_requests=True)
    app = make_app(tmp_path, settings, disp)
    mr = fixture("merge_request_open")
    with TestClient(app) as c:
        opened = post(c, mr, event="Merge Request Hook").json()
        assert opened["status"] == "accepted" and opened["branch"] == "feature/fx-rates-cache"
        assert opened["commit"] == mr["object_attributes"]["last_commit"]["id"]

        fork = copy.deepcopy(mr)
        fork["object_attributes"]["source_project_id"] = 99
        assert "fork" in post(c, fork, event="Merge Request Hook").json()["reason"]

        merged = copy.deepcopy(mr)
        merged["object_attributes"].update(state="merged", action="merge")
        assert post(c, merged, event="Merge Request Hook").json()["action"] == "delete"
    close_app(app)
    assert [(b, s) for _, b, s, _ in disp.pushes] == [
        ("feature/fx-rates-cache", mr["object_attributes"]["last_commit"]["id"]),
        ("feature/fx-rates-cache", NULL),
    ]


def test_merge_requests_off_by_default(client: TestClient, disp: RecordingDispatcher):
    resp = post(client, fixture("merge_request_open"), event="Merge Request Hook")
    assert resp.json()["status"] == "ignored" and disp.pushes == []


# --- refused --------------------------------------------------------------------------------
@pytest.mark.parametrize("token", [None, "", "wrong-token", SECRET + "x"])
def test_wrong_or_missing_token_is_401(client: TestClient, disp: RecordingDispatcher, token):
    assert_error(post(client, fixture("push"), token=token), 401, "unauthorized")
    assert disp.pushes == []


def test_unknown_project_is_the_same_401_as_a_wrong_token(
    client: TestClient, disp: RecordingDispatcher
):
    """No existence oracle: without the secret, a registered and an unregistered project
    look the same."""
    payload = fixture("push")
    payload["project"].update(id=999, path_with_namespace="banking/unknown")
    unknown = post(client, payload, token=SECRET)
    # A registered path under another project id: the path changed hands, still not ours.
    taken = fixture("push")
    taken["project"]["id"] = 998
    assert_error(post(client, taken, token=SECRET), 401, "unauthorized")
    wrong = post(client, fixture("push"), token="wrong-token")
    assert_error(unknown, 401, "unauthorized")
    assert unknown.json()["detail"] == wrong.json()["detail"]
    assert disp.pushes == []


def test_body_over_the_limit_is_413_by_header_and_by_bytes(client: TestClient, settings: Settings):
    payload = fixture("push")
    payload["commits"] = payload["commits"] * 400  # well over 64 KiB
    assert_error(post(client, payload), 413, "payload_too_large")

    body = json.dumps(payload).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET}
    resp = client.post(WEBHOOK_PATH, content=chunks(), headers=headers)
    assert_error(resp, 413, "payload_too_large")


def test_malformed_json_and_missing_fields(client: TestClient):
    assert_error(post(client, b'{"object_kind": "push", '), 400, "invalid_json")
    assert_error(post(client, b"[1, 2]"), 400, "invalid_json")
    no_after = fixture("push")
    del no_after["after"]
    resp = post(client, no_after)
    assert_error(resp, 422, "invalid_payload")
    assert "after" in resp.json()["detail"]
    bad_sha = fixture("push")
    bad_sha["after"] = "not-a-sha"
    assert_error(post(client, bad_sha), 422, "invalid_payload")
    assert_error(post(client, fixture("push"), event=None), 400, "invalid_input")


# --- duplicates and outages -----------------------------------------------------------------
def test_duplicate_delivery_is_not_enqueued_twice(client: TestClient, disp: RecordingDispatcher):
    key = "d1c2b3a4-0000-4000-8000-000000000001"
    first = post(client, fixture("push"), key=key)
    again = post(client, fixture("push"), key=key)
    assert first.status_code == 202 and first.json()["status"] == "accepted"
    assert again.status_code == 200 and again.json() == {"status": "duplicate"}
    assert len(disp.pushes) == 1
    other = post(client, fixture("push"), key="d1c2b3a4-0000-4000-8000-000000000002")
    assert other.json()["status"] == "accepted" and len(disp.pushes) == 2


def test_broker_down_is_202_spooled_and_forwarded_later(
    client: TestClient, disp: RecordingDispatcher
):
    """GitLab never re-sends a failed delivery: a broker outage is our problem, so the push
    is accepted from the spool and handed over once the broker answers again."""
    key = "f00dfeed-0000-4000-8000-000000000003"
    disp.down = True
    resp = post(client, fixture("push"), key=key)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status"] == "accepted" and body["queued"] is False and body["task_id"] is None
    spool = client.app.state.webhook_spool
    assert spool.get(body["spool_id"])["state"] == "pending"
    assert disp.pushes == []
    # While the broker is known down, later deliveries do not even try it inline.
    other = post(client, fixture("push"), key="f00dfeed-0000-4000-8000-00000000000a").json()
    assert other["queued"] is False
    disp.down = False
    wait_for(lambda: len(disp.pushes) == 2)
    assert spool.get(body["spool_id"])["state"] == "forwarded"
    assert [p[2] for p in disp.pushes] == [fixture("push")["after"]] * 2
    # A manual "Resend request" of the accepted delivery (same key) is a duplicate.
    assert post(client, fixture("push"), key=key).json() == {"status": "duplicate"}
    assert len(disp.pushes) == 2


def test_spool_unwritable_is_503_with_a_reason(
    client: TestClient, disp: RecordingDispatcher, monkeypatch: pytest.MonkeyPatch
):
    """The one outage answered 503: nothing durable would hold the delivery."""
    spool = client.app.state.webhook_spool

    def full(*a: Any, **kw: Any) -> None:
        raise SpoolError(f"webhook spool {spool.path}: database or disk is full")

    monkeypatch.setattr(spool, "add", full)
    resp = post(client, fixture("push"), key="0ff11e00-0000-4000-8000-000000000005")
    assert_error(resp, 503, "spool_unavailable")
    assert "disk is full" in resp.json()["detail"]
    assert disp.pushes == []


def test_duplicates_are_per_project(tmp_path: Path, disp: RecordingDispatcher):
    """The same delivery id on two projects is two deliveries; spooled across a restart of
    the app (a new spool object on the same file), it is still a duplicate."""
    settings = Settings(data_dir=tmp_path / "data")
    key = "7e57e57e-0000-4000-8000-000000000004"
    answers = []
    for run in ("a", "b"):
        app = make_app(tmp_path / run, settings, disp)  # one data dir: one spool file
        with TestClient(app) as c:
            answers.append(post(c, fixture("push"), key=key).json()["status"])
            other = fixture("push")
            other["project"].update(id=16, path_with_namespace="banking/other")
            app.state.registry.put(
                RepoRecord(
                    id="banking/other",
                    url="https://gitlab.example.com/banking/other.git",
                    gitlab_project_id=16,
                    secret_hash=hash_secret(SECRET),
                )
            )
            answers.append(post(c, other, key=key).json()["status"])
        close_app(app)
    assert answers == ["accepted", "accepted", "duplicate", "duplicate"]


# --- GitLab's own body limit ------------------------------------------------------------------
def test_a_25_mib_body_is_accepted_and_one_byte_more_is_413(
    tmp_path: Path, disp: RecordingDispatcher
):
    """GitLab caps a webhook payload at 25 MiB: the default accepts exactly that, refuses
    one byte more (declared or streamed)."""
    settings = Settings(data_dir=tmp_path / "d")
    limit = settings.webhook_max_bytes
    assert limit == 25 * 1024 * 1024
    base = json.dumps(fixture("push")).encode()
    body = base[:-1] + b" " * (limit - len(base)) + b"}"  # valid JSON, exactly the cap
    assert len(body) == limit
    app = make_app(tmp_path, settings, disp)
    with TestClient(app) as c:
        ok = post(c, body)
        assert ok.status_code == 202 and ok.json()["status"] == "accepted", ok.text[:300]
        over = body[:-1] + b" }"
        assert_error(post(c, over), 413, "payload_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the stream is counted
            for i in range(0, len(over), 1 << 20):
                yield over[i : i + (1 << 20)]

        headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET}
        streamed = c.post(WEBHOOK_PATH, content=chunks(), headers=headers)
        assert_error(streamed, 413, "payload_too_large")
    close_app(app)
    assert len(disp.pushes) == 1


# --- identity by project id -------------------------------------------------------------------
@pytest.mark.parametrize(
    "new_url,kept",
    [
        ("https://gitlab.example.com/treasury/payments-core.git", False),
        ("https://elsewhere.example.net/treasury/payments-core.git", True),  # token stays home
    ],
)
def test_a_rename_moves_the_record_and_schedules_reindex_and_removal(
    client: TestClient, disp: RecordingDispatcher, new_url: str, kept: bool
):
    payload = fixture("push")
    payload["project"].update(path_with_namespace="treasury/payments-core", git_http_url=new_url)
    resp = post(client, payload, key="ren-1")
    assert resp.status_code == 202 and resp.json()["repo"] == "treasury/payments-core", resp.text
    registry: RepoRegistry = client.app.state.registry
    rec = registry.require("treasury/payments-core")
    assert rec.gitlab_project_id == 15 and rec.hook_id == 42 and rec.previous_ids == [REPO]
    old_url = "https://gitlab.example.com/banking/payments-core.git"
    assert rec.url == (old_url if kept else new_url)
    assert disp.jobs == [("reindex", "treasury/payments-core"), ("remove", REPO)]
    assert disp.pushes[-1][0] == "treasury/payments-core"
    # The old path in a later delivery (one sent before the rename, arriving late): found by
    # id and indexed under the record's current path, not moved back.
    again = post(client, fixture("push"), key="ren-2")
    assert again.status_code == 202 and again.json()["repo"] == "treasury/payments-core"
    assert registry.get_by_project(15).id == "treasury/payments-core" and len(disp.jobs) == 2


def test_a_rename_back_after_the_grace_period_moves_the_record_back(
    client: TestClient, disp: RecordingDispatcher, monkeypatch: pytest.MonkeyPatch
):
    import webhooks.routes

    payload = fixture("push")
    payload["project"]["path_with_namespace"] = "treasury/payments-core"
    assert post(client, payload, key="ren-4").json()["repo"] == "treasury/payments-core"
    monkeypatch.setattr(webhooks.routes, "MOVE_BACK_GRACE_S", 0.0)
    back = post(client, fixture("push"), key="ren-5")
    assert back.status_code == 202 and back.json()["repo"] == REPO
    registry: RepoRegistry = client.app.state.registry
    assert registry.get_by_project(15).id == REPO
    assert registry.require(REPO).previous_ids == ["treasury/payments-core"]
    assert disp.jobs[2:] == [("reindex", REPO), ("remove", "treasury/payments-core")]


def test_a_rename_while_the_broker_is_down_is_spooled_too(
    client: TestClient, disp: RecordingDispatcher
):
    disp.down = True
    payload = fixture("push")
    payload["project"]["path_with_namespace"] = "treasury/payments-core"
    resp = post(client, payload, key="ren-3")
    assert resp.status_code == 202 and resp.json()["queued"] is False
    disp.down = False
    wait_for(lambda: len(disp.jobs) == 2 and len(disp.pushes) == 1)
    assert disp.jobs == [("reindex", "treasury/payments-core"), ("remove", REPO)]
