"""The LiteLLM pre-call hook against the real coderag on loopback, and with coderag down."""

from __future__ import annotations

import asyncio
import copy
import socket
import time
from typing import Any

import pytest

from tests.api_support import ALPHA, BETA, ApiServer

pytestmark = pytest.mark.integration

hook_mod = pytest.importorskip("retriever.litellm_hook")
CustomLogger = pytest.importorskip("litellm.integrations.custom_logger").CustomLogger


def chat(content: Any = "How is a payment refunded once it was settled?", **extra: Any) -> dict:
    return {
        "model": "coder",
        "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": content},
        ],
        **extra,
    }


def run(hook: Any, data: dict, call_type: str = "acompletion") -> Any:
    return asyncio.run(hook.async_pre_call_hook(None, None, data, call_type))


def test_the_module_exposes_a_real_custom_logger():
    assert isinstance(hook_mod.proxy_handler_instance, CustomLogger)
    assert issubclass(hook_mod.CoderagContextHook, CustomLogger)


def test_context_from_metadata_selection_is_merged_into_the_system_message(
    api_server: ApiServer,
):
    hook = hook_mod.CoderagContextHook(
        api_server.url, api_server.tokens["alpha"], identity="service"
    )
    data = chat(metadata={"coderag": {"repos": [ALPHA], "branch": "main"}})
    out = run(hook, data)
    msgs = out["messages"]
    assert len(msgs) == 4 and msgs[0]["role"] == "system"
    assert msgs[0]["content"].startswith("You are a careful assistant.\n\n")
    assert "```python src/alpha/payments.py (lines" in msgs[0]["content"]
    assert "refund_payment" in msgs[0]["content"]
    assert msgs[1:] == chat()["messages"][1:]


def test_header_selection_and_list_content(api_server: ApiServer):
    hook = hook_mod.CoderagContextHook(
        api_server.url, api_server.tokens["admin"], identity="service"
    )
    data = {
        "model": "coder",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "close the ledger for a day"}]}
        ],
        "proxy_server_request": {"headers": {"X-Coderag-Repos": BETA}},
    }
    out = run(hook, data, "completion")
    assert out["messages"][0]["role"] == "system"
    assert "close_ledger" in out["messages"][0]["content"]
    assert "src/alpha/" not in out["messages"][0]["content"]
    assert out["messages"][1]["role"] == "user"


def test_other_call_types_and_opt_out_pass_through(api_server: ApiServer):
    hook = hook_mod.CoderagContextHook(
        api_server.url, api_server.tokens["admin"], identity="service"
    )
    for data, call_type in [
        (chat(), "embedding"),
        (chat(metadata={"coderag": False}), "acompletion"),
        (chat(proxy_server_request={"headers": {"x-coderag": "off"}}), "acompletion"),
        (chat(content=""), "acompletion"),
    ]:
        before = copy.deepcopy(data)
        assert run(hook, data, call_type) == before


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed on exit: nothing listens there


def test_coderag_down_or_refusing_passes_the_request_through_unchanged(
    api_server: ApiServer, caplog: pytest.LogCaptureFixture
):
    down = hook_mod.CoderagContextHook(
        f"http://127.0.0.1:{_dead_port()}", "t" * 20, timeout=2, identity="service"
    )
    data = chat(metadata={"repo": ALPHA})
    before = copy.deepcopy(data)
    t0 = time.perf_counter()
    assert run(down, data) == before
    assert time.perf_counter() - t0 < 3

    refused = hook_mod.CoderagContextHook(
        api_server.url, api_server.tokens["alpha"], identity="service"
    )
    data = chat(metadata={"repo": BETA})  # out of the token's scope: 403
    before = copy.deepcopy(data)
    assert run(refused, data) == before
    reasons = [getattr(r, "reason", "") for r in caplog.records if r.name == "coderag.litellm_hook"]
    assert "ConnectError" in reasons and "HTTP 403" in reasons
    assert all(api_server.tokens["alpha"] not in r.getMessage() for r in caplog.records)


def test_selection_precedence():
    sel = hook_mod.selection
    assert sel({"metadata": {"coderag": {"repos": ["a/x"], "branch": "dev"}}}) == {
        "repos": ["a/x"],
        "branch": "dev",
    }
    assert sel({"metadata": {"repo": "a/y", "branch": "main"}}) == {
        "repos": ["a/y"],
        "branch": "main",
    }
    headers = {"headers": {"x-coderag-repos": "a/1, a/2", "x-coderag-branch": "rel"}}
    assert sel({"proxy_server_request": headers}) == {"repos": ["a/1", "a/2"], "branch": "rel"}
    assert sel({}) == {"repos": [], "branch": None}
    assert sel({"metadata": {"coderag": {"enabled": False}}}) is None


def test_key_metadata_bounds_what_a_request_may_select():
    from types import SimpleNamespace

    key = SimpleNamespace(metadata={"coderag_repos": ["a/x", "a/y"]})
    sel = {"repos": ["a/y", "b/z"], "branch": None}
    assert hook_mod.restrict_to_key(sel, key) == {"repos": ["a/y"], "branch": None}
    assert hook_mod.restrict_to_key({"repos": [], "branch": "m"}, key)["repos"] == ["a/x", "a/y"]
    assert hook_mod.restrict_to_key({"repos": ["b/z"], "branch": None}, key) is None
    assert hook_mod.restrict_to_key(sel, None) == sel
    assert hook_mod.restrict_to_key(sel, {"metadata": {}}) == sel


def test_the_gateway_user_is_the_one_litellm_authenticated():
    """``user_id`` (or ``user_email``) of LiteLLM's auth result; nothing for a key without
    a user, for malformed values, or for the master key's ``default_user_id`` (LiteLLM's
    ``litellm.constants.LITELLM_PROXY_ADMIN_NAME``), which names no person."""
    from litellm.constants import LITELLM_PROXY_ADMIN_NAME
    from litellm.proxy._types import UserAPIKeyAuth

    user = hook_mod.gateway_user
    assert LITELLM_PROXY_ADMIN_NAME == hook_mod.PROXY_ADMIN_USER
    assert user(UserAPIKeyAuth(user_id="alice")) == "alice"
    assert user(UserAPIKeyAuth(user_id="alice", user_email="a@bank.example"), "user_email") == (
        "a@bank.example"
    )
    assert user(UserAPIKeyAuth()) is None
    assert user(UserAPIKeyAuth(user_id=LITELLM_PROXY_ADMIN_NAME)) is None
    assert user(UserAPIKeyAuth(user_id="bob admin")) is None
    assert user({"user_id": "carol"}) == "carol"
    assert user(None) is None
    with pytest.raises(ValueError, match="CODERAG_HOOK_IDENTITY"):
        hook_mod.CoderagContextHook("http://127.0.0.1:1", "t" * 20, identity="everyone")


def test_responses_and_anthropic_messages_get_context_where_their_system_prompt_is(
    api_server: ApiServer,
):
    """``/v1/responses`` keeps its system prompt in ``instructions``, Anthropic's
    ``/v1/messages`` in a top-level ``system`` (a string or text blocks); the user's words are
    ``input`` (a string or message items) and the last ``user`` message."""
    hook = hook_mod.CoderagContextHook(
        api_server.url, api_server.tokens["alpha"], identity="service"
    )
    question = "How is a payment refunded once it was settled?"
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": question}]}
    ]
    for given, call_type, key in [
        ({"input": question}, "aresponses", "instructions"),
        ({"input": items, "instructions": "Be brief."}, "aresponses", "instructions"),
        ({"messages": [{"role": "user", "content": question}]}, "anthropic_messages", "system"),
        (
            {
                "system": [{"type": "text", "text": "Be brief."}],
                "messages": [{"role": "user", "content": [{"type": "text", "text": question}]}],
            },
            "anthropic_messages",
            "system",
        ),
    ]:
        data = {"model": "coder", **copy.deepcopy(given)}
        out = run(hook, data, call_type)
        assert {k: v for k, v in out.items() if k != key} == {
            k: v for k, v in data.items() if k != key
        }
        prompt = out[key]
        if isinstance(given.get(key), list):  # text blocks: one more block, the context
            assert prompt[:-1] == given[key] and prompt[-1]["type"] == "text"
            prompt = prompt[-1]["text"]
        elif given.get(key):
            assert prompt.startswith(given[key] + "\n\n")
        assert hook_mod.PREAMBLE in prompt and "refund_payment" in prompt, call_type
        assert "input" not in given or out["input"] == given["input"]
        assert "messages" not in given or out["messages"] == given["messages"]
    # LiteLLM may hand the call type as its CallTypes enum rather than the string
    from litellm.types.utils import CallTypes

    out = run(hook, {"model": "coder", "input": question}, CallTypes.aresponses)
    assert "refund_payment" in out["instructions"]


def test_an_unknown_request_shape_passes_through_untouched(api_server: ApiServer):
    hook = hook_mod.CoderagContextHook(
        api_server.url, api_server.tokens["alpha"], identity="service"
    )
    question = "How is a payment refunded once it was settled?"
    for data, call_type in [
        ({"input": question, "instructions": {"id": "prompt-template"}}, "aresponses"),
        ({"input": [{"type": "function_call_output", "output": question}]}, "aresponses"),
        ({"messages": [{"role": "user", "content": question}], "system": 7}, "anthropic_messages"),
    ]:
        before = copy.deepcopy(data)
        assert run(hook, data, call_type) == before
