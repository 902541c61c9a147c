"""Signed deliveries (Standard Webhooks, as GitLab signs them), the signing token's storage,
and the hook coderag asks GitLab for (signing token, merge request events).

Signatures are computed here the way GitLab computes them (HMAC-SHA256 over
``"{webhook-id}.{webhook-timestamp}.{raw body}"``, ``v1,<base64>``), independently of
:func:`webhooks.signature.sign`, so a bug shared by both sides would not pass unnoticed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from coderag.errors import ConfigError
from coderag.index.edge import EdgeIndex
from coderag.repos import RepoRecord, RepoRegistry, hash_secret
from coderag.secretbox import SecretBox
from coderag.settings import Settings
from tests.gitlab_mock import FakeGitLab
from tests.test_webhooks import (
    REPO,
    SECRET,
    RecordingDispatcher,
    assert_error,
    close_app,
    fixture,
    make_app,
)
from webhooks.gitlab_hooks import register_repo
from webhooks.routes import WEBHOOK_PATH
from webhooks.signature import new_signing_token, sign, signing_key

SECRET_KEY = "k3y-for-signing-tokens-at-rest-0123456789abcdef"
TOKEN = new_signing_token()
KEY = signing_key(TOKEN)


def gitlab_signature(key: bytes, msg_id: str, ts: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", secret_key=SECRET_KEY)


@pytest.fixture
def disp() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def client(tmp_path: Path, settings: Settings, disp: RecordingDispatcher) -> Iterator[TestClient]:
    app = make_app(tmp_path, settings, disp)
    registry: RepoRegistry = app.state.registry
    rec = registry.require(REPO)
    sealed = SecretBox(settings.secret_key).encrypt(KEY)
    registry.put(rec.model_copy(update={"signing_token_enc": sealed}))
    with TestClient(app) as c:
        yield c
    close_app(app)


def deliver(
    c: TestClient,
    body: bytes,
    *,
    msg_id: str | None = None,
    ts: int | None = None,
    signature: str | None = None,
    key: bytes = KEY,
    token: str | None = SECRET,
    idempotency_key: str | None = None,
) -> Any:
    msg_id = msg_id or str(uuid.uuid4())
    ts = int(time.time()) if ts is None else ts
    headers = {
        "Content-Type": "application/json",
        "X-Gitlab-Event": "Push Hook",
        "webhook-id": msg_id,
        "Idempotency-Key": idempotency_key or msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature or gitlab_signature(key, msg_id, ts, body),
    }
    if token:
        headers["X-Gitlab-Token"] = token
    return c.post(WEBHOOK_PATH, content=body, headers=headers)


BODY = json.dumps(fixture("push")).encode()


def test_a_validly_signed_delivery_is_accepted(client: TestClient, disp: RecordingDispatcher):
    resp = deliver(client, BODY)
    assert resp.status_code == 202 and resp.json()["status"] == "accepted", resp.text
    assert len(disp.pushes) == 1


def test_sign_matches_gitlab_form():
    ts = 1_700_000_000
    assert sign(KEY, "msg_1", ts, BODY) == gitlab_signature(KEY, "msg_1", ts, BODY)


@pytest.mark.parametrize(
    "case",
    ["tampered body", "wrong key", "stale", "future", "no signature", "garbage", "v2 only"],
)
def test_bad_signatures_are_401(client: TestClient, disp: RecordingDispatcher, case: str):
    ts = int(time.time())
    msg_id = str(uuid.uuid4())
    good = gitlab_signature(KEY, msg_id, ts, BODY)
    kw: dict[str, Any] = {"msg_id": msg_id, "ts": ts}
    body = BODY
    if case == "tampered body":
        body = BODY.replace(b'"main"', b'"evil"', 1)
        kw["signature"] = good
    elif case == "wrong key":
        kw["key"] = signing_key(new_signing_token())
    elif case in ("stale", "future"):
        kw["ts"] = ts - 301 if case == "stale" else ts + 301
    elif case == "no signature":
        kw["signature"] = " "
    elif case == "garbage":
        kw["signature"] = "v1,!!!notbase64 v1," + base64.b64encode(b"x" * 32).decode()
    elif case == "v2 only":
        kw["signature"] = "v2," + good.split(",", 1)[1]
    resp = deliver(client, body, **kw)
    assert_error(resp, 401, "unauthorized")
    assert disp.pushes == []


def test_one_valid_signature_among_several_is_enough(
    client: TestClient, disp: RecordingDispatcher
):
    ts, msg_id = int(time.time()), str(uuid.uuid4())
    old_key = signing_key(new_signing_token())
    header = " ".join(
        [
            gitlab_signature(old_key, msg_id, ts, BODY),  # a rotated-out key
            "v1a,whatever",
            gitlab_signature(KEY, msg_id, ts, BODY),
        ]
    )
    resp = deliver(client, BODY, msg_id=msg_id, ts=ts, signature=header)
    assert resp.status_code == 202, resp.text
    assert len(disp.pushes) == 1


def test_a_replayed_webhook_id_is_a_duplicate_even_with_a_new_idempotency_key(
    client: TestClient, disp: RecordingDispatcher
):
    """Idempotency-Key is not signed: a replay within the tolerance that changes it is still
    the same signed ``webhook-id``, so it is never processed twice."""
    ts, msg_id = int(time.time()), str(uuid.uuid4())
    first = deliver(client, BODY, msg_id=msg_id, ts=ts)
    again = deliver(client, BODY, msg_id=msg_id, ts=ts, idempotency_key=str(uuid.uuid4()))
    assert first.status_code == 202 and again.status_code == 200
    assert again.json() == {"status": "duplicate"}
    assert len(disp.pushes) == 1


def test_a_signed_hook_still_needs_its_token(client: TestClient, disp: RecordingDispatcher):
    assert_error(deliver(client, BODY, token=None), 401, "unauthorized")
    assert_error(deliver(client, BODY, token="wrong"), 401, "unauthorized")
    assert disp.pushes == []


def test_an_unsigned_hook_ignores_signature_headers(tmp_path: Path, disp: RecordingDispatcher):
    """X-Gitlab-Token alone still works for hooks without a signing token (older GitLab)."""
    app = make_app(tmp_path, Settings(data_dir=tmp_path / "d"), disp)
    with TestClient(app) as c:
        resp = deliver(c, BODY, signature="v1,AAAA")
    close_app(app)
    assert resp.status_code == 202, resp.text


def test_a_changed_secret_key_is_a_500_config_error_not_a_401(
    tmp_path: Path, disp: RecordingDispatcher
):
    app = make_app(tmp_path, Settings(data_dir=tmp_path / "d", secret_key=SECRET_KEY), disp)
    registry: RepoRegistry = app.state.registry
    other = SecretBox("another-key-for-signing-tokens-0123456789abcdef").encrypt(KEY)
    registry.put(registry.require(REPO).model_copy(update={"signing_token_enc": other}))
    with TestClient(app) as c:
        resp = deliver(c, BODY)
    close_app(app)
    assert_error(resp, 500, "config_error")
    assert "CODERAG_SECRET_KEY" in resp.json()["detail"]


# --- storage and settings -------------------------------------------------------------------
def test_secretbox_round_trip_and_tamper():
    box = SecretBox(SECRET_KEY)
    sealed = box.encrypt(KEY)
    assert box.decrypt(sealed) == KEY and KEY.hex() not in sealed
    assert box.encrypt(KEY) != sealed  # a fresh nonce each time
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(ConfigError):
        box.decrypt(flipped)
    with pytest.raises(ConfigError, match="CODERAG_SECRET_KEY"):
        SecretBox(None)


@pytest.mark.parametrize("value", ["changeme", "short-key", "a" * 40])
def test_a_placeholder_secret_key_is_refused(value: str):
    with pytest.raises(ValidationError):
        Settings(secret_key=value)


def test_signing_token_format():
    tok = new_signing_token()
    assert tok.startswith("whsec_") and len(base64.b64decode(tok[6:])) == 32
    with pytest.raises(ValueError):
        signing_key("not-a-token")


# --- the hook GitLab is asked for -----------------------------------------------------------
GL_TOKEN = "glpat-Zx81kQ2vN7tR4pL0sW9y"
CLONE = "https://gitlab.example.com/banking/payments-core.git"


class Recorder:
    def submit_reindex(self, repo_id: str, *, full: bool = True) -> str:
        return "task-1"


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab(GL_TOKEN) as gl:
        gl.add_project(REPO, 15, CLONE)
        yield gl


def _registry(tmp_path: Path) -> tuple[EdgeIndex, RepoRegistry]:
    index = EdgeIndex(tmp_path / "index")
    return index, RepoRegistry(index)


@pytest.mark.parametrize("mr", [False, True])
def test_hook_asks_for_merge_request_events_only_when_they_are_indexed(
    tmp_path: Path, gitlab: FakeGitLab, mr: bool
):
    settings = Settings(
        data_dir=tmp_path / "d",
        gitlab_url=gitlab.url,
        gitlab_token=GL_TOKEN,
        public_url="https://coderag.bank.internal",
        index_merge_requests=mr,
    )
    index, registry = _registry(tmp_path)
    try:
        register_repo(settings, registry, Recorder(), f"{gitlab.url}/{REPO}")
    finally:
        index.close()
    [create] = [r for r in gitlab.requests if r.method == "POST"]
    assert create.body["merge_requests_events"] is mr
    assert "signing_token" not in create.body


def test_signed_registration_sends_the_token_to_gitlab_and_stores_it_sealed(
    tmp_path: Path, gitlab: FakeGitLab
):
    settings = Settings(
        data_dir=tmp_path / "d",
        gitlab_url=gitlab.url,
        gitlab_token=GL_TOKEN,
        public_url="https://coderag.bank.internal",
        secret_key=SECRET_KEY,
    )
    index, registry = _registry(tmp_path)
    try:
        reg = register_repo(settings, registry, Recorder(), f"{gitlab.url}/{REPO}", signed=True)
        rec = registry.require(REPO)
    finally:
        index.close()
    [create] = [r for r in gitlab.requests if r.method == "POST"]
    token = create.body["signing_token"]
    assert token.startswith("whsec_") and create.body["token"] == reg.secret
    assert reg.signing_token is None  # it went to GitLab; shown to nobody
    assert rec.signing_token_enc and token not in rec.signing_token_enc
    assert SecretBox(SECRET_KEY).decrypt(rec.signing_token_enc) == signing_key(token)
    state = (tmp_path / "index" / "coderag.state.json").read_text()
    assert token not in state and token.removeprefix("whsec_") not in state
    assert reg.as_dict()["repo"]["signed"] is True
    assert "signing_token_enc" not in reg.as_dict()["repo"]


def test_signed_registration_without_a_secret_key_creates_no_hook(
    tmp_path: Path, gitlab: FakeGitLab
):
    settings = Settings(
        data_dir=tmp_path / "d",
        gitlab_url=gitlab.url,
        gitlab_token=GL_TOKEN,
        public_url="https://coderag.bank.internal",
    )
    index, registry = _registry(tmp_path)
    try:
        with pytest.raises(ConfigError, match="CODERAG_SECRET_KEY"):
            register_repo(settings, registry, Recorder(), f"{gitlab.url}/{REPO}", signed=True)
        assert registry.list() == []
    finally:
        index.close()
    assert gitlab.requests == [] and gitlab.hooks == {}


def test_manual_signed_registration_returns_the_token_once(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "d", secret_key=SECRET_KEY)
    index, registry = _registry(tmp_path)
    try:
        reg = register_repo(
            settings, registry, Recorder(), str(tmp_path / "r.git"), repo_id="local/r", signed=True
        )
        rec = registry.require("local/r")
    finally:
        index.close()
    assert reg.signing_token and reg.signing_token.startswith("whsec_")
    assert SecretBox(SECRET_KEY).decrypt(rec.signing_token_enc or "") == signing_key(
        reg.signing_token
    )
    assert "signing token" in (reg.warning or "")


def test_record_public_view_hides_the_sealed_token():
    rec = RepoRecord(
        id="a/b", url="x", secret_hash=hash_secret("s"), signing_token_enc="v1:abc"
    )
    pub = rec.public()
    assert pub["signed"] is True and "signing_token_enc" not in pub and "secret_hash" not in pub
