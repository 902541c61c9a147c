"""Operations routes: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics``.

They need no token: an orchestrator's probes and a Prometheus scraper have none, and none of
them tells anything about the indexed code. Readiness reads ``app.state`` (runtime, Redis
client, dispatcher) in a worker thread, bounded by :data:`READY_TIMEOUT_S`, so a hung
dependency makes the probe fail instead of hanging it.
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from coderag.api.errors import ErrorResponse, error_response
from coderag.errors import CoderagError
from coderag.metrics import CONTENT_TYPE_LATEST, generate_latest, refresh
from coderag.settings import Settings

__all__ = ["READY_TIMEOUT_S", "Health", "Ready", "readiness", "router"]

READY_TIMEOUT_S = 3.0

router = APIRouter(tags=["ops"])


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Ready(BaseModel):
    status: str = Field(examples=["ready"])
    checks: dict[str, str] = Field(description="Each dependency: 'ok' or why it is not.")


def readiness(app: FastAPI) -> dict[str, str]:
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


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """The process serves requests (says nothing about the index or the model)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Readiness",
    responses={503: {"model": ErrorResponse, "description": "A dependency is not ready."}},
)
async def readyz(request: Request) -> Response:
    """Index, model, Redis (distributed mode) and the dispatcher all usable: 200; else a
    503 whose detail names each dependency that failed."""
    try:
        with anyio.fail_after(READY_TIMEOUT_S):
            checks = await anyio.to_thread.run_sync(readiness, request.app, abandon_on_cancel=True)
    except TimeoutError:
        checks = {"checks": f"timed out after {READY_TIMEOUT_S:.0f} s"}
    failed = {k: v for k, v in checks.items() if v != "ok"}
    if failed:
        detail = "not ready: " + "; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
        return error_response(503, "not_ready", detail)
    return JSONResponse(Ready(status="ready", checks=checks).model_dump())


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus exposition; queue depth and index lag are computed at scrape time."""
    await anyio.to_thread.run_sync(refresh, request.app.state)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
