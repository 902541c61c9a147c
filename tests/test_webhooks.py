"""The webhook's answer matrix, on the real router with a real registry (an Edge index's
state in a temp dir) and the recorded-shape GitLab payloads of ``tests/fixtures/gitlab``.

The dispatcher here records submits instead of running them: what a dispatcher does with a
submit is tested in ``test_tasks*.py`` and end to end in ``test_webhooks_e2e.py``.
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
        self.down = False

    def submit_push(
        self, repo_id: str, branch: str, after_sha: str, received_at: float, *, full: bool = False
    ) -> str:
        if self.down:
            raise TransientError("broker unavailable: connection refused")
        self.pushes.append((repo_id, branch, after_sha, received_at))
        return f"task-{len(self.pushes)}"


def make_app(tmp_path: Path, settings: Settings, dispatcher: Any, redis: Any = None) -> FastAPI:
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
    app.state.redis = redis
    app.state.index = index
    return app


@pytest.fixture
def redis_db() -> Iterator[Any]:
    """A real Redis, db 13 (this module's own), emptied before and after."""
    import redis

    from tests.redis_support import redis_url

    r = redis.Redis.from_url(redis_url(13))
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


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
    app.state.index.close()


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
        "task_id": "task-1",
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
        app.state.index.close()
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
    app.state.index.close()
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
    payload["project"]["path_with_namespace"] = "banking/unknown"
    unknown = post(client, payload, token=SECRET)
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


def test_broker_down_is_503_and_the_retry_is_not_a_duplicate(
    client: TestClient, disp: RecordingDispatcher
):
    key = "f00dfeed-0000-4000-8000-000000000003"
    disp.down = True
    assert_error(post(client, fixture("push"), key=key), 503, "unavailable")
    disp.down = False
    resp = post(client, fixture("push"), key=key)  # GitLab's retry, same key
    assert resp.status_code == 202 and resp.json()["status"] == "accepted"


def test_dedupe_store_down_is_503_with_nothing_enqueued(
    client: TestClient, disp: RecordingDispatcher, monkeypatch: pytest.MonkeyPatch
):
    import redis

    from tests.standin import free_port
    from webhooks.dedupe import RedisDeduper

    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    monkeypatch.setattr(client.app.state, "webhook_deduper", RedisDeduper(dead), raising=False)
    resp = post(client, fixture("push"), key="0ff11e00-0000-4000-8000-000000000005")
    assert_error(resp, 503, "unavailable")
    assert disp.pushes == []


def test_a_key_that_could_not_be_remembered_is_not_a_lost_push(
    client: TestClient, disp: RecordingDispatcher, monkeypatch: pytest.MonkeyPatch
):
    """Redis failing between the enqueue and remembering the key: the push is recorded, so
    the answer is 202, and GitLab's retry is enqueued again (folding makes that harmless)
    rather than answered "duplicate" for a push that might not exist."""
    from coderag.errors import TransientError
    from webhooks.dedupe import MemoryDeduper

    class ForgetfulDeduper(MemoryDeduper):
        def remember(self, key: str) -> None:
            raise TransientError("redis unavailable: ConnectionError")

    monkeypatch.setattr(client.app.state, "webhook_deduper", ForgetfulDeduper(), raising=False)
    key = "0ff11e00-0000-4000-8000-000000000006"
    first = post(client, fixture("push"), key=key)
    again = post(client, fixture("push"), key=key)
    assert first.status_code == 202 and again.status_code == 202
    assert len(disp.pushes) == 2 and disp.pushes[0][1:3] == disp.pushes[1][1:3]


def test_dedupe_in_redis_is_shared_by_api_replicas(
    tmp_path: Path, settings: Settings, disp: RecordingDispatcher, redis_db: Any
):
    key = "7e57e57e-0000-4000-8000-000000000004"
    answers = []
    for replica in ("a", "b"):  # two apps, one Redis: a retry may reach the other replica
        app = make_app(tmp_path / replica, settings, disp, redis=redis_db)
        with TestClient(app) as c:
            answers.append(post(c, fixture("push"), key=key).json()["status"])
        app.state.index.close()
    assert answers == ["accepted", "duplicate"]
    assert redis_db.ttl(f"coderag:idem:{REPO}:{key}") > 23 * 3600

