"""Backends: each one installed must reproduce torch's vectors, exports are cached, and a
backend that does not keep the vectors is replaced by torch (checked, never assumed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import embeddings.backends as backends
from bench.embeddings import bench_backends, code_windows
from embeddings import Embedder

CODE = [
    "import requests\n\ndef fetch(url: str) -> dict:\n    r = requests.get(url, timeout=5)\n"
    "    r.raise_for_status()\n    return r.json()",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"
    "        self.items.append(x)",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "how to sort a dictionary by value in python",
    "async def handler(request):\n    body = await request.json()\n    return web.json_response("
    "{'ok': True, 'n': len(body)})",
    "README\n\nInstall with pip, then run `coderag serve`. " * 30,  # truncated at 256 tokens
    "z",
]


@pytest.fixture(scope="module")
def onnx_embedder(model_dir: Path) -> Embedder:
    if "onnx" not in backends.available_backends():
        pytest.skip("onnxruntime / onnx / onnxscript not installed")
    emb = Embedder(backend="onnx", device="cpu", models_dir=model_dir)
    emb.warm_up()
    return emb


def test_auto_prefers_openvino_on_cpu(embedder: Embedder) -> None:
    if "openvino" in backends.available_backends():
        assert embedder.backend == "openvino", embedder.backend_info
    assert embedder.backend_info.get("probe_min_cosine", 1.0) >= backends.MIN_COSINE


@pytest.mark.parametrize("backend", ["openvino", "onnx"])
def test_backend_agrees_with_torch(
    backend: str, request: pytest.FixtureRequest, torch_embedder: Embedder
) -> None:
    if backend not in backends.available_backends():
        pytest.skip(f"{backend} not installed")
    emb: Embedder = request.getfixturevalue(
        "embedder" if backend == "openvino" else "onnx_embedder"
    )
    assert emb.backend == backend, emb.backend_info  # not a silent fallback
    ref = torch_embedder.embed_queries(CODE)
    got = emb.embed_queries(CODE)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert float(np.min(np.sum(ref * got, axis=1))) >= backends.MIN_COSINE


def test_export_is_cached_not_redone(embedder: Embedder, model_dir: Path) -> None:
    if embedder.backend == "torch":
        pytest.skip("no exported backend on this machine")
    info = embedder.backend_info
    manifest = Path(info["export_dir"]) / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    assert json.loads(manifest.read_text())["ok"] is True
    second = Embedder(backend=embedder.backend, device="cpu", models_dir=model_dir)
    second.warm_up()
    assert second.backend == embedder.backend
    assert second.backend_info["exported"] is False
    assert second.backend_info["export_dir"] == info["export_dir"]
    assert manifest.stat().st_mtime_ns == stamp


def test_failed_export_falls_back_to_torch_and_is_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[Path] = []

    def broken(st_model: object, out: Path) -> None:
        calls.append(out)
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(backends.export, "_export_onnx", broken)
    with caplog.at_level(logging.WARNING, logger="embeddings.backends"):
        emb = Embedder(backend="onnx", device="cpu", models_dir=tmp_path)
        emb.warm_up()
    assert emb.backend == "torch"
    assert "exporter exploded" in emb.backend_info["fallback_reason"]
    assert any("using torch" in r.getMessage() for r in caplog.records)
    assert emb.embed_queries(["still works"]).shape == (1, 384)
    again = Embedder(backend="onnx", device="cpu", models_dir=tmp_path)
    again.warm_up()
    assert again.backend == "torch" and len(calls) == 1  # the verdict is cached too


def test_vectors_are_rechecked_at_every_load(
    embedder: Embedder,
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if embedder.backend == "torch":
        pytest.skip("no exported backend on this machine")
    monkeypatch.setattr(backends.check, "MIN_COSINE", 1.5)  # no backend can pass this
    with caplog.at_level(logging.WARNING, logger="embeddings.backends"):
        emb = Embedder(backend=embedder.backend, device="cpu", models_dir=model_dir)
        emb.warm_up()
    assert emb.backend == "torch"
    assert "probe cosine" in emb.backend_info["fallback_reason"]


def test_bench_backends_reports_speed_and_agreement(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("\n".join(f"def f{i}(x):\n    return x * {i}" for i in range(50)))
    texts = code_windows(src, lines=20, limit=5)
    assert len(texts) == 5 and texts[0].startswith("a.py\n")
    out = bench_backends(texts, batch_size=4, backends=["torch"], rounds=1, models_dir=tmp_path)
    torch_row = out["backends"]["torch"]
    assert out["texts"] == 5 and torch_row["chunks_per_s"] > 0
    assert torch_row["speedup_vs_torch"] == 1.0 and torch_row["cosine_min"] > 0.9999
