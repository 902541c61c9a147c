"""``POST /v1/webhooks/gitlab``: verify, de-duplicate, enqueue. Never index here.

GitLab waits 10 s for an answer, then retries and eventually disables the hook, so this
handler does only cheap things: bounded body read, JSON + model validation, one registry
read, a constant-time token check, one de-duplication check, one submit, and remembering the
delivery key once the push is recorded. The run itself happens in a worker (distributed) or
the embedded executor.

Answers, all JSON (errors as ``{"error_code", "detail"}``):

====  ===============================================================================
202   ``{"status": "accepted", "task_id", ...}`` or ``{"status": "ignored", "reason"}``
200   ``{"status": "duplicate"}``: this Idempotency-Key was already accepted
400   no ``X-Gitlab-Event``, body is not a JSON object (whatever the event)
401   ``X-Gitlab-Token`` missing or wrong, or the project is not registered (one answer for
      both, so that the endpoint does not reveal which projects are indexed)
413   body over ``settings.webhook_max_bytes`` (Content-Length or actual bytes)
422   a field we need is missing or malformed
503   broker / Redis / index unavailable: GitLab retries the delivery
====  ===============================================================================

The app provides ``app.state.settings``, ``.registry``, ``.dispatcher`` and ``.redis`` (a Redis
client in distributed mode, ``None`` embedded).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from coderag.errors import CoderagError, TransientError
from coderag.index import tag_label
from coderag.metrics import WEBHOOK_EVENTS
from coderag.repos import RepoRecord, RepoRegistry
from coderag.settings import Settings
from webhooks.dedupe import Deduper, deduper_for
from webhooks.events import (
    EVENT_MERGE_REQUEST,
    EVENT_PUSH,
    EVENT_SYSTEM,
    EVENT_TAG_PUSH,
    MergeRequestEvent,
    PushEvent,
    TagPushEvent,
)

__all__ = ["WEBHOOK_PATH", "Decision", "decide", "router"]

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/v1/webhooks/gitlab"
_MAX_KEY_LEN = 256
_MR_ACTIVE = {"open", "reopen", "update"}
_MR_GONE = {"close", "merge"}

router = APIRouter(tags=["webhooks"])

_MODELS: dict[str, type[BaseModel]] = {
    EVENT_PUSH: PushEvent,
    EVENT_TAG_PUSH: TagPushEvent,
    EVENT_MERGE_REQUEST: MergeRequestEvent,
}


def _error(status: int, code: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error_code": code, "detail": detail}, status_code=status, headers=headers or None
    )


def _ignored(reason: str) -> JSONResponse:
    return JSONResponse({"status": "ignored", "reason": reason}, status_code=202)


class _TooLarge(Exception):  # control flow only
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes: the declared length is checked first, then the stream
    (a chunked or lying client cannot make us buffer more than the limit)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _TooLarge
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise _TooLarge
    return bytes(buf)


@dataclass(frozen=True, slots=True)
class Decision:
    """What a verified event asks for: index ``sha`` on ``branch`` (all zeros: delete it),
    or nothing, with the reason."""

    branch: str | None = None
    sha: str | None = None
    reason: str = ""

    @property
    def ignored(self) -> bool:
        return self.branch is None


def decide(event: BaseModel, rec: RepoRecord, settings: Settings) -> Decision:
    """The policy: which events index which branch label (pure, so tests pin it)."""
    if isinstance(event, PushEvent):
        branch = event.branch
        if branch is None:
            return Decision(reason=f"ref {event.ref!r} is not a branch")
        if not rec.branch_enabled(branch):
            return Decision(reason=f"branch {branch!r} matches none of {rec.branches}")
        return Decision(branch, event.after)
    if isinstance(event, TagPushEvent):
        if not settings.index_tags:
            return Decision(reason="tag indexing is off (CODERAG_INDEX_TAGS)")
        if event.tag is None:
            return Decision(reason=f"ref {event.ref!r} is not a tag")
        return Decision(tag_label(event.tag), event.after)
    if isinstance(event, MergeRequestEvent):
        a = event.object_attributes
        if not settings.index_merge_requests:
            return Decision(reason="merge request indexing is off (CODERAG_INDEX_MERGE_REQUESTS)")
        if not event.same_project:
            return Decision(reason="merge request from another project (fork) is not mirrored")
        if rec.branch_enabled(a.source_branch):
            return Decision(reason=f"branch {a.source_branch!r} is indexed on push already")
        if a.state == "opened" and (a.action or "open") in _MR_ACTIVE and a.last_commit:
            return Decision(a.source_branch, a.last_commit.id)
        if a.action in _MR_GONE or a.state in ("closed", "merged"):
            return Decision(a.source_branch, "0" * 40)  # drop the MR branch from the index
        return Decision(reason=f"merge request action {a.action!r} changes no code")
    return Decision(reason="event is not indexed")  # pragma: no cover - _MODELS is closed


_EVENT_LABELS = {
    EVENT_PUSH: "push",
    EVENT_TAG_PUSH: "tag_push",
    EVENT_MERGE_REQUEST: "merge_request",
    EVENT_SYSTEM: "system",
}
_deduper_lock = threading.Lock()


def _deduper(request: Request) -> Deduper:
    state = request.app.state
    dd = getattr(state, "webhook_deduper", None)
    if dd is None:
        with _deduper_lock:
            dd = getattr(state, "webhook_deduper", None)
            if dd is None:
                dd = deduper_for(getattr(state, "redis", None))
                state.webhook_deduper = dd
    return dd


# The handler reads headers and body itself (the body bounded before it is parsed), so FastAPI
# cannot derive them from the signature: they are documented here, for clients and fuzzers.
_OPENAPI_EXTRA: dict[str, Any] = {
    "parameters": [
        {
            "name": "X-Gitlab-Event",
            "in": "header",
            "required": True,
            "description": "GitLab's event name (``Push Hook``, ``Tag Push Hook``, ``Merge "
            "Request Hook`` are indexed; any other is acknowledged and ignored). Missing: 400.",
            "schema": {"type": "string", "minLength": 1, "examples": [EVENT_PUSH]},
        },
        {
            "name": "X-Gitlab-Token",
            "in": "header",
            "required": False,
            "description": "The project hook's secret, needed for an indexed event: "
            "missing or wrong (or the project not registered) is a 401.",
            "schema": {"type": "string"},
        },
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "GitLab's delivery id: a repeated key is answered 200 duplicate.",
            "schema": {"type": "string", "maxLength": _MAX_KEY_LEN},
        },
    ],
    "requestBody": {
        "required": True,
        "description": "The event payload as GitLab sends it. Not a JSON object: 400; a "
        "field the event needs is missing or malformed: 422.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
}


@router.post(
    WEBHOOK_PATH,
    status_code=202,
    summary="GitLab project webhook (Push, Tag Push, Merge Request events)",
    openapi_extra=_OPENAPI_EXTRA,
)
async def gitlab_webhook(request: Request) -> JSONResponse:
    resp = await _handle(request)
    _count(request.headers.get("x-gitlab-event"), resp)
    return resp


def _count(event_name: str | None, resp: JSONResponse) -> None:
    """``coderag_webhook_events_total{event, outcome}``: outcome is the answer's status
    (accepted, ignored, duplicate) or its error code; both label sets stay small."""
    try:
        body = json.loads(bytes(resp.body))
        outcome = str(body.get("status") or body.get("error_code") or resp.status_code)
    except ValueError:
        outcome = str(resp.status_code)
    event = _EVENT_LABELS.get((event_name or "").strip(), "other")
    WEBHOOK_EVENTS.labels(event=event, outcome=outcome).inc()


async def _handle(request: Request) -> JSONResponse:
    received_at = time.time()
    settings: Settings = request.app.state.settings
    try:
        body = await _read_body(request, settings.webhook_max_bytes)
    except _TooLarge:
        return _error(
            413, "payload_too_large", f"webhook body over {settings.webhook_max_bytes} bytes"
        )
    event_name = (request.headers.get("x-gitlab-event") or "").strip()
    if not event_name:
        return _error(400, "invalid_input", "missing X-Gitlab-Event header")
    key = (request.headers.get("idempotency-key") or "").strip()
    if len(key) > _MAX_KEY_LEN:
        return _error(400, "invalid_input", f"Idempotency-Key is over {_MAX_KEY_LEN} characters")
    # Malformed is malformed whatever the event: a body that is not a JSON object is a 400
    # before an event we do not index is acknowledged.
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _error(400, "invalid_json", f"body is not JSON: {exc}")
    if not isinstance(data, dict):
        return _error(400, "invalid_json", "body must be a JSON object")
    model = _MODELS.get(event_name)
    if model is None:
        return _ignored(f"event {event_name!r} is not indexed")
    try:
        event = model.model_validate(data)
    except ValidationError as exc:
        return _error(422, "invalid_payload", _summarize(exc))
    try:
        return await run_in_threadpool(_accept, request, event, received_at)
    except TransientError as exc:
        return _error(503, exc.error_code, exc.detail, **{"Retry-After": "5"})
    except CoderagError as exc:
        return _error(exc.http_status, exc.error_code, exc.detail)


def _accept(request: Request, event: Any, received_at: float) -> JSONResponse:
    state = request.app.state
    registry: RepoRegistry = state.registry
    repo_id = event.project.path_with_namespace.strip("/")
    rec = registry.get(repo_id)
    token = request.headers.get("x-gitlab-token")
    # An unregistered project and a wrong secret get one answer, after the same constant-time
    # check (against a dummy hash when there is no record): a 404 would tell anyone without a
    # secret which projects are indexed. The log, which only operators read, says which.
    if not registry.verify_secret(repo_id, token, record=rec) or rec is None:
        log.warning(
            "webhook refused",
            extra={"repo": repo_id, "reason": "not registered" if rec is None else "bad token"},
        )
        return _error(401, "unauthorized", "unknown project, or missing or wrong X-Gitlab-Token")
    decision = decide(event, rec, state.settings)
    if decision.ignored:
        return _ignored(decision.reason)
    assert decision.branch is not None and decision.sha is not None

    key = (request.headers.get("idempotency-key") or "").strip()  # its length: in _handle
    dedupe = _deduper(request) if key else None
    seen_key = f"{repo_id}:{key}"
    if dedupe is not None and dedupe.seen(seen_key):
        return JSONResponse({"status": "duplicate"}, status_code=200)
    task_id = state.dispatcher.submit_push(repo_id, decision.branch, decision.sha, received_at)
    if dedupe is not None:
        try:
            dedupe.remember(seen_key)
        except TransientError as exc:  # recorded anyway; a retry would only fold into it
            log.warning("webhook key not remembered", extra={"repo": repo_id, "error": str(exc)})
    deleted = set(decision.sha) == {"0"}
    log.info(
        "webhook accepted",
        extra={
            "repo": repo_id,
            "branch": decision.branch,
            "commit": decision.sha,
            "task_id": task_id,
        },
    )
    return JSONResponse(
        {
            "status": "accepted",
            "task_id": task_id,
            "repo": repo_id,
            "branch": decision.branch,
            "commit": None if deleted else decision.sha,
            "action": "delete" if deleted else "index",
        },
        status_code=202,
    )


def _summarize(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid payload: " + "; ".join(parts)
