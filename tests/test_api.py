"""The API over real HTTP: search, assembled context, status, errors, probes, metrics, audit."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_support import ALPHA, BETA, ApiServer, running_server

pytestmark = pytest.mark.integration

RESULT_FIELDS = {
    "repo", "path", "start_line", "end_line", "symbol", "kind", "language", "score", "text",
    "uri", "branches",
}  # fmt: skip


@pytest.fixture
def client(api_server: ApiServer):  # type: ignore[no-untyped-def]
    with httpx.Client(
        base_url=api_server.url, headers=api_server.auth("admin"), timeout=30, trust_env=False
    ) as c:
        yield c


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error_code", "detail"}
    assert isinstance(body["detail"], str) and body["detail"]
    if code is not None:
        assert body["error_code"] == code
    return body


def test_the_server_warms_the_candidate_cache_at_start(api_server: ApiServer) -> None:
    """The lifespan fills the Edge candidate cache with every point on a thread, so the first
    searches after a start read no candidate fields (searches alone only cache candidates)."""
    import time

    index = api_server.runtime.index
    cache, _ = index._cache()
    total = index.count()
    deadline = time.monotonic() + 30
    while len(cache) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    assert total > 0 and len(cache) == total


def test_search_returns_ranked_chunks_with_the_documented_fields(client: httpx.Client):
    resp = client.post("/v1/search", json={"query": "settle a payment on the ledger", "k": 5})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"results", "took_ms"}
    assert body["took_ms"] > 0
    results = body["results"]
    assert 0 < len(results) <= 5
    assert all(set(r) == RESULT_FIELDS for r in results)
    top = results[0]
    assert top["symbol"] in ("settle_payment", "settle_payment_batch")
    assert top["uri"] == f"file://{top['path']}"
    assert "main" in top["branches"]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_search_filters_and_workspace_uri(client: httpx.Client):
    resp = client.post(
        "/v1/search",
        json={
            "query": "parse_header_links",
            "repos": [ALPHA],
            "branch": "main",
            "path_globs": ["src/**/util.py"],
            "languages": ["python"],
            "mode": "lexical",
            "workspace_path": "/home/dev/alpha",
        },
    )
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert results and {r["path"] for r in results} == {"src/alpha/util.py"}
    assert results[0]["uri"] == "file:///home/dev/alpha/src/alpha/util.py"


def test_branch_filter(client: httpx.Client):
    q = {"query": "experimental_fee_waiver", "repos": [ALPHA], "mode": "lexical"}
    on_feature = client.post("/v1/search", json={**q, "branch": "feature/x"}).json()["results"]
    on_main = client.post("/v1/search", json={**q, "branch": "main"}).json()["results"]
    assert any(r["symbol"] == "experimental_fee_waiver" for r in on_feature)
    assert all(r["path"] != "src/alpha/feature.py" for r in on_main)


def test_context_endpoint_merges_and_fits_the_budget(client: httpx.Client):
    resp = client.post(
        "/v1/context",
        json={"query": "refund a settled payment", "repos": [ALPHA], "token_budget": 400},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["blocks"] and body["tokens"] <= 400
    assert body["text"].startswith(f"{ALPHA}: src/alpha/")
    first = body["blocks"][0]
    assert first["content"].startswith(f"```python {first['path']} (lines {first['start_line']}-")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"query": "x", "k": 0}, "k"),
        ({"query": "x", "k": 101}, "k"),
        ({"query": ""}, "query"),
        ({"k": 3}, "query"),
        ({"query": "x", "mode": "fuzzy"}, "mode"),
        ({"query": "x", "repos": "group/alpha"}, "repos"),
        ({"query": "x", "surprise": 1}, "surprise"),
        ({"query": "x", "path_globs": [""]}, "path_globs"),
    ],
)
def test_schema_violations_are_422_with_a_readable_detail(
    client: httpx.Client, body: dict[str, Any], fragment: str
):
    detail = assert_error(client.post("/v1/search", json=body), 422, "validation_error")["detail"]
    assert fragment in detail


def test_bad_json_and_bad_text_are_422(client: httpx.Client):
    resp = client.post(
        "/v1/search", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert "not valid JSON" in assert_error(resp, 422, "validation_error")["detail"]
    lone_surrogate = b'{"query": "\\ud800 payment"}'
    resp = client.post(
        "/v1/search", content=lone_surrogate, headers={"Content-Type": "application/json"}
    )
    assert_error(resp, 422, "validation_error")


def test_coderag_errors_map_to_their_status(client: httpx.Client):
    assert_error(client.post("/v1/search", json={"query": "   "}), 400, "invalid_input")
    assert_error(
        client.post("/v1/search", json={"query": "x", "path_globs": ["/"]}), 400, "invalid_input"
    )
    assert_error(client.get("/v1/nope"), 404, "not_found")
    assert_error(client.get("/v1/search"), 405, "method_not_allowed")


def test_unexpected_errors_are_500_without_internals(
    api_server: ApiServer, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
):
    def boom(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("secret internals at /srv/coderag/private")

    monkeypatch.setattr(api_server.runtime.retriever, "search", boom)
    resp = client.post("/v1/search", json={"query": "payment"})
    body = assert_error(resp, 500, "internal_error")
    assert "secret" not in body["detail"] and "/srv" not in body["detail"]
    assert resp.headers["x-request-id"] in body["detail"]


def test_repo_status(client: httpx.Client):
    resp = client.get(f"/v1/repos/{ALPHA}/status")
    assert resp.status_code == 200, resp.text
    st = resp.json()
    assert st["repo"] == ALPHA and st["chunks"] > 0 and st["lag_seconds"] == 0
    branches = {b["branch"]: b for b in st["branches"]}
    assert set(branches) == {"main", "feature/x"}
    assert len(branches["main"]["commit"]) == 40
    assert 0 < branches["main"]["chunks"] < branches["feature/x"]["chunks"]
    assert branches["main"]["pending_commit"] is None
    assert_error(client.get("/v1/repos/group/unknown/status"), 404, "not_found")


def test_health_ready_and_metrics(api_server: ApiServer, client: httpx.Client):
    assert httpx.get(f"{api_server.url}/healthz", trust_env=False).json() == {"status": "ok"}
    ready = httpx.get(f"{api_server.url}/readyz", trust_env=False)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"index": "ok", "model": "ok", "dispatcher": "ok"}
    client.post("/v1/search", json={"query": "ledger"})
    text = httpx.get(f"{api_server.url}/metrics", trust_env=False).text
    assert 'coderag_query_latency_seconds_count{endpoint="search"}' in text
    assert 'coderag_queue_depth{queue="embedded"} 0.0' in text
    assert f'coderag_index_lag_seconds{{branch="main",repo="{ALPHA}"}} 0.0' in text
    for name in (
        "coderag_webhook_events_total",
        "coderag_task_duration_seconds",
        "coderag_chunks_embedded_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text


def test_every_search_is_audited_without_query_or_token(
    api_server: ApiServer, client: httpx.Client, caplog: pytest.LogCaptureFixture
):
    from coderag.auth import token_id

    query = "refund_payment reason for the audit trail"
    with caplog.at_level(logging.INFO, logger="coderag.audit"):
        client.post("/v1/search", json={"query": query, "repos": [ALPHA]})
        client.post("/v1/search", json={"query": query, "repos": [BETA]},
                    headers=api_server.auth("alpha"))  # fmt: skip
    lines = [r for r in caplog.records if r.name == "coderag.audit"]
    assert [r.outcome for r in lines[-2:]] == ["ok", "forbidden"]  # type: ignore[attr-defined]
    ok = lines[-2]
    assert ok.getMessage() == "search"
    assert ok.endpoint == "search" and ok.repos == [ALPHA]  # type: ignore[attr-defined]
    assert ok.token_id == token_id(api_server.tokens["admin"])  # type: ignore[attr-defined]
    assert ok.results > 0 and ok.query_chars == len(query)  # type: ignore[attr-defined]
    for r in lines:
        flat = repr(r.__dict__)
        assert "refund_payment" not in flat
        assert all(tok not in flat for tok in api_server.tokens.values())


def test_openapi_documents_one_error_shape(client: httpx.Client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/search", "/v1/context", "/v1/continue/context", "/healthz", "/readyz"} <= set(
        spec["paths"]
    )
    assert "/v1/repos/{repo}/status" in spec["paths"]
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    error = schemas["ErrorResponse"]
    assert set(error["required"]) == {"error_code", "detail"}
    # The Continue route's errors are also one item Continue shows (optional elsewhere).
    assert set(error["properties"]) == {"error_code", "detail", "name", "description", "content"}
    search = spec["paths"]["/v1/search"]["post"]["responses"]
    for status in ("200", "401", "403", "422", "500"):
        assert status in search
    ref = search["422"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ErrorResponse")
    assert "bearer" in str(spec["components"].get("securitySchemes", {})).lower()


def test_readyz_fails_when_the_index_is_closed(tmp_path: Path, embedder: Any, model_dir: Path):
    from coderag.api import create_app
    from coderag.runtime import build_runtime
    from coderag.settings import Settings

    settings = Settings(data_dir=tmp_path / "d", model_export_dir=model_dir, index_backend="edge")
    rt = build_runtime(settings)
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    with running_server(create_app(settings, runtime=rt)) as url:
        assert httpx.get(f"{url}/readyz", trust_env=False).status_code == 200
        rt.index.close()
        resp = httpx.get(f"{url}/readyz", trust_env=False)
        body = assert_error(resp, 503, "not_ready")
        assert "index" in body["detail"] and "model" not in body["detail"]
        search = httpx.post(f"{url}/v1/search", json={"query": "x"}, trust_env=False)
        body = assert_error(search, 503, "index_error")
        assert str(tmp_path) not in body["detail"]
    rt.close()


def test_readyz_checks_redis_in_distributed_mode(tmp_path: Path, embedder: Any, model_dir: Path):
    import socket

    from coderag.api import create_app
    from coderag.runtime import build_runtime
    from coderag.settings import Settings
    from tests import redis_support

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens there once closed
    for redis_url, ready in (
        (redis_support.redis_url(14), True),
        (f"redis://127.0.0.1:{dead}/0", False),
    ):
        settings = Settings(
            data_dir=tmp_path / str(ready),
            model_export_dir=model_dir,
            index_backend="edge",
            celery_broker_url=redis_url,
            redis_url=redis_url,
        )
        rt = build_runtime(settings)
        rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
        with running_server(create_app(settings, runtime=rt)) as url:
            resp = httpx.get(f"{url}/readyz", trust_env=False, timeout=10)
        rt.close()
        if ready:
            assert resp.status_code == 200, resp.text
            assert resp.json()["checks"]["redis"] == "ok"
        else:
            detail = assert_error(resp, 503, "not_ready")["detail"]
            assert "redis" in detail and "index" not in detail
