"""The one error shape of the API, ``{"error_code", "detail"}``, and what produces it.

Every answer that is not a success has this shape, whichever layer refused the request:

* coderag's own errors (:class:`coderag.errors.CoderagError`) map by their
  ``http_status``/``error_code``; a 5xx answers a fixed public sentence and a request id, the
  library's message (paths, hosts) goes to the log only;
* schema violations become a 422 with a readable detail instead of FastAPI's nested list;
* HTTP errors (404 route, 405 method) keep their status and get a stable code;
* anything unexpected is a 500, logged with its traceback, answered with a request id only.

The routers import :class:`ErrorResponse` and :data:`ERROR_RESPONSES` to document their
answers; the app factory calls :func:`install_error_handling` and
:func:`openapi_with_errors`. This module imports no router and not the factory, so any router
may import it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from coderag.errors import CoderagError
from coderag.metrics import HTTP_ERRORS

__all__ = [
    "ERROR_RESPONSES",
    "ErrorResponse",
    "RequestContext",
    "coderag_error_response",
    "error_response",
    "error_responses",
    "install_error_handling",
    "openapi_with_errors",
    "public_detail",
]

log = logging.getLogger(__name__)

_PUBLIC_5XX = {
    "index_error": "the index is unavailable",
    "index_locked": "the index is locked by another process",
    "embedding_error": "the embedding model is unavailable",
    "unavailable": "a dependency is temporarily unavailable",
    "config_error": "the server is misconfigured",
    "git_error": "git failed",
    "gitlab_error": "the GitLab API failed",
    "permissions_unavailable": "GitLab could not be asked what this user may read, so no code "
    "is served (fail closed); try again shortly",
    "identity_provider_unavailable": "the identity provider's signing keys could not be "
    "fetched, so no token can be verified yet; try again shortly",
}
_HTTP_CODES = {
    400: "invalid_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


class ErrorResponse(BaseModel):
    """Every error the API returns: a stable machine code and a human sentence."""

    error_code: str = Field(examples=["forbidden"])
    detail: str = Field(examples=["token 3f2a9c1b0e4d may not read: group/other"])
    name: str | None = Field(
        default=None, description="Continue route only: the error as the item Continue shows."
    )
    description: str | None = Field(default=None, description="Continue route only.")
    content: str | None = Field(default=None, description="Continue route only.")


def _documented(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _documented("Invalid input (empty query, bad path glob)."),
    401: _documented("Missing or invalid bearer token."),
    403: _documented("The token's scope does not cover a requested repository."),
    410: _documented(
        "The repository was renamed or transferred on GitLab (``repo_moved``): the detail "
        "names its new path."
    ),
    422: _documented("The request body or parameters do not match the schema."),
    500: _documented("Internal error (details are in the server log, never in the response)."),
    503: _documented(
        "The index or the embedding model is unavailable, or (per-user access) GitLab or the "
        "identity provider could not be asked."
    ),
}
"""The errors of a read route, for its OpenAPI ``responses=``."""


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for ``statuses``: the description of :data:`ERROR_RESPONSES`
    where it has one, else the status's standard phrase."""
    return {s: ERROR_RESPONSES.get(s) or _documented(HTTPStatus(s).phrase) for s in statuses}


CONTINUE_PATH = "/v1/continue/context"


def _as_continue_item(status: int, code: str, detail: str) -> dict[str, str]:
    """The error as the one context item Continue shows. Continue never reads the HTTP
    status: it parses any JSON body, and an object becomes one item from its ``name``,
    ``description`` and ``content`` (``HttpContextProvider.ts``, continuedev/continue), so a
    bare error body would be an empty item named after the provider, a silent failure."""
    return {
        "name": f"coderag: {code}",
        "description": f"coderag could not give context (HTTP {status}): {detail}"[:500],
        "content": f"coderag could not give context: {detail} (HTTP {status}, {code}).",
    }


def error_response(
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
) -> Response:
    """An answer in the one error shape, counted in ``coderag_http_errors_total``; on the
    Continue route the same object is also a context item that says what went wrong."""
    HTTP_ERRORS.labels(error_code=code).inc()
    body: dict[str, str] = {"error_code": code, "detail": detail}
    if request is not None and request.url.path == CONTINUE_PATH:
        body |= _as_continue_item(status, code, detail)
    return JSONResponse(body, status_code=status, headers=headers)


# --- exception handlers ---------------------------------------------------------------------


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "-")


def public_detail(exc: CoderagError) -> str:
    """What a caller may read of ``exc``: its detail for a 4xx, a fixed public sentence for a
    5xx (library messages name paths and hosts). For answers outside an HTTP error body too
    (the MCP tools' errors)."""
    if int(exc.http_status) >= 500:
        return _PUBLIC_5XX.get(exc.error_code, "internal error")
    return exc.detail


def coderag_error_response(request: Request, exc: CoderagError) -> Response:
    """The answer to ``exc`` in the one error shape (a 5xx is logged with its real message,
    answered with :func:`public_detail` and the request id; a 401 says ``WWW-Authenticate``).
    The exception handler, and ASGI apps mounted beside the routers (``/mcp``), answer with it."""
    status = int(exc.http_status)
    if status >= 500:
        # Library errors are translated with their message (paths, hosts): log it, answer less.
        log.error(
            "request failed",
            extra={"error_code": exc.error_code, "error": exc.detail, "path": request.url.path},
        )
        detail = f"{public_detail(exc)} (request {_request_id(request)})"
        return error_response(status, exc.error_code, detail, request=request)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return error_response(status, exc.error_code, exc.detail, headers, request)


async def _coderag_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CoderagError)
    return coderag_error_response(request, exc)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc) or "request"


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for e in exc.errors()[:10]:
        msg = str(e.get("msg", "invalid"))
        if e.get("type") == "json_invalid":
            msg = "body is not valid JSON"
        parts.append(f"{_loc(e.get('loc', ()))}: {msg}")
    detail = "; ".join(parts) or "invalid request"
    return error_response(422, "validation_error", detail[:2000], request=request)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else str(jsonable_encoder(exc.detail))
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return error_response(exc.status_code, code, detail, headers or None, request)


def _allowed_methods(request: Request) -> str:
    """Every method any route serves at this path. Starlette's 405 names only the first
    route that matched the path, wrong when GET and POST of one path are two routes."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


class RequestContext:
    """Pure ASGI middleware: a request id on every request (``X-Request-ID``, and in every
    log line via structlog's contextvars), and the last line of defence for unexpected
    exceptions: logged with the traceback, answered as a bare 500 in the one error shape."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import structlog

        rid = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                await self.app(scope, receive, send_wrapper)
            except Exception:
                log.exception("unhandled error", extra={"path": scope.get("path", "")})
                if started:
                    raise
                HTTP_ERRORS.labels(error_code="internal_error").inc()
                body = JSONResponse(
                    {"error_code": "internal_error", "detail": f"internal error (request {rid})"},
                    status_code=500,
                    headers={"x-request-id": rid},
                )
                await body(scope, receive, send)


def install_error_handling(app: FastAPI) -> None:
    """Register the exception handlers and the request-context middleware on ``app``."""
    app.add_exception_handler(CoderagError, _coderag_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(RequestContext)  # type: ignore[arg-type]


# --- OpenAPI --------------------------------------------------------------------------------


def openapi_with_errors(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi``: the schema with the one error shape everywhere. FastAPI documents 422
    as its own ``HTTPValidationError`` by default, which is not what this app answers."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        comps.setdefault("ErrorResponse", ErrorResponse.model_json_schema())
        ref = {"$ref": "#/components/schemas/ErrorResponse"}
        err = {"application/json": {"schema": ref}}
        for ops in schema.get("paths", {}).values():
            for op in ops.values():
                if not isinstance(op, dict) or "responses" not in op:
                    continue
                resp = op["responses"]
                if "422" in resp:
                    resp["422"] = {"description": "Validation error", "content": err}
                resp.setdefault("500", {"description": "Internal error", "content": err})
        for name in ("HTTPValidationError", "ValidationError"):
            comps.pop(name, None)
        app.openapi_schema = schema
        return schema

    return build
