"""Choosing and loading a backend: device, backend, and the fallback to torch.

Why several backends: on a CPU-only box the same MiniLM weights run several times faster
under OpenVINO than under eager torch fp32, with the same vectors. A backend that fails its
check (at export or at load) is not used: the embedder falls back to torch and logs why.

* torch: sentence-transformers as is; fp16 on CUDA (checked against fp32 like any backend).
* openvino: sentence-transformers' own ``backend="openvino"`` (optimum-intel), in fp32, bf16
  (a runtime hint on the same export) or int8 (an NNCF-quantised export); ``auto`` chooses by
  CPU (:mod:`embeddings.backends.precision`).
* onnx: our own export (``torch.onnx.export``, dynamo) run by ONNX Runtime, because the
  optimum-onnx package that sentence-transformers' ONNX backend needs does not support
  transformers 5.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import embeddings.backends.check as check
import embeddings.backends.export as export
import embeddings.backends.precision as prec
from coderag.errors import EmbeddingError, translate
from embeddings.backends.encode import Encoder, TorchEncoder, load_st
from embeddings.backends.source import ModelSource, check_source, offline_hub

__all__ = [
    "BACKENDS",
    "LoadedModel",
    "available_backends",
    "load_model",
    "plan",
    "resolve_device",
]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "openvino")


def resolve_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU, else CPU. ``cuda`` without a GPU is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise EmbeddingError(f"unknown embedding device {device!r} (auto, cpu, cuda)")
    if device == "cpu":
        return "cpu"
    import torch

    has_cuda = bool(torch.cuda.is_available())
    if device == "cuda" and not has_cuda:
        raise EmbeddingError("embedding_device=cuda but torch sees no CUDA GPU")
    return "cuda" if has_cuda else "cpu"


def _importable(*modules: str) -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """Backends whose libraries are installed (whether they keep the vectors is checked at
    export)."""
    out = ["torch"]
    if _importable("onnxruntime", "onnx", "onnxscript"):
        out.append("onnx")
    if _importable("openvino", "optimum.intel"):
        out.append("openvino")
    return out


def _auto_backend(device: str) -> str:
    """Fastest backend that keeps the vectors: torch fp16 on CUDA; on CPU OpenVINO, then ONNX
    Runtime, then torch (measured on a 2-core CPU: OpenVINO well ahead, ORT modest)."""
    if device == "cuda":
        return "torch"
    avail = available_backends()
    for b in ("openvino", "onnx"):
        if b in avail:
            return b
    return "torch"


@dataclass
class LoadedModel:
    """What :func:`load_model` hands the facade."""

    encoder: Encoder
    backend: str
    device: str
    dim: int
    max_seq_length: int
    info: dict[str, Any] = field(default_factory=dict)
    """How it came to be: export dir, exported now or cached, probe cosine, fallback reason."""


def plan(
    backend: str, device: str, precision: str, models_dir: Path | None, model_id: str
) -> tuple[str, str, str]:
    """``(backend, device, precision)`` as they will load, without loading anything: the
    model id (cache keys, index fingerprint) carries the precision before the model exists."""
    if backend not in ("auto", *BACKENDS):
        raise EmbeddingError(f"unknown embedding backend {backend!r} (auto, torch, onnx, openvino)")
    device = resolve_device(device)
    if backend == "auto":
        backend = _auto_backend(device)
    elif backend != "torch" and device == "cuda":
        raise EmbeddingError(
            f"embedding backend {backend} runs on CPU here; use backend torch (fp16) on CUDA"
        )
    try:
        precision = prec.resolve_precision(precision, backend, device, models_dir, model_id)
    except ValueError as exc:
        raise EmbeddingError(str(exc)) from exc
    return backend, device, precision


def load_model(
    src: ModelSource,
    model_id: str,
    backend: str,
    device: str,
    models_dir: Path,
    precision: str = "auto",
) -> LoadedModel:
    """Load ``src`` for ``backend`` on ``device`` in ``precision`` (each resolved or ``auto``)."""
    offline_hub()
    check_source(src)
    backend, device, precision = plan(backend, device, precision, models_dir, model_id)
    if backend == "torch":
        return _load_torch(src, device, precision)
    try:
        return _load_exported(src, model_id, backend, models_dir, precision)
    except EmbeddingError:
        raise
    except Exception as exc:  # any backend failure: fall back, loudly
        reason = f"{backend} {precision} backend failed: {type(exc).__name__}: {exc}"
        log.warning("embedding backend %s unusable, falling back to torch: %s", backend, reason)
        loaded = _load_torch(src, "cpu", "fp32")
        loaded.info.update(requested_backend=backend, fallback_reason=reason)
        return loaded


def _load_torch(src: ModelSource, device: str, precision: str = "fp32") -> LoadedModel:
    with translate(EmbeddingError, f"loading embedding model {src.path}"):
        st = load_st(src.path, device)
        enc = TorchEncoder(st)
        info: dict[str, Any] = {"precision": "fp32"}
        if precision == "fp32":  # one text gives the dimension
            st.float()  # weights stored in half precision are still computed in fp32
            ref = enc.encode(check.PROBE_TEXTS[:1])
            return LoadedModel(
                enc, "torch", device, int(ref.shape[1]), int(st.max_seq_length), info
            )
        import torch

        # A half precision is kept only if it keeps the vectors (fp16 doubles GPU throughput).
        ref = enc.encode(check.PROBE_TEXTS)
        st.to({"fp16": torch.float16, "bf16": torch.bfloat16}[precision])
        cos = check.min_cosine(ref, enc.encode(check.PROBE_TEXTS))
        info.update(precision=precision, probe_min_cosine=cos)
        if cos < check.min_cosine_for(precision):
            log.warning("%s changes the vectors (cosine %.5f): staying in fp32", precision, cos)
            st.float()
            info.update(precision="fp32", fallback_reason=f"{precision} cosine {cos:.5f}")
    return LoadedModel(enc, "torch", device, int(ref.shape[1]), int(st.max_seq_length), info)


def _load_exported(
    src: ModelSource, model_id: str, backend: str, models_dir: Path, precision: str
) -> LoadedModel:
    kind = export.INT8 if precision == "int8" else backend
    target = export.export_dir(models_dir, model_id, kind)
    manifest_path = target / "manifest.json"
    exported_now = False
    with export.export_lock(target.parent):
        if not manifest_path.is_file():
            export.export(src, kind, target, precision)
            exported_now = True
    manifest = json.loads(manifest_path.read_text())
    if not manifest.get("ok"):
        reason = manifest.get("reason", "export failed")
        log.warning(
            "embedding backend %s does not keep the vectors of %s (%s; decided at export, "
            "see %s): using torch",
            backend,
            model_id,
            reason,
            manifest_path,
        )
        loaded = _load_torch(src, "cpu")
        loaded.info.update(
            requested_backend=backend, fallback_reason=reason, export_dir=str(target)
        )
        return loaded
    t0 = time.perf_counter()
    encoder, max_len = export.open_exported(src, kind, target, precision)
    # Every start: the backend must still reproduce the torch vectors stored at export.
    ref = np.load(target / "probe_torch.npy")
    cos = check.min_cosine(ref, encoder.encode(check.PROBE_TEXTS))
    floor = check.min_cosine_for(precision)
    if cos < floor:
        raise RuntimeError(
            f"probe cosine {cos:.5f} < {floor} ({precision}) against stored torch vectors"
        )
    info = {
        "export_dir": str(target),
        "exported": exported_now,
        "export_seconds": manifest.get("export_seconds"),
        "load_seconds": round(time.perf_counter() - t0, 3),
        "probe_min_cosine": cos,
        "precision": precision,
        "toolchain": manifest.get("toolchain"),
    }
    return LoadedModel(encoder, backend, "cpu", int(ref.shape[1]), max_len, info)
