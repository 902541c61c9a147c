"""The Model Context Protocol at ``/mcp``: the SDK's own client over real HTTP, per person.

The app is the real one (``create_app``) over uvicorn on loopback, with OIDC tokens of a test
issuer and permissions read from a fake GitLab, as in ``tests/test_per_user_access.py``: alice
may read ``group/alpha``, bob ``group/beta``. The client is ``mcp``'s
``streamable_http_client`` + ``ClientSession``, so the transport, the tool schemas and the
structured output are what any MCP host sees.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import httpx2
import pytest
import yaml
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.api_support import ALPHA, BETA, serve_for_people
from tests.oidc_issuer import TestIssuer

pytestmark = pytest.mark.integration

PROJECTS = {ALPHA: 401, BETA: 402}
USERS = {"alice": (41, {ALPHA: 20}), "bob": (42, {BETA: 30})}
T = TypeVar("T")


@dataclass
class Stack:
    url: str
    idp: TestIssuer

    def bearer(self, username: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.idp.mint(username=username, sub=f's-{username}')}"}

    def session(self, username: str, fn: Callable[[ClientSession], Awaitable[T]]) -> T:
        """Run ``fn`` in an initialized MCP session as ``username``."""

        async def main() -> T:
            async with (
                httpx2.AsyncClient(headers=self.bearer(username), timeout=60) as http,
                streamable_http_client(f"{self.url}/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                return await fn(session)

        return anyio.run(main)

    def call(self, username: str, tool: str, **arguments: Any) -> Any:
        async def go(s: ClientSession) -> Any:
            return await s.call_tool(tool, arguments)

        return self.session(username, go)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, embedder: Any, model_dir: Path
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("mcp")
    with serve_for_people(root, embedder, model_dir, PROJECTS, USERS) as srv:
        yield Stack(srv.url, srv.idp)


def _error_text(result: Any) -> str:
    assert result.is_error, result
    return " ".join(getattr(c, "text", "") for c in result.content)


def test_tools_are_listed_with_input_schemas(stack: Stack):
    async def tools(s: ClientSession) -> Any:
        return (await s.list_tools()).tools

    listed = {t.name: t for t in stack.session("alice", tools)}
    assert set(listed) == {"search_code", "get_file", "find_symbol", "list_repos"}
    search = listed["search_code"].input_schema
    assert search["required"] == ["query"]
    assert search["properties"]["k"]["maximum"] == 100
    assert {"repo", "repos", "branch", "path_glob", "language"} <= set(search["properties"])
    assert set(listed["get_file"].input_schema["required"]) == {"repo", "path"}
    assert listed["find_symbol"].input_schema["required"] == ["name"]
    assert all(t.output_schema for t in listed.values())  # structured output


def test_search_code_reads_only_the_callers_repos(stack: Stack, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="coderag.audit"):
        res = stack.call("alice", "search_code", query="refund a settled payment", k=20)
    assert not res.is_error
    results = res.structured_content["results"]
    assert results and {r["repo"] for r in results} == {ALPHA}
    assert any("refund_payment" in r["text"] for r in results)
    top = results[0]
    assert {"repo", "path", "start_line", "end_line", "symbol", "score", "text"} <= set(top)
    lines = [r for r in caplog.records if r.name == "coderag.audit" and r.getMessage() == "search"]
    assert lines and lines[-1].endpoint == "mcp"  # type: ignore[attr-defined]
    assert lines[-1].username == "alice" and lines[-1].repos == [ALPHA]  # type: ignore[attr-defined]
    assert lines[-1].results == len(results)  # type: ignore[attr-defined]

    denied = stack.call("alice", "search_code", query="close the ledger", repo=BETA)
    assert f"user alice may not read: {BETA}" in _error_text(denied)
    assert not denied.structured_content
    bob = stack.call("bob", "search_code", query="refund a settled payment", k=20)
    assert {r["repo"] for r in bob.structured_content["results"]} <= {BETA}


def test_bad_arguments_are_tool_errors_with_reasons(stack: Stack):
    assert "k" in _error_text(stack.call("alice", "search_code", query="refund", k=0))
    assert "k" in _error_text(stack.call("alice", "search_code", query="refund", k=101))
    assert "query must not be empty" in _error_text(stack.call("alice", "search_code", query="  "))
    assert "query" in _error_text(stack.call("alice", "search_code", query=""))


def test_get_file_returns_the_indexed_lines_of_a_readable_file(stack: Stack):
    res = stack.call("alice", "get_file", repo=ALPHA, path="src/alpha/payments.py")
    assert not res.is_error, _error_text(res)
    view = res.structured_content
    assert view["branch"] == "main" and view["language"] == "python"
    text = "\n".join(s["text"] for s in view["segments"])
    assert "def refund_payment(payment, reason):" in text and "def settle_payment" in text
    first = view["segments"][0]
    assert first["start_line"] == 1 and first["text"].startswith('"""Payments of the alpha')
    assert view["indexed_lines"].startswith("1-")
    part = stack.call(
        "alice", "get_file", repo=ALPHA, path="src/alpha/payments.py", start_line=4, end_line=6
    ).structured_content
    assert [(s["start_line"], s["end_line"]) for s in part["segments"]] == [(4, 6)]
    assert part["segments"][0]["text"].startswith("def settle_payment(payment, ledger):")

    denied = stack.call("alice", "get_file", repo=BETA, path="src/beta/ledger.py")
    assert f"user alice may not read: {BETA}" in _error_text(denied)
    missing = stack.call("alice", "get_file", repo=ALPHA, path="src/alpha/nope.py")
    assert "not indexed" in _error_text(missing)


def test_find_symbol_finds_definitions_the_caller_may_read(stack: Stack):
    res = stack.call("alice", "find_symbol", name="refund_payment")
    assert not res.is_error, _error_text(res)
    found = res.structured_content["results"]
    assert found and found[0]["repo"] == ALPHA and found[0]["path"] == "src/alpha/payments.py"
    assert "refund_payment" in found[0]["symbol"] and "def refund_payment" in found[0]["text"]
    assert stack.call("bob", "find_symbol", name="refund_payment").structured_content == {
        "results": []
    }
    denied = stack.call("bob", "find_symbol", name="refund_payment", repo=ALPHA)
    assert f"user bob may not read: {ALPHA}" in _error_text(denied)


def test_list_repos_shows_the_callers_repos_with_their_index_state(stack: Stack):
    alice = stack.call("alice", "list_repos").structured_content["repos"]
    assert [r["repo"] for r in alice] == [ALPHA]
    branches = {b["branch"]: b for b in alice[0]["branches"]}
    assert {"main", "feature/x"} <= set(branches)
    assert branches["main"]["commit"] and branches["main"]["lag_seconds"] == 0
    bob = stack.call("bob", "list_repos").structured_content["repos"]
    assert [r["repo"] for r in bob] == [BETA]


def test_no_bearer_or_a_bad_one_is_a_401_before_mcp(stack: Stack):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"Accept": "application/json, text/event-stream"}
    with httpx.Client(base_url=stack.url, timeout=30, trust_env=False) as http:
        none = http.post("/mcp", json=body, headers=accept)
        forged = http.post(
            "/mcp",
            json=body,
            headers={**accept, "Authorization": f"Bearer {stack.idp.tampered_token()}"},
        )
        garbage = http.post("/mcp", json=body, headers={**accept, "Authorization": "Bearer x.y.z"})
        schema = http.get("/openapi.json").json()
    for resp in (none, forged, garbage):
        assert resp.status_code == 401, resp.text
        assert resp.headers["www-authenticate"] == "Bearer"
        assert set(resp.json()) == {"error_code", "detail"}
        assert resp.json()["error_code"] == "unauthorized"
    assert "missing bearer token" in none.json()["detail"]
    assert not any(p.startswith("/mcp") for p in schema["paths"])

    async def refused() -> None:
        async with (
            httpx2.AsyncClient(timeout=30) as http2,
            streamable_http_client(f"{stack.url}/mcp", http_client=http2) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()

    with pytest.raises(BaseException):  # noqa: B017 - the SDK surfaces the 401 as it likes
        anyio.run(refused)


def test_continue_config_declares_the_mcp_server():
    cfg = yaml.safe_load(
        (Path(__file__).parents[1] / "docker" / "continue" / "config.yaml").read_text("utf-8")
    )
    (server,) = [s for s in cfg["mcpServers"] if s["name"] == "coderag"]
    assert server["type"] == "streamable-http"
    assert server["url"] == "http://coderag-api:8080/mcp"
    auth = server["requestOptions"]["headers"]["Authorization"]
    assert auth == "Bearer ${{ secrets.CODERAG_TOKEN }}"
