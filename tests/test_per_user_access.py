"""Per-user access over time: a member removed in GitLab loses access within the TTL, the
identity provider down leaves cached keys verifying, GitLab down fails closed, and the audit
line names the person.

The app runs over real HTTP on loopback with OIDC tokens of a test issuer
(:class:`tests.oidc_issuer.TestIssuer`) and permissions read from a fake GitLab answering with
recorded-shape payloads (:class:`tests.gitlab_mock.FakeGitLab`); the index, the model and
the retrieval are real. The permissions TTL is one second here so that expiry is observable.
The isolation matrix (every endpoint x every filter x every person) is in
``tests/test_isolation.py``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from coderag.settings import Settings
from tests.api_support import ALPHA, BETA, serve_for_people
from tests.gitlab_mock import FakeGitLab
from tests.oidc_issuer import TestIssuer

pytestmark = pytest.mark.integration

TTL = 1.0
PROJECTS = {ALPHA: 301, BETA: 302}
USERS = {  # username -> (id, {repo: access level})
    "alice": (31, {ALPHA: 20}),
    "bob": (32, {BETA: 30}),
    "rita": (33, {ALPHA: 30}),  # revoked by a test
    "dora": (34, {ALPHA: 20}),  # first asked while GitLab is down
}


@dataclass
class People:
    url: str
    http: httpx.Client
    idp: TestIssuer
    gitlab: FakeGitLab

    def as_user(self, username: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.idp.mint(username=username, sub=f's-{username}')}"}

    def search(self, username: str, query: str, **body: Any) -> httpx.Response:
        return self.http.post(
            "/v1/search", json={"query": query, "k": 20, **body}, headers=self.as_user(username)
        )


@pytest.fixture(scope="module")
def people(
    tmp_path_factory: pytest.TempPathFactory, embedder: Any, model_dir: Path
) -> Iterator[People]:
    root = tmp_path_factory.mktemp("people")
    with (
        serve_for_people(
            root, embedder, model_dir, PROJECTS, USERS, permissions_ttl_seconds=TTL
        ) as srv,
        httpx.Client(base_url=srv.url, timeout=60, trust_env=False) as http,
    ):
        yield People(srv.url, http, srv.idp, srv.gitlab)


def _paths(resp: httpx.Response) -> set[str]:
    return {f"{r['repo']}:{r['path']}" for r in resp.json()["results"]}


def test_a_person_reads_exactly_their_gitlab_projects(people: People):
    alice = people.search("alice", "refund a settled payment")
    bob = people.search("bob", "close the ledger for a day")
    assert alice.status_code == bob.status_code == 200
    assert _paths(alice) and all(p.startswith(f"{ALPHA}:") for p in _paths(alice))
    assert _paths(bob) and all(p.startswith(f"{BETA}:") for p in _paths(bob))
    # Naming the other's repo is refused with a reason, never narrowed to nothing.
    denied = people.search("alice", "close the ledger", repos=[BETA])
    assert denied.status_code == 403
    assert denied.json()["detail"] == f"user alice may not read: {BETA}"
    listed = people.http.get("/v1/repos", headers=people.as_user("bob")).json()["repos"]
    assert [r["id"] for r in listed] == [BETA]
    status = people.http.get(f"/v1/repos/{ALPHA}/status", headers=people.as_user("bob"))
    assert status.status_code == 403


def test_a_removed_member_loses_access_within_the_ttl(people: People):
    before = people.search("rita", "refund a settled payment")
    assert before.status_code == 200 and _paths(before)
    uid = USERS["rita"][0]
    people.gitlab.remove_member(ALPHA, uid)
    t_removed = time.monotonic()
    deadline = t_removed + TTL + 5  # the TTL, plus the time a request takes here
    while True:
        resp = people.search("rita", "refund a settled payment")
        if resp.status_code == 403:
            break
        assert resp.status_code == 200
        assert time.monotonic() < deadline, "access outlived the permissions TTL"
        time.sleep(0.1)
    gone_after = time.monotonic() - t_removed
    assert resp.json()["error_code"] == "forbidden"
    assert "refund_payment" not in resp.text
    print(f"\nACCESS-FIGURE {json.dumps({'revoked_access_gone_after_s': round(gone_after, 2)})}")
    people.gitlab.set_member(ALPHA, uid, 30)  # and granted again, read again after the TTL
    time.sleep(TTL + 0.1)
    assert _paths(people.search("rita", "refund a settled payment"))


def test_gitlab_down_fails_closed_and_cached_answers_still_count(people: People):
    assert people.search("alice", "refund a settled payment").status_code == 200
    people.gitlab.down(503)
    try:
        cached = people.search("alice", "refund a settled payment")  # within the TTL
        never_asked = people.search("dora", "refund a settled payment")
        time.sleep(TTL + 0.1)
        expired = people.search("alice", "refund a settled payment")
    finally:
        people.gitlab.up()
    assert cached.status_code == 200 and _paths(cached)
    for resp in (never_asked, expired):
        assert resp.status_code == 503, resp.text
        err = resp.json()
        assert err["error_code"] == "permissions_unavailable"
        assert err["detail"].startswith("GitLab could not be asked what this user may read")
        assert "refund_payment" not in resp.text and "results" not in err
    assert people.gitlab.token not in never_asked.text
    assert people.search("dora", "refund a settled payment").status_code == 200  # GitLab back


def test_the_identity_provider_down_leaves_cached_keys_verifying(people: People):
    assert people.search("bob", "close the ledger").status_code == 200  # keys fetched
    people.idp.down()
    try:
        fresh = people.search("bob", "close the ledger for a day")  # a new token, same key
        forged = people.http.post(
            "/v1/search",
            json={"query": "close the ledger"},
            headers={"Authorization": f"Bearer {people.idp.tampered_token(username='bob')}"},
        )
    finally:
        people.idp.up()
    assert fresh.status_code == 200 and _paths(fresh)
    assert forged.status_code == 401 and forged.json()["detail"] == "invalid signature"


def test_the_audit_line_names_the_person_not_the_query(
    people: People, caplog: pytest.LogCaptureFixture
):
    query = "close the ledger for a day"
    with caplog.at_level(logging.INFO, logger="coderag.audit"):
        resp = people.search("bob", query)
        assert resp.status_code == 200
        deadline = time.monotonic() + 5
        while not [r for r in caplog.records if r.name == "coderag.audit"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    line = [r for r in caplog.records if r.name == "coderag.audit"][-1]
    assert line.username == "bob" and line.subject == "s-bob"  # type: ignore[attr-defined]
    assert line.token_kind == "oidc"  # type: ignore[attr-defined]
    assert line.repos == [BETA] and line.results == len(resp.json()["results"])  # type: ignore[attr-defined]
    assert line.latency_ms > 0  # type: ignore[attr-defined]
    assert not hasattr(line, "query") and line.query_chars == len(query)  # type: ignore[attr-defined]
    assert "close_ledger" not in line.getMessage()


def test_a_refused_token_is_audited_with_its_reason(
    people: People, caplog: pytest.LogCaptureFixture
):
    expired = people.idp.mint(username="bob", exp_in=-120)
    with caplog.at_level(logging.INFO, logger="coderag.audit"):
        resp = people.http.post(
            "/v1/search", json={"query": "x"}, headers={"Authorization": f"Bearer {expired}"}
        )
    assert resp.status_code == 401 and resp.json()["detail"] == "token expired"
    refused = [r for r in caplog.records if r.getMessage() == "auth_refused"]
    assert refused and refused[-1].reason == "token expired"  # type: ignore[attr-defined]
    assert refused[-1].path == "/v1/search"  # type: ignore[attr-defined]
    assert all(expired not in str(r.__dict__) for r in caplog.records)


# --- settings that cannot work are refused at start ------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"oidc_issuer": "https://idp.example.com/realms/bank"}, "reads permissions from GitLab"),
        ({"delegation_tokens": ["gateway-0123456789abcdef"]}, "reads permissions from GitLab"),
        ({"oidc_algorithms": ["RS256", "HS256"]}, "HS*"),
        ({"oidc_algorithms": ["none"]}, "'none' verifies nothing"),
        (
            {
                "api_tokens": {"same-token-0123456789": ["*"]},
                "delegation_tokens": ["same-token-0123456789"],
                "gitlab_url": "https://gitlab.example.com",
                "gitlab_token": "glpat-0123456789abcdef",
            },
            "both a service token and a delegation token",
        ),
        ({"delegation_tokens": ["short"]}, "at least 16 characters"),
    ],
)
def test_unworkable_identity_settings_are_refused(
    tmp_path: Path, fields: dict[str, Any], message: str
):
    with pytest.raises(ValidationError, match=message.replace("*", r"\*")):
        Settings(data_dir=tmp_path, **fields)


def test_audience_and_algorithms_read_as_words_or_json(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CODERAG_OIDC_AUDIENCE", "coderag")
    monkeypatch.setenv("CODERAG_OIDC_ALGORITHMS", "RS256, ES256")
    s = Settings()
    assert s.oidc_audience == ["coderag"] and s.oidc_algorithms == ["RS256", "ES256"]
    monkeypatch.setenv("CODERAG_OIDC_AUDIENCE", '["coderag", "coderag-ide"]')
    assert Settings().oidc_audience == ["coderag", "coderag-ide"]
