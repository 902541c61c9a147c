"""The Continue ``http`` context provider contract, over HTTP, against the rules of Continue's
own code (continuedev/continue; see ``retriever/continue_items.py`` for each file):

* ``HttpContextProvider.ts`` never reads the HTTP status: any JSON object becomes one item from
  its ``name``/``description``/``content``, so errors must be items the user can read;
* ``resolveEditorContent.ts`` drops an item whose ``uri`` type + value equals an earlier one;
* ``ContextItemsPeek.tsx`` + ``core/commands/util.ts`` jump to lines for a name
  ``file.py (10-42)``, and open ``url`` uris in the browser.
"""

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
        assert set(it["uri"]) == {"type", "value"} and it["uri"]["type"] in ("file", "url")
        assert all(isinstance(it[k], str) for k in ("name", "description", "content"))
    uris = [(it["uri"]["type"], it["uri"]["value"]) for it in out]
    assert len(set(uris)) == len(uris), f"Continue would drop items with a repeated uri: {uris}"
    return out


def line_range(name: str) -> tuple[int, int] | None:
    """Continue's reading of an item name (``ContextItemsPeek.tsx`` ``isRangeInFile``, then
    ``ctxItemToRifWithContents``: the text after the first ``(``, up to ``)``, split on
    ``-``); None when Continue would only open the file."""
    if not (" (" in name and name.endswith(")")):
        return None
    lines = name.split("(")[1].split(")")[0].split("-")
    return int(lines[0]), int(lines[1])


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
    assert first["name"].startswith("payments.py (")
    start, end = line_range(first["name"]) or (0, 0)
    assert 1 <= start <= end and f"lines {start}-" in first["content"]
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
    assert {"error_code", "detail"} <= set(err) and fragment in err["detail"]
    assert fragment in err["content"]  # and Continue shows it as an item


def test_regions_of_one_file_are_one_item_and_nothing_is_dropped(client: httpx.Client):
    """Small chunks of one file come back as one item holding every region (Continue would
    keep only the first of several items with the file's uri)."""
    out = items(
        client,
        {"fullInput": "settle refund payment ledger", "options": {"repo": ALPHA, "k": 20}},
    )
    paths = [it["description"].split(" (lines")[0] for it in out]
    assert len(paths) == len(set(paths))
    payments = next(it for it in out if "src/alpha/payments.py" in it["description"])
    assert "settle_payment" in payments["content"] and "refund_payment" in payments["content"]


def test_one_path_in_two_repos_gives_two_items(client: httpx.Client, api_server: ApiServer):
    out = items(
        client,
        {
            "fullInput": "settle payment",
            "options": {"repos": [ALPHA, BETA], "k": 20},
            "workspacePath": "/home/dev/alpha",
        },
    )
    repos = {it["description"].split(":")[0] for it in out}
    assert repos == {ALPHA, BETA}
    # Two repos named: no file of either is claimed to be under the one workspace.
    assert not any(it["uri"]["value"].startswith("/home/dev/alpha/") for it in out)


def test_errors_are_items_the_user_reads(api_server: ApiServer):
    """401/403/422 answers keep their status and ``error_code`` and are also one readable
    item, since Continue shows whatever JSON comes back as items."""
    with httpx.Client(base_url=api_server.url, timeout=30, trust_env=False) as http:
        cases = [
            (http.post(URL, json={"fullInput": "x"}), 401, "unauthorized"),
            (
                http.post(
                    URL,
                    json={"fullInput": "x", "options": {"repo": BETA}},
                    headers=api_server.auth("alpha"),
                ),
                403,
                "forbidden",
            ),
            (
                http.post(
                    URL,
                    json={"fullInput": "x", "options": {"k": 0}},
                    headers=api_server.auth("alpha"),
                ),
                422,
                "validation_error",
            ),
        ]
    for resp, status, code in cases:
        assert resp.status_code == status
        body = resp.json()
        assert body["error_code"] == code and body["detail"]
        # What Continue makes of it: one item, named and with content that says why.
        assert body["name"] == f"coderag: {code}"
        assert body["detail"] in body["content"] and body["content"].startswith("coderag could")


def test_items_of_other_repos_link_to_gitlab():
    from retriever.context import ContextBlock
    from retriever.continue_items import continue_items, gitlab_file_url

    assert (
        gitlab_file_url("https://gitlab.bank.internal/pay/core.git", "main", "src/a.py", 3, 9)
        == "https://gitlab.bank.internal/pay/core/-/blob/main/src/a.py#L3-9"
    )
    assert gitlab_file_url("git@gitlab.bank.internal:pay/core.git", "HEAD", "a.py", 1, 2) == (
        "https://gitlab.bank.internal/pay/core/-/blob/HEAD/a.py#L1-2"
    )
    assert gitlab_file_url("https://ci:tok@gitlab.bank.internal/pay/core.git", "m", "a", 1, 1) == (
        "https://gitlab.bank.internal/pay/core/-/blob/m/a#L1-1"
    )
    assert gitlab_file_url("/srv/git/core", "main", "a.py", 1, 2) is None

    def block(repo: str, path: str, start: int, end: int) -> ContextBlock:
        return ContextBlock(repo, path, "python", start, end, "x = 1\n", 1.0, ("x",))

    blocks = [block("pay/core", "a.py", 10, 20), block("pay/lib", "a.py", 1, 5)]
    urls = {"pay/core": "https://g/pay/core.git", "pay/lib": "https://g/pay/lib.git"}
    entries = continue_items(
        blocks, workspace="/ws", workspace_repo="pay/core", clone_url=urls.get, ref="main"
    )
    assert [(e.uri.type, e.uri.value) for e in entries] == [
        ("file", "/ws/a.py"),
        ("url", "https://g/pay/lib/-/blob/main/a.py#L1-5"),
    ]
    assert [e.name for e in entries] == ["a.py (10-20)", "a.py (1-5)"]
