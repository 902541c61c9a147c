"""The API app factory: one FastAPI app for the embedded and the distributed mode.

``create_app`` is cheap and import-safe: it wires routers, error handlers and middleware, and
leaves everything heavy to the lifespan, which runs once per process:

1. build the runtime from the settings (or take the injected one: tests, benches), and
   ``warm_up`` it: the model is loaded and the index opened *before* the first request, never
   at import;
2. build the repo registry, a Redis client (distributed mode only) and the dispatcher
   (Celery in distributed mode; in embedded mode a background executor in this very process
   that indexes what the webhooks enqueue);
3. open the durable webhook spool (``settings.webhook_spool_file``) and start its
   forwarder, which hands spooled deliveries to the dispatcher whenever the broker is
   reachable (rows left by a previous run of this process included);
4. put them on ``app.state`` (``settings``, ``runtime``, ``registry``, ``redis``,
   ``dispatcher``, ``webhook_spool``, ``webhook_forwarder``), where every router reads them;
5. run the MCP session manager of ``/mcp`` (:mod:`coderag.api.mcp`) until shutdown.

This module is a composition root: it imports the routers of every stage (retrieval,
webhooks, repositories, operations) and the indexer's dispatcher; no router imports it.
Errors have one shape everywhere (:mod:`coderag.api.errors`).

uvicorn serves it as a factory: ``uvicorn coderag.api.app:create_app --factory``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI

from coderag.api.errors import error_responses, install_error_handling, openapi_with_errors
from coderag.api.health import router as health_router
from coderag.api.mcp import install_mcp
from coderag.api.mcp import serving as serving_mcp
from coderag.api.repos import router as repos_router
from coderag.auth import authenticator_from_settings
from coderag.errors import CoderagError, TransientError
from coderag.freshness import start_in_api
from coderag.logging import configure_logging
from coderag.repos import RepoRegistry
from coderag.settings import Settings, get_settings
from indexer.queue import dispatcher_from_settings
from retriever.api import router as retrieval_router
from webhooks.routes import router as webhook_router
from webhooks.spool import Forwarder, WebhookSpool

if TYPE_CHECKING:  # the runtime imports the model stack: never at import time
    from coderag.runtime import Runtime

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("coderag")
    except Exception:  # not installed (a source checkout): still serve
        return "0.0.0"


# --- lifespan -------------------------------------------------------------------------------


def _redis_client(settings: Settings) -> Any | None:
    if not settings.distributed:
        return None
    import redis

    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1.0, socket_timeout=2.0)


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
            runtime.warm_search_cache()
            app.state.registry = RepoRegistry(runtime.index)
            app.state.redis = _redis_client(settings)
            app.state.dispatcher = dispatcher_from_settings(settings, runtime)
            # Records stored before the project id index existed are found by id too.
            await anyio.to_thread.run_sync(app.state.registry.index_projects)
            spool = WebhookSpool(
                settings.webhook_spool_file,
                retention_s=settings.webhook_spool_retention_seconds,
            )
            app.state.webhook_spool = spool
            app.state.webhook_forwarder = Forwarder(spool, app.state.dispatcher).start()
            app.state.freshness = start_in_api(settings, runtime.index, app.state.dispatcher)
            log.info(
                "coderag ready",
                extra={
                    "mode": "distributed" if settings.distributed else "embedded",
                    "index": settings.resolved_backend,
                    "auth": "on" if settings.auth_enabled else "off",
                    "oidc": settings.oidc_issuer or "off",
                    "warm_up_s": round(time.perf_counter() - t0, 3),
                },
            )
            async with serving_mcp(app):  # the SDK's session manager, for this lifespan
                yield
        finally:
            if getattr(app.state, "freshness", None) is not None:  # reconcile passes
                app.state.freshness.stop()
            app.state.freshness = None
            forwarder = getattr(app.state, "webhook_forwarder", None)
            if forwarder is not None:  # before the dispatcher it hands rows to
                forwarder.stop(drain=True)
            _close_quietly(getattr(app.state, "webhook_spool", None), "webhook spool")
            app.state.webhook_forwarder = None
            app.state.webhook_spool = None
            _close_quietly(getattr(app.state, "dispatcher", None), "dispatcher")
            _close_quietly(getattr(app.state, "redis", None), "redis")
            app.state.dispatcher = None
            app.state.runtime = None
            if injected is None:
                _close_quietly(runtime, "runtime")

    return lifespan


# --- the factory ----------------------------------------------------------------------------


def _gitlab_projects(app: FastAPI) -> dict[str, int]:
    """The registered GitLab projects, for per-user scopes (the registry opens at start-up)."""
    registry = app.state.registry
    if registry is None:
        raise TransientError("the service is starting: the repository registry is not open yet")
    return registry.gitlab_projects()


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
    app.state.auth = authenticator_from_settings(settings, projects=lambda: _gitlab_projects(app))
    app.state.runtime = None
    app.state.dispatcher = None
    app.state.registry = None
    app.state.redis = None
    app.state.webhook_spool = None
    app.state.webhook_forwarder = None

    install_error_handling(app)

    # Retrieval first: the routes every reader uses are the first in the schema.
    app.include_router(retrieval_router)
    # The webhook authenticates with ``X-Gitlab-Token``, not the bearer token. Its statuses
    # in the one error shape, so the schema documents every answer.
    hook_responses = error_responses(400, 401, 413, 422, 500, 503)
    hook_responses[200] = {
        "description": "Duplicate delivery (this Idempotency-Key or webhook-id was seen)."
    }
    hook_responses[503] = {
        **hook_responses[503],
        "description": "The webhook spool cannot be written, or the registry cannot be read "
        "(never a broker outage: deliveries are spooled and forwarded later).",
    }
    app.include_router(webhook_router, responses=hook_responses)
    app.include_router(repos_router)
    app.include_router(health_router)
    # The Model Context Protocol (streamable HTTP), under the same bearer auth; not in the
    # OpenAPI schema (coderag/api/mcp.py).
    install_mcp(app, version=app.version)
    app.openapi = openapi_with_errors(app)  # type: ignore[method-assign]
    return app
