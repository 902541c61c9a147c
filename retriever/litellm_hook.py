"""LiteLLM gateway hook: retrieved code context, prepended to chat requests.

Reference it from the gateway's ``config.yaml`` (see ``docs/INTEGRATIONS.md``)::

    litellm_settings:
      callbacks: retriever.litellm_hook.proxy_handler_instance

This module imports nothing of coderag (only ``httpx`` and ``litellm``, both in the gateway's
image), so the gateway can mount this one file instead of installing coderag.

For every chat request the hook takes the text of the last user message, asks coderag's
``POST /v1/context`` for the best code regions within a token budget, and puts them where that
API keeps its system prompt. The gateway's three chat routes, by the call type LiteLLM hands
to pre-call hooks (the ``route_type`` of each endpoint: ``litellm/proxy/proxy_server.py``,
``litellm/proxy/response_api_endpoints/endpoints.py``,
``litellm/proxy/anthropic_endpoints/endpoints.py``):

* ``/v1/chat/completions`` (``completion`` / ``acompletion``): a system message in front of
  the conversation, or appended to the conversation's own leading system message, since
  several chat templates refuse two system messages in a row;
* ``/v1/responses`` (``responses`` / ``aresponses``): appended to ``instructions`` (the
  Responses API's system prompt; ``input`` is a string or a list of items whose ``user``
  messages hold ``input_text`` parts);
* ``/v1/messages``, Anthropic's format (``anthropic_messages``): appended to the top-level
  ``system`` (a string or a list of text blocks; Anthropic has no ``system`` role in
  ``messages``).

Whatever the route, LiteLLM then translates the request for the model's provider (for vLLM:
``/v1/messages`` becomes a chat completion whose first message is ``system``, ``/v1/responses``
goes to vLLM's own ``/v1/responses`` with the ``instructions``).

Which repositories, in order of precedence:

1. request metadata ``{"metadata": {"coderag": {"repos": [...], "branch": "main"}}}``
   (``"coderag": false`` turns the hook off for that request);
2. request metadata ``{"metadata": {"repo": "group/project", "branch": "main"}}``;
3. headers ``x-coderag-repos: group/a,group/b`` and ``x-coderag-branch: main`` on the request
   to the gateway (read from ``data["proxy_server_request"]["headers"]``); ``x-coderag: off``
   turns the hook off;
4. none of these: every repo the hook's token may read.

A LiteLLM key whose metadata has ``coderag_repos`` (set by the gateway admin) is held to those
repos whatever the request asks: request metadata and headers are the user's to choose, key
metadata is not.

Whose context: the gateway acts for its user, never as everyone. With
``CODERAG_HOOK_IDENTITY=user`` (the default) the hook sends the gateway's *authenticated* user
(LiteLLM's ``user_api_key_dict.user_id``, or ``user_email`` with
``CODERAG_HOOK_USER_FIELD=user_email``: what the key or the JWT that LiteLLM verified says,
never the request's own ``user`` field, which the client writes) in the ``X-Coderag-User``
header, with ``CODERAG_API_TOKEN`` being a *delegation* token of coderag
(``CODERAG_DELEGATION_TOKENS``): coderag answers with what that user may read in GitLab. A
request whose key names no user gets no context. ``CODERAG_HOOK_IDENTITY=service`` is the
explicit opt-out: every request reads with the token's own scope (a gateway serving one team).

The user's own bearer token is not forwarded: LiteLLM removes ``Authorization`` from the
request headers it hands to hooks (``clean_headers`` in
``litellm/proxy/litellm_pre_call_utils.py``), and a token copied into a custom header would be
stored wherever LiteLLM logs request headers.

Configuration (environment of the gateway process): ``CODERAG_API_URL`` (default
``http://127.0.0.1:8080``), ``CODERAG_API_TOKEN`` (a delegation token, or a scoped service
token with ``CODERAG_HOOK_IDENTITY=service``), ``CODERAG_HOOK_IDENTITY`` (``user`` |
``service``), ``CODERAG_HOOK_USER_FIELD`` (``user_id`` | ``user_email``),
``CODERAG_HOOK_TIMEOUT`` (seconds, default 2), ``CODERAG_HOOK_K``
(chunks searched, default 10), ``CODERAG_HOOK_TOKEN_BUDGET`` (default: the server's). The
usual ``SSL_CERT_FILE`` (an internal CA) and ``HTTP(S)_PROXY`` / ``NO_PROXY`` apply: put
coderag's host in ``NO_PROXY`` when the gateway reaches the models through a proxy.

The gateway must never fail because context is unavailable: any error of coderag (down,
slow, 4xx, 5xx, malformed answer) is logged and the request passes through unchanged.
Neither the query nor the code is logged, only sizes and the failure's kind.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

# Air-gapped: importing litellm would otherwise try to download its model cost map.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from litellm.integrations.custom_logger import CustomLogger

__all__ = [
    "CHAT_CALL_TYPES",
    "MESSAGES_CALL_TYPES",
    "RESPONSES_CALL_TYPES",
    "CoderagContextHook",
    "gateway_user",
    "last_user_text",
    "proxy_handler_instance",
    "request_text",
    "restrict_to_key",
    "selection",
    "with_context",
]

log = logging.getLogger("coderag.litellm_hook")

CHAT_CALL_TYPES = frozenset({"completion", "acompletion"})
RESPONSES_CALL_TYPES = frozenset({"responses", "aresponses"})
MESSAGES_CALL_TYPES = frozenset({"anthropic_messages", "aanthropic_messages"})
CONTEXT_CALL_TYPES = CHAT_CALL_TYPES | RESPONSES_CALL_TYPES | MESSAGES_CALL_TYPES
REPOS_HEADER = "x-coderag-repos"
BRANCH_HEADER = "x-coderag-branch"
SWITCH_HEADER = "x-coderag"
USER_HEADER = "X-Coderag-User"
USER_FIELDS = ("user_id", "user_email")
IDENTITY_MODES = ("user", "service")
PROXY_ADMIN_USER = "default_user_id"
"""The ``user_id`` LiteLLM gives a request made with the master key (``litellm.constants.
LITELLM_PROXY_ADMIN_NAME``; ``user_api_key_auth.py`` builds the master key's auth object with
it). It names no person, and a GitLab user could be called so: never read as it."""
MAX_QUERY_CHARS = 20_000
PREAMBLE = (
    "Code retrieved from the organisation's repositories for the user's last message "
    "(coderag; it may be incomplete or not relevant, use it only where it helps):"
)


def last_user_text(messages: Any) -> str:
    """Text of the last ``user`` message (string content, or the text parts of a list)."""
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        return ""
    for msg in reversed(messages):
        if not isinstance(msg, Mapping) or msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, Sequence):
            parts = [
                str(p.get("text", ""))
                for p in content
                if isinstance(p, Mapping) and p.get("type") in ("text", "input_text")
            ]
            return "\n".join(p for p in parts if p)
        return ""
    return ""


def request_text(data: Mapping[str, Any], call_type: str) -> str:
    """The user's last words in a request of ``call_type``: the last ``user`` message of a
    chat completion or an Anthropic ``/v1/messages`` request, the ``input`` of a Responses
    request (a string, or its last ``user`` message item)."""
    if call_type in RESPONSES_CALL_TYPES:
        given = data.get("input")
        return given if isinstance(given, str) else last_user_text(given)
    return last_user_text(data.get("messages"))


def with_context(data: dict, call_type: str, context: str) -> bool:
    """Put ``context`` into ``data`` where the route of ``call_type`` keeps its system prompt
    (see the module docstring); False, and ``data`` untouched, when its shape is unknown."""
    if call_type in CHAT_CALL_TYPES:
        messages = data.get("messages")
        if not isinstance(messages, list):
            return False
        data["messages"] = _with_system_message(list(messages), context)
        return True
    key = "instructions" if call_type in RESPONSES_CALL_TYPES else "system"
    current = data.get(key)
    if current is None or (isinstance(current, str) and not current.strip()):
        data[key] = context
    elif isinstance(current, str):
        data[key] = f"{current}\n\n{context}"
    elif key == "system" and isinstance(current, list):  # Anthropic text blocks
        data[key] = [*current, {"type": "text", "text": context}]
    else:
        return False
    return True


def _headers(data: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for src in (
        (data.get("metadata") or {}).get("headers")
        if isinstance(data.get("metadata"), Mapping)
        else None,
        (data.get("proxy_server_request") or {}).get("headers")
        if isinstance(data.get("proxy_server_request"), Mapping)
        else None,
    ):
        if isinstance(src, Mapping):
            out.update({str(k).lower(): str(v) for k, v in src.items()})
    return out


def _repo_list(v: Any) -> list[str]:
    if isinstance(v, str):
        return [r.strip() for r in v.split(",") if r.strip()]
    if isinstance(v, Sequence):
        return [str(r).strip() for r in v if str(r).strip()]
    return []


def selection(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """Repos and branch the request asks for (see the module docstring); None: hook off."""
    meta = data.get("metadata") if isinstance(data.get("metadata"), Mapping) else {}
    headers = _headers(data)
    cfg = meta.get("coderag")
    if cfg is False or headers.get(SWITCH_HEADER, "").strip().lower() in ("off", "0", "false"):
        return None
    if isinstance(cfg, Mapping):
        if cfg.get("enabled") is False:
            return None
        repos = _repo_list(cfg.get("repos")) or _repo_list(cfg.get("repo"))
        branch = cfg.get("branch")
    else:
        repos, branch = [], None
    if not repos:
        repos = _repo_list(meta.get("repo")) or _repo_list(meta.get("repos"))
        branch = branch or meta.get("branch")
    if not repos:
        repos = _repo_list(headers.get(REPOS_HEADER))
    branch = branch or headers.get(BRANCH_HEADER) or None
    return {"repos": repos, "branch": str(branch) if branch else None}


def restrict_to_key(sel: dict[str, Any] | None, user_api_key_dict: Any) -> dict[str, Any] | None:
    """Narrow a selection to the LiteLLM key's ``metadata.coderag_repos`` when the gateway
    admin set it: request metadata and headers come from the user, key metadata does not.
    None (no context) when nothing requested is allowed."""
    meta = getattr(user_api_key_dict, "metadata", None)
    if isinstance(user_api_key_dict, Mapping):
        meta = user_api_key_dict.get("metadata")
    allowed = _repo_list(meta.get("coderag_repos")) if isinstance(meta, Mapping) else []
    if sel is None or not allowed:
        return sel
    repos = [r for r in sel["repos"] if r in allowed] if sel["repos"] else allowed
    return {**sel, "repos": repos} if repos else None


def gateway_user(user_api_key_dict: Any, field: str = "user_id") -> str | None:
    """The user LiteLLM authenticated for this request (``field`` of its
    ``UserAPIKeyAuth``), or None. Only the gateway's own auth result counts: the request body's
    ``user`` is whatever the client wrote."""
    if isinstance(user_api_key_dict, Mapping):
        value = user_api_key_dict.get(field)
    else:
        value = getattr(user_api_key_dict, field, None)
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > 255 or any(c.isspace() or ord(c) < 32 for c in value):
        return None
    if value == PROXY_ADMIN_USER:  # the master key: no person, so nobody's code
        return None
    return value


class CoderagContextHook(CustomLogger):
    """Prepends coderag context to chat requests; never fails the request because of it."""

    def __init__(
        self,
        api_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float | None = None,
        k: int | None = None,
        token_budget: int | None = None,
        identity: str | None = None,
        user_field: str | None = None,
    ) -> None:
        super().__init__()
        self.identity = identity or os.environ.get("CODERAG_HOOK_IDENTITY") or "user"
        if self.identity not in IDENTITY_MODES:
            raise ValueError(f"CODERAG_HOOK_IDENTITY must be one of {IDENTITY_MODES}")
        self.user_field = user_field or os.environ.get("CODERAG_HOOK_USER_FIELD") or "user_id"
        if self.user_field not in USER_FIELDS:
            raise ValueError(f"CODERAG_HOOK_USER_FIELD must be one of {USER_FIELDS}")
        self.api_url = api_url or os.environ.get("CODERAG_API_URL") or "http://127.0.0.1:8080"
        self.api_url = self.api_url.rstrip("/")
        self.token = token if token is not None else os.environ.get("CODERAG_API_TOKEN")
        self.timeout = float(timeout or os.environ.get("CODERAG_HOOK_TIMEOUT") or 2.0)
        self.k = int(k or os.environ.get("CODERAG_HOOK_K") or 10)
        budget = token_budget or os.environ.get("CODERAG_HOOK_TOKEN_BUDGET")
        self.token_budget = int(budget) if budget else None
        self._clients: dict[int, httpx.AsyncClient] = {}

    def _client(self) -> httpx.AsyncClient:
        """One client per event loop: an httpx client is bound to the loop that made it.

        No keep-alive: a pooled connection would outlive a loop that is closed without
        closing the client (the hook cannot know), and one TCP connect per chat request
        costs nothing next to the model's answer.
        """
        loop = asyncio.get_running_loop()
        client = self._clients.get(id(loop))
        if client is None or client.is_closed:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            client = httpx.AsyncClient(
                base_url=self.api_url,
                headers=headers,
                timeout=self.timeout,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
            self._clients = {id(loop): client}  # older loops are gone with their clients
        return client

    async def fetch_context(
        self, query: str, repos: list[str], branch: str | None, user: str | None = None
    ) -> str:
        """The context text for ``query`` ("" when nothing relevant), read as ``user`` when
        given; raises on any failure."""
        body: dict[str, Any] = {"query": query[:MAX_QUERY_CHARS], "k": self.k}
        if repos:
            body["repos"] = repos
        if branch:
            body["branch"] = branch
        if self.token_budget:
            body["token_budget"] = self.token_budget
        headers = {USER_HEADER: user} if user else None
        resp = await asyncio.wait_for(
            self._client().post("/v1/context", json=body, headers=headers), timeout=self.timeout
        )
        resp.raise_for_status()
        payload = resp.json()
        text = payload.get("text") if isinstance(payload, Mapping) else None
        if not isinstance(text, str):
            raise ValueError("coderag answered without a 'text' field")
        return text

    async def async_pre_call_hook(
        self,
        user_api_key_dict: Any,
        cache: Any,
        data: dict,
        call_type: Any,
    ) -> dict:
        """Add context to chat requests (chat completions, Responses, Anthropic messages); any
        other call type passes through untouched."""
        call_type = str(getattr(call_type, "value", call_type))  # LiteLLM's CallTypes is a str enum
        if call_type not in CONTEXT_CALL_TYPES or not isinstance(data, dict):
            return data
        try:
            sel = restrict_to_key(selection(data), user_api_key_dict)
            query = request_text(data, call_type)
            if sel is None or not query.strip():
                return data
            user = None
            if self.identity == "user":
                user = gateway_user(user_api_key_dict, self.user_field)
                if user is None:  # never read as everyone
                    log.info(
                        "no context: the gateway key names no user",
                        extra={"user_field": self.user_field},
                    )
                    return data
            text = await self.fetch_context(query, sel["repos"], sel["branch"], user)
            if text.strip() and with_context(data, call_type, f"{PREAMBLE}\n\n{text}"):
                log.info(
                    "context added",
                    extra={
                        "repos": sel["repos"] or ["*"],
                        "user": user,
                        "call_type": call_type,
                        "context_chars": len(text),
                    },
                )
        except Exception as exc:  # the gateway must never fail because of context
            reason = (
                f"HTTP {exc.response.status_code}"
                if isinstance(exc, httpx.HTTPStatusError)
                else type(exc).__name__
            )
            log.warning(
                "coderag context unavailable; request passed through",
                extra={"reason": reason, "api_url": self.api_url},
            )
        return data


def _with_system_message(messages: list[Any], context: str) -> list[Any]:
    first = messages[0] if messages else None
    if (
        isinstance(first, Mapping)
        and first.get("role") == "system"
        and isinstance(first.get("content"), str)
    ):
        merged = {**first, "content": f"{first['content']}\n\n{context}"}
        return [merged, *messages[1:]]
    return [{"role": "system", "content": context}, *messages]


proxy_handler_instance = CoderagContextHook()
"""What the gateway's ``litellm_settings.callbacks`` names."""
