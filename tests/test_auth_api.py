"""The auth matrix over HTTP: a token scoped to repo A never sees a chunk of repo B, through
any endpoint and any filter combination."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.api_support import ALPHA, BETA, ApiServer

pytestmark = pytest.mark.integration

B_QUERY = "close_ledger settle_payment_batch beta ledger unsettled payment"


def post(api: ApiServer, path: str, body: dict[str, Any], role: str | None) -> httpx.Response:
    headers = api.auth(role) if role else {}
    return httpx.post(f"{api.url}{path}", json=body, headers=headers, timeout=30, trust_env=False)


def search_repos(api: ApiServer, role: str, **body: Any) -> set[str]:
    resp = post(api, "/v1/search", {"query": B_QUERY, "k": 50, **body}, role)
    assert resp.status_code == 200, resp.text
    return {r["repo"] for r in resp.json()["results"]}


def context_repos(api: ApiServer, role: str, **body: Any) -> set[str]:
    resp = post(api, "/v1/context", {"query": B_QUERY, "k": 50, **body}, role)
    assert resp.status_code == 200, resp.text
    return {b["repo"] for b in resp.json()["blocks"]}


def continue_repos(api: ApiServer, role: str, **options: Any) -> set[str]:
    resp = post(api, "/v1/continue/context", {"fullInput": B_QUERY, "options": options}, role)
    assert resp.status_code == 200, resp.text
    return {it["description"].split(":")[0] for it in resp.json()}


READS: dict[str, Callable[..., set[str]]] = {
    "search": search_repos,
    "context": context_repos,
    "continue": continue_repos,
}


def test_the_query_does_find_beta_for_a_token_that_may_read_it(api_server: ApiServer):
    assert BETA in search_repos(api_server, "admin")  # the matrix below would be vacuous else
    assert search_repos(api_server, "beta") == {BETA}


@pytest.mark.parametrize("endpoint", sorted(READS))
@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"branch": "main"},
        {"path_globs": ["src/beta/**"]},
        {"path_globs": ["src/**/*.py"], "languages": ["python"]},
        {"mode": "lexical"},
        {"mode": "dense"},
    ],
    ids=["none", "branch", "beta-glob", "glob+lang", "lexical", "dense"],
)
def test_alpha_token_never_sees_beta(api_server: ApiServer, endpoint: str, filters: dict):
    seen = READS[endpoint](api_server, "alpha", **filters)
    assert BETA not in seen
    assert seen <= {ALPHA}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/search", {"query": "x", "repos": [BETA]}),
        ("/v1/search", {"query": "x", "repos": [ALPHA, BETA]}),
        ("/v1/context", {"query": "x", "repos": [BETA]}),
        ("/v1/continue/context", {"fullInput": "x", "options": {"repo": BETA}}),
        ("/v1/continue/context", {"fullInput": "x", "options": {"repos": [ALPHA, BETA]}}),
        ("/v1/continue/context", {"fullInput": "", "options": {"repo": BETA}}),
    ],
)
def test_asking_for_an_out_of_scope_repo_is_403(api_server: ApiServer, path: str, body: dict):
    resp = post(api_server, path, body, "alpha")
    assert resp.status_code == 403, resp.text
    assert resp.json()["error_code"] == "forbidden"


def test_status_of_an_out_of_scope_repo_is_403(api_server: ApiServer):
    get = httpx.get(
        f"{api_server.url}/v1/repos/{BETA}/status",
        headers=api_server.auth("alpha"),
        trust_env=False,
    )
    assert get.status_code == 403
    ok = httpx.get(
        f"{api_server.url}/v1/repos/{ALPHA}/status",
        headers=api_server.auth("alpha"),
        trust_env=False,
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-valid-token-at-all"},
        {"Authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "wrong", "basic", "empty"],
)
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/search", {"query": "payment"}),
        ("POST", "/v1/context", {"query": "payment"}),
        ("POST", "/v1/continue/context", {"fullInput": "payment"}),
        ("GET", f"/v1/repos/{ALPHA}/status", None),
    ],
)
def test_missing_or_wrong_token_is_401(
    api_server: ApiServer, headers: dict, method: str, path: str, body: dict | None
):
    resp = httpx.request(
        method, f"{api_server.url}{path}", json=body, headers=headers, trust_env=False
    )
    assert resp.status_code == 401, resp.text
    assert resp.json()["error_code"] == "unauthorized"
    assert resp.headers["www-authenticate"] == "Bearer"


def test_a_token_with_no_repos_reads_nothing(api_server: ApiServer):
    resp = post(api_server, "/v1/search", {"query": "payment"}, "none")
    assert resp.status_code == 403
    resp = post(api_server, "/v1/continue/context", {"fullInput": "payment"}, "none")
    assert resp.status_code == 403


def test_probes_and_metrics_need_no_token(api_server: ApiServer):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{api_server.url}{path}", trust_env=False).status_code == 200
