"""``POST /v1/webhooks/gitlab``: verify, spool durably, hand to the dispatcher. Never index here.

GitLab sends a delivery once: an error answer (any 4xx or 5xx) or none within 10 s is logged on
GitLab's side and never re-sent unless someone presses "Resend request", and failures in a row
disable the hook (gitlabhq ``app/models/concerns/web_hooks/auto_disabling.rb``). So a delivery
that verifies is written to the local spool (:mod:`webhooks.spool`, fsynced) *before* the 2xx,
and an outage of our own broker or Redis is never an error answer: the push waits in the spool
and the forwarder hands it over once the broker is back. The handler does only cheap things:
a bounded body read into one buffer, JSON + model validation, two registry reads (project id
index, record), constant-time token (and signature) checks, one spool insert and one submit.

The record is found by ``project.id`` (see :mod:`coderag.repos`): a delivery whose
``project.path_with_namespace`` differs from the record's path is a rename or transfer, and
moves the record (same secret, hook and project id; the old path answers ``repo_moved``),
then spools a re-index under the new path (the content-addressed embedding cache makes it
cost no model calls) and the removal of the old path's points.

Answers, all JSON (errors as ``{"error_code", "detail"}``):

====  ===============================================================================
202   ``{"status": "accepted", "queued", "task_id", "spool_id", "repo", "branch",
      "commit", "action"}``: spooled durably. ``queued: true`` with a ``task_id``: the
      broker has it already; ``queued: false, task_id: null``: the broker is down (or
      another forwarder is handing it over) and the forwarder delivers it later.
202   ``{"status": "ignored", "reason"}``: verified (or not an indexed event), nothing to do
200   ``{"status": "duplicate"}``: this delivery id (``Idempotency-Key``, or the signed
      ``webhook-id``) was already accepted for the project: a resend or a replay
400   no ``X-Gitlab-Event``, body is not a JSON object (whatever the event), a delivery id
      over 256 characters
401   ``X-Gitlab-Token`` missing or wrong, the project is not registered, or the hook has a
      signing token and the ``webhook-signature`` is missing, wrong or its
      ``webhook-timestamp`` is outside the tolerance (one answer for all, so that the
      endpoint does not reveal which projects are indexed; the log says which)
413   body over ``settings.webhook_max_bytes`` (25 MiB, GitLab's own cap; by
      Content-Length or by the bytes actually sent)
422   a field we need is missing or malformed
500   our configuration (e.g. a signed hook but ``CODERAG_SECRET_KEY`` unset or changed)
503   the spool cannot be written (disk full, read-only volume): nothing durable would
      hold the delivery; or the registry (the index) cannot be read to verify it.
      Never for a broker or Redis outage.
====  ===============================================================================

The app provides ``app.state.settings``, ``.registry``, ``.dispatcher``, ``.webhook_spool``
and ``.webhook_forwarder`` (the lifespan builds both; a bare app gets them on first use).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from coderag.errors import CoderagError, ConflictError, InputError, TransientError
from coderag.index import tag_label
from coderag.metrics import WEBHOOK_EVENTS
from coderag.repos import RepoRecord, RepoRegistry, parse_repo_id, token_matches
from coderag.secretbox import SecretBox
from coderag.settings import Settings
from webhooks.events import (
    EVENT_MERGE_REQUEST,
    EVENT_PUSH,
    EVENT_SYSTEM,
    EVENT_TAG_PUSH,
    MergeRequestEvent,
    PushEvent,
    TagPushEvent,
)
from webhooks.signature import SignatureError, verify_signature
from webhooks.spool import (
    KIND_REINDEX,
    KIND_REMOVE,
    Forwarder,
    SpooledPush,
    SpoolError,
    WebhookSpool,
)

__all__ = ["MOVE_BACK_GRACE_S", "WEBHOOK_PATH", "Decision", "decide", "router", "spool_parts"]

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


async def _read_body(request: Request, limit: int) -> bytearray:
    """Read at most ``limit`` bytes into one buffer: the declared length is checked first,
    then the stream as it grows (a chunked or lying client cannot make us buffer more than
    the limit). The buffer itself is returned: JSON parsing and the HMAC read it in place,
    so a 25 MB body is never copied into a second bytes object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _TooLarge
    buf = bytearray()
    async for chunk in request.stream():
        if len(buf) + len(chunk) > limit:
            raise _TooLarge
        buf += chunk
    return buf


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
_spool_lock = threading.Lock()


def spool_parts(state: Any) -> tuple[WebhookSpool, Forwarder]:
    """The app's spool and forwarder (``app.state.webhook_spool`` / ``webhook_forwarder``),
    built from the settings on first use when the lifespan did not (a bare app in a test)."""
    spool = getattr(state, "webhook_spool", None)
    fwd = getattr(state, "webhook_forwarder", None)
    if spool is not None and fwd is not None:
        return spool, fwd
    with _spool_lock:
        spool = getattr(state, "webhook_spool", None)
        fwd = getattr(state, "webhook_forwarder", None)
        if spool is None:
            settings: Settings = state.settings
            spool = WebhookSpool(
                settings.webhook_spool_file,
                retention_s=settings.webhook_spool_retention_seconds,
            )
            state.webhook_spool = spool
        if fwd is None:
            fwd = Forwarder(spool, state.dispatcher).start()
            state.webhook_forwarder = fwd
    return spool, fwd


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
        {
            "name": "webhook-id",
            "in": "header",
            "required": False,
            "description": "Signed deliveries: the delivery id (the same as Idempotency-Key).",
            "schema": {"type": "string", "maxLength": _MAX_KEY_LEN},
        },
        {
            "name": "webhook-timestamp",
            "in": "header",
            "required": False,
            "description": "Signed deliveries: unix seconds; outside the tolerance is a 401.",
            "schema": {"type": "string"},
        },
        {
            "name": "webhook-signature",
            "in": "header",
            "required": False,
            "description": "Signed deliveries: space-separated ``v1,<base64 HMAC-SHA256>`` "
            "entries; needed (one valid) when the hook has a signing token, else a 401.",
            "schema": {"type": "string"},
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
    for header in ("Idempotency-Key", "webhook-id"):
        if len((request.headers.get(header) or "").strip()) > _MAX_KEY_LEN:
            return _error(400, "invalid_input", f"{header} is over {_MAX_KEY_LEN} characters")
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
    del data
    try:
        return await run_in_threadpool(_accept, request, event, body, received_at)
    except SpoolError as exc:
        log.error("webhook not spooled", extra={"error": exc.detail})
        return _error(503, exc.error_code, exc.detail)
    except TransientError as exc:  # the registry (the index) could not be read
        return _error(503, exc.error_code, exc.detail)
    except CoderagError as exc:
        return _error(exc.http_status, exc.error_code, exc.detail)


_UNAUTHORIZED = (
    "unknown project, or missing or wrong X-Gitlab-Token, or missing or invalid "
    "webhook-signature"
)


def _find(registry: RepoRegistry, event: Any) -> RepoRecord | None:
    """The record of the event's project: by project id first, by path for records that
    have none (registered from a plain git URL)."""
    rec = registry.get_by_project(event.project.id)
    if rec is not None:
        return rec
    rec = registry.get(event.project.path_with_namespace.strip("/"))
    if rec is not None and rec.gitlab_project_id not in (None, event.project.id):
        return None  # the path now belongs to another project than the one registered
    return rec


def _refusal(
    request: Request, rec: RepoRecord | None, body: bytearray, now: float
) -> str | None:
    """Why the delivery is not authentic (for the log), or None when it is."""
    token_ok = token_matches(rec, request.headers.get("x-gitlab-token"))
    if rec is None:
        return "not registered"
    if not token_ok:
        return "bad token"
    if rec.signing_token_enc is not None:
        settings: Settings = request.app.state.settings
        key = SecretBox(settings.secret_key).decrypt(rec.signing_token_enc)
        try:
            verify_signature(
                key,
                request.headers,
                body,
                now=now,
                tolerance=settings.webhook_signature_tolerance_seconds,
            )
        except SignatureError as exc:
            return f"bad signature: {exc}"
    return None


def _accept(request: Request, event: Any, body: bytearray, received_at: float) -> JSONResponse:
    state = request.app.state
    registry: RepoRegistry = state.registry
    path = event.project.path_with_namespace.strip("/")
    rec = _find(registry, event)
    # An unregistered project and a wrong secret get one answer, after the same constant-time
    # check (against a dummy hash when there is no record): a 404 would tell anyone without a
    # secret which projects are indexed. The log, which only operators read, says which.
    reason = _refusal(request, rec, body, time.time())
    if reason is not None or rec is None:
        log.warning("webhook refused", extra={"repo": path, "reason": reason})
        return _error(401, "unauthorized", _UNAUTHORIZED)
    spool, forwarder = spool_parts(state)
    if rec.id != path and rec.gitlab_project_id == event.project.id:
        if _stale_path(registry, rec, path):
            log.info(
                "delivery names the project's previous path: sent before the rename",
                extra={"repo": rec.id, "path": path},
            )
        else:
            rec = _moved(registry, spool, forwarder, rec, path, event)
    decision = decide(event, rec, state.settings)
    if decision.ignored:
        return _ignored(decision.reason)
    assert decision.branch is not None and decision.sha is not None

    # A signed delivery's id is the signed ``webhook-id`` (``Idempotency-Key`` is not covered
    # by the signature: a replay could change it); their lengths are checked in _handle.
    headers = request.headers
    if rec.signed:
        key = (headers.get("webhook-id") or "").strip()
    else:
        key = (headers.get("idempotency-key") or headers.get("webhook-id") or "").strip()
    dedupe = f"{event.project.id}:{key}" if key else None
    row = spool.add(rec.id, decision.branch, decision.sha, received_at, dedupe)
    if row is None:
        return JSONResponse({"status": "duplicate"}, status_code=200)
    task_id = _forward(forwarder, row)
    deleted = set(decision.sha) == {"0"}
    log.info(
        "webhook accepted",
        extra={
            "repo": rec.id,
            "branch": decision.branch,
            "commit": decision.sha,
            "task_id": task_id,
            "spool_id": row.id,
        },
    )
    return JSONResponse(
        {
            "status": "accepted",
            "queued": task_id is not None,
            "task_id": task_id,
            "spool_id": row.id,
            "repo": rec.id,
            "branch": decision.branch,
            "commit": None if deleted else decision.sha,
            "action": "delete" if deleted else "index",
        },
        status_code=202,
    )


def _forward(forwarder: Forwarder, row: SpooledPush) -> str | None:
    """Hand a spooled row to the broker now if it is up; the forwarder's thread does it
    later otherwise (and at once, without waiting, while the broker is known down)."""
    if forwarder.broker_down:
        return None
    try:
        return forwarder.forward(row)
    except TransientError as exc:
        log.warning(
            "broker unavailable: delivery spooled for later",
            extra={"repo": row.repo, "spool_id": row.id, "error": exc.detail},
        )
        return None


MOVE_BACK_GRACE_S = 120.0
"""A delivery naming the path a project left less than this long ago is taken as sent
before the rename (GitLab runs deliveries as concurrent background jobs, so an older one can
arrive after a newer one) and indexed under the current path, instead of moving the record
back and forth."""


def _stale_path(registry: RepoRegistry, rec: RepoRecord, path: str) -> bool:
    if path not in rec.previous_ids:
        return False
    alias = registry.alias(path) or {}
    moved_at = alias.get("moved_at")
    return isinstance(moved_at, int | float) and time.time() - moved_at < MOVE_BACK_GRACE_S


def _moved(
    registry: RepoRegistry,
    spool: WebhookSpool,
    forwarder: Forwarder,
    rec: RepoRecord,
    new_path: str,
    event: Any,
) -> RepoRecord:
    """GitLab renamed or transferred the project (same ``project.id``, another
    ``path_with_namespace``): move the record, then spool the re-index under the new path
    and the removal of the old path's points (the removal task skips a path registered
    again since, and never touches the new record: see ``indexer.jobs.remove_repo``)."""
    try:
        new_id = parse_repo_id(new_path)
    except InputError:
        return rec  # not a path we can name a repo by: keep the record where it is
    old_id = rec.id
    try:
        moved = registry.move(rec, new_id, url=_moved_url(rec.url, event.project.git_http_url))
    except ConflictError as exc:  # our state, not GitLab's fault: keep indexing the old name
        log.error(
            "repository moved on GitLab onto a path registered for another project",
            extra={"repo": old_id, "moved_to": new_id, "error": exc.detail},
        )
        return rec
    now = time.time()
    log.warning(
        "repository moved on GitLab: record moved, re-index and removal scheduled",
        extra={"repo": new_id, "moved_from": old_id, "project_id": rec.gitlab_project_id},
    )
    rows = [
        spool.add(new_id, "", "", now, None, kind=KIND_REINDEX),
        spool.add(old_id, "", "", now, None, kind=KIND_REMOVE),
    ]
    for row in rows:
        if row is not None and _forward(forwarder, row) is None:
            break  # broker down: the forwarder hands both over, in order
    return moved


def _moved_url(old: str, new: str | None) -> str | None:
    """The clone URL after a rename: the payload's ``git_http_url`` when it is of the same
    kind as the registered one, else ``None`` (keep the registered URL: GitLab redirects an
    old project path to the new one).

    Same kind: an http(s) URL on the same scheme and host (the worker sends the GitLab token
    to whatever host the URL names, so a delivery must not be able to point it elsewhere),
    or a local path replacing a local path (a repository registered from the server's disk,
    which only an unauthenticated single-user setup or the CLI can do).
    """
    if not new or new == old:
        return None
    a, b = urlsplit(old), urlsplit(new)
    if a.scheme in ("http", "https"):
        return new if (a.scheme, a.netloc) == (b.scheme, b.netloc) else None
    local = not a.scheme or a.scheme == "file" or len(a.scheme) == 1  # a Windows drive
    new_local = not b.scheme or b.scheme == "file" or len(b.scheme) == 1
    return new if local and new_local and not old.startswith("git@") else None


def _summarize(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid payload: " + "; ".join(parts)
