"""The Continue ``http`` context provider contract, over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api_support import ALPHA, BETA, ApiServer

pytestmark = pytest.mark.integration

URL = "/v1/continue/context"


@pytest.fixture
def client(api_server: ApiServer):  # type: ignore[no-untyped-def]
    with httpx.Client(
        base_url=api_server.url, headers=api_server.auth("admin"), timeout=30, trust_env=False
    ) as c:
        yield c


def items(client: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    resp = client.post(URL, json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert isinstance(out, list)
    for it in out:  # exactly the fields Continue reads, nothing else
        assert set(it) == {"name", "description", "content", "uri"}
        assert set(it["uri"]) == {"type", "value"} and it["uri"]["type"] == "file"
        assert all(isinstance(it[k], str) for k in ("name", "description", "content"))
    return out


def test_empty_query_searches_full_input_and_options_pick_repo_and_branch(client: httpx.Client):
    out = items(
        client,
        {
            "query": "",
            "fullInput": "@coderag How do we refund a payment that was already settled?",
            "options": {"repo": ALPHA, "branch": "main"},
        },
    )
    assert out
    first = out[0]
    assert first["content"].startswith("```python src/alpha/payments.py (lines ")
    assert first["content"].endswith("```")
    assert "refund_payment" in first["content"]
    assert first["name"].startswith("payments.py:")
    assert first["description"].startswith(f"{ALPHA}: src/alpha/payments.py (lines ")
    assert first["uri"]["value"] == "src/alpha/payments.py"
    assert all(f"{BETA}:" not in it["description"] for it in out)


def test_query_wins_over_full_input_when_given(client: httpx.Client):
    out = items(
        client,
        {
            "query": "parse_header_links",
            "fullInput": "@coderag how do we settle payments",
            "options": {"repo": ALPHA},
        },
    )
    assert "parse_header_links" in out[0]["content"]


def test_workspace_path_makes_absolute_file_uris(client: httpx.Client):
    out = items(
        client,
        {
            "query": "",
            "fullInput": "parse a Link header",
            "options": {"repo": ALPHA},
            "workspacePath": "/home/dev/alpha",
        },
    )
    assert out[0]["uri"]["value"].startswith("/home/dev/alpha/src/alpha/")
    uri_ws = items(
        client,
        {"fullInput": "parse a Link header", "options": {"repo": ALPHA},
         "workspacePath": "file:///home/dev/alpha"},
    )  # fmt: skip
    assert uri_ws[0]["uri"]["value"].startswith("file:///home/dev/alpha/src/alpha/")


def test_branch_option_is_honoured(client: httpx.Client):
    body = {"fullInput": "experimental_fee_waiver", "options": {"repo": ALPHA, "mode": "lexical"}}
    feature = items(client, {**body, "options": {**body["options"], "branch": "feature/x"}})
    main = items(client, {**body, "options": {**body["options"], "branch": "main"}})
    assert any("experimental_fee_waiver" in it["content"] for it in feature)
    assert not any("experimental_fee_waiver" in it["content"] for it in main)


def test_optional_fields_may_be_missing_and_unknown_ones_are_ignored(client: httpx.Client):
    assert items(client, {}) == []
    assert items(client, {"query": "", "fullInput": "   "}) == []
    out = items(client, {"fullInput": "close the ledger for a day", "newField": {"x": 1}})
    assert out  # no options: the token's scope (admin: every repo)
    out = items(
        client,
        {
            "fullInput": "settle payment",
            "options": {"repos": f"{ALPHA}, {BETA}", "k": 3, "token_budget": 200, "x": 1},
        },
    )
    assert out and sum(len(it["content"]) for it in out) < 200 * 8


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"query": 5, "fullInput": "x"}, "query"),
        ({"fullInput": ["x"]}, "fullInput"),
        ({"fullInput": "x", "options": "repo=a"}, "options"),
        ({"fullInput": "x", "options": {"k": "many"}}, "options.k"),
        ({"fullInput": "x", "options": {"repo": 7}}, "options.repo"),
        ({"fullInput": "x", "workspacePath": 1}, "workspacePath"),
    ],
)
def test_wrong_types_are_422_with_a_reason(
    client: httpx.Client, body: dict[str, Any], fragment: str
):
    resp = client.post(URL, json=body)
    assert resp.status_code == 422, resp.text
    err = resp.json()
    assert set(err) == {"error_code", "detail"} and fragment in err["detail"]
