"""The API app factory: one FastAPI app for the embedded and the distributed mode.

``create_app`` is cheap and import-safe: it wires routers, error handlers and middleware, and
leaves everything heavy to the lifespan, which runs once per process:

1. build the runtime from the settings (or take the injected one: tests, benches), and
   ``warm_up`` it: the model is loaded and the index opened *before* the first request, never
   at import;
2. build the repo registry, a Redis client (distributed mode only) and the dispatcher
   (Celery in distributed mode; in embedded mode a background executor in this very process
   that indexes what the webhooks enqueue);
3. put them on ``app.state`` (``settings``, ``runtime``, ``registry``, ``redis``,
   ``dispatcher``), where every router reads them.

Errors have one shape everywhere, ``{"error_code", "detail"}``: coderag's own errors map by
their ``http_status``/``error_code``, schema violations become a 422 with a readable detail,
HTTP errors (404 route, 405 method) keep their status, and anything unexpected is a 500 that is
logged with its traceback but answers only a request id, never internals.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from coderag.auth import TokenAuth, require_principal
from coderag.errors import CoderagError
from coderag.logging import configure_logging
from coderag.metrics import CONTENT_TYPE_LATEST, HTTP_ERRORS, generate_latest, refresh
from coderag.settings import Settings, get_settings
from retriever.api import ERROR_RESPONSES, ErrorResponse
from retriever.api import router as retrieval_router

if TYPE_CHECKING:  # the runtime imports the model stack: never at import time
    from coderag.runtime import Runtime

__all__ = ["create_app"]

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 3.0
_PUBLIC_5XX = {
    "index_error": "the index is unavailable",
    "index_locked": "the index is locked by another process",
    "embedding_error": "the embedding model is unavailable",
    "unavailable": "a dependency is temporarily unavailable",
    "config_error": "the server is misconfigured",
    "git_error": "git failed",
    "gitlab_error": "the GitLab API failed",
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


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Ready(BaseModel):
    status: str = Field(examples=["ready"])
    checks: dict[str, str] = Field(description="Each dependency: 'ok' or why it is not.")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("coderag")
    except Exception:  # not installed (a source checkout): still serve
        return "0.0.0"


# --- errors ---------------------------------------------------------------------------------


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "-")


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    HTTP_ERRORS.labels(error_code=code).inc()
    return JSONResponse({"error_code": code, "detail": detail}, status_code=status, headers=headers)


async def _coderag_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CoderagError)
    status = int(exc.http_status)
    if status >= 500:
        # Library errors are translated with their message (paths, hosts): log it, answer less.
        log.error(
            "request failed",
            extra={"error_code": exc.error_code, "error": exc.detail, "path": request.url.path},
        )
        public = _PUBLIC_5XX.get(exc.error_code, "internal error")
        return _error(status, exc.error_code, f"{public} (request {_request_id(request)})")
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return _error(status, exc.error_code, exc.detail, headers)


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
    return _error(422, "validation_error", detail[:2000])


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else str(jsonable_encoder(exc.detail))
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return _error(exc.status_code, code, detail, headers or None)


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


class _RequestContext:
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


# --- lifespan -------------------------------------------------------------------------------


def _redis_client(settings: Settings) -> Any | None:
    if not settings.distributed:
        return None
    import redis

    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1.0, socket_timeout=2.0)


def _dispatcher(settings: Settings, runtime: Any) -> Any | None:
    try:
        from indexer.dispatch import dispatcher_from_settings
    except ImportError as exc:
        if exc.name and exc.name.startswith("indexer"):
            log.warning("no dispatcher (indexer.dispatch missing): webhooks are not served")
            return None
        raise
    return dispatcher_from_settings(settings, runtime)


def _close_quietly(obj: Any, what: str) -> None:
    if obj is None:
        return
    try:
        obj.close()
    except Exception as exc:  # shutting down: log and carry on
        log.warning("closing %s failed: %r", what, exc)


def _lifespan(settings: Settings, injected: Runtime | None) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from coderag.repos import RepoRegistry

        if injected is not None:
            runtime = injected
        else:
            from coderag.runtime import build_runtime

            runtime = build_runtime(settings)
        t0 = time.perf_counter()
        try:
            try:
                await anyio.to_thread.run_sync(runtime.warm_up)
            except CoderagError as exc:  # e.g. the Edge shard is owned by another process
                log.error("cannot start", extra={"error_code": exc.error_code, "error": exc.detail})
                raise
            app.state.runtime = runtime
            app.state.registry = RepoRegistry(runtime.index)
            app.state.redis = _redis_client(settings)
            app.state.dispatcher = _dispatcher(settings, runtime)
            log.info(
                "coderag ready",
                extra={
                    "mode": "distributed" if settings.distributed else "embedded",
                    "index": settings.resolved_backend,
                    "auth": "on" if settings.api_tokens else "off",
                    "warm_up_s": round(time.perf_counter() - t0, 3),
                },
            )
            yield
        finally:
            _close_quietly(getattr(app.state, "dispatcher", None), "dispatcher")
            _close_quietly(getattr(app.state, "redis", None), "redis")
            app.state.dispatcher = None
            app.state.runtime = None
            if injected is None:
                _close_quietly(runtime, "runtime")

    return lifespan


# --- health ---------------------------------------------------------------------------------


def _readiness(app: FastAPI) -> dict[str, str]:
    """Each dependency -> "ok" or the reason it is not usable (run in a worker thread)."""
    checks: dict[str, str] = {}
    st = app.state
    settings: Settings = st.settings
    rt = getattr(st, "runtime", None)
    if rt is None:
        return {"runtime": "not started"}
    try:
        rt.index.count()
        checks["index"] = "ok"
    except Exception as exc:  # readiness reports, it does not raise
        checks["index"] = _reason(exc)
    try:
        loaded = getattr(rt.embedder, "loaded", None)  # never load the model from a probe
        if loaded is False:
            checks["model"] = "not loaded"
        else:
            int(rt.embedder.dim)
            checks["model"] = "ok"
    except Exception as exc:
        checks["model"] = _reason(exc)
    if settings.distributed:
        try:
            client = getattr(st, "redis", None)
            checks["redis"] = "ok" if client is not None and client.ping() else "no client"
        except Exception as exc:
            checks["redis"] = _reason(exc)
    dispatcher = getattr(st, "dispatcher", None)
    if dispatcher is not None and hasattr(dispatcher, "ping"):
        try:
            checks["dispatcher"] = "ok" if dispatcher.ping() else "not reachable"
        except Exception as exc:
            checks["dispatcher"] = _reason(exc)
    return checks


def _reason(exc: BaseException) -> str:
    code = exc.error_code if isinstance(exc, CoderagError) else type(exc).__name__
    return f"failed ({code})"


def _mount_health(app: FastAPI) -> None:
    @app.get("/healthz", response_model=Health, tags=["ops"], summary="Liveness")
    async def healthz() -> Health:
        """The process serves requests (says nothing about the index or the model)."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Ready,
        tags=["ops"],
        summary="Readiness",
        responses={503: {"model": ErrorResponse, "description": "A dependency is not ready."}},
    )
    async def readyz(request: Request) -> Response:
        """Index, model, Redis (distributed mode) and the dispatcher all usable: 200; else a
        503 whose detail names each dependency that failed."""
        try:
            with anyio.fail_after(READY_TIMEOUT_S):
                checks = await anyio.to_thread.run_sync(
                    _readiness, request.app, abandon_on_cancel=True
                )
        except TimeoutError:
            checks = {"checks": f"timed out after {READY_TIMEOUT_S:.0f} s"}
        failed = {k: v for k, v in checks.items() if v != "ok"}
        if failed:
            detail = "not ready: " + "; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
            return _error(503, "not_ready", detail)
        return JSONResponse(Ready(status="ready", checks=checks).model_dump())

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        """Prometheus exposition; queue depth and index lag are computed at scrape time."""
        await anyio.to_thread.run_sync(refresh, request.app.state)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


# --- OpenAPI --------------------------------------------------------------------------------


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The schema with the one error shape everywhere: FastAPI documents 422 as its own
    ``HTTPValidationError`` by default, which is not what this app answers."""

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


# --- the factory ----------------------------------------------------------------------------


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """The coderag API. ``runtime``: an already built runtime to serve (not closed on
    shutdown; the caller owns it), else one is built from ``settings`` in the lifespan."""
    if settings is None:
        settings = runtime.settings if runtime is not None else get_settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    app = FastAPI(
        title="coderag",
        version=_version(),
        description="Self-hosted code retrieval: search, assembled context, the Continue "
        "context provider, GitLab webhooks and repository status.",
        lifespan=_lifespan(settings, runtime),
    )
    app.state.settings = settings
    app.state.auth = TokenAuth(settings.api_tokens)
    app.state.runtime = None
    app.state.dispatcher = None
    app.state.registry = None
    app.state.redis = None

    app.add_exception_handler(CoderagError, _coderag_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(_RequestContext)  # type: ignore[arg-type]

    # Ours first: ``/v1/repos/{repo:path}/status`` must win over a catch-all repo route.
    app.include_router(retrieval_router)
    _mount_optional_routers(app)
    _mount_health(app)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app


def _mount_optional_routers(app: FastAPI) -> None:
    """Webhooks and repo administration, when the ingest side is installed. The webhook
    authenticates with ``X-Gitlab-Token``; repo administration with the API's bearer token."""
    from fastapi import Depends

    try:
        import indexer.dispatch  # noqa: F401 - without it nothing could be enqueued
        from webhooks.routes import router as webhook_router
    except ImportError as exc:
        if not (exc.name or "").startswith(("webhooks", "indexer")):
            raise
        log.info("webhooks not mounted: %s", exc.name)
        return
    # Their statuses in the one error shape, so the schema documents every answer.
    hook_responses = _errors(400, 401, 413, 422, 500, 503)
    hook_responses[200] = {"description": "Duplicate delivery (this Idempotency-Key was seen)."}
    app.include_router(webhook_router, responses=hook_responses)
    try:
        from webhooks.repo_routes import repo_router
    except ImportError as exc:
        if not (exc.name or "").startswith("webhooks"):
            raise
        return
    app.include_router(
        repo_router,
        dependencies=[Depends(require_principal)],
        responses=_errors(400, 401, 403, 404, 409, 422, 500, 502, 503),
    )


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        s: ERROR_RESPONSES.get(s) or {"model": ErrorResponse, "description": _status_text(s)}
        for s in statuses
    }


def _status_text(status: int) -> str:
    from http import HTTPStatus

    return HTTPStatus(status).phrase
