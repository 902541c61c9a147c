"""Exporting a model for a faster backend, once per model and toolchain.

Exports are cached under ``models_dir/<model id>/<backend>-<toolchain hash>/`` so a process
start never re-exports; a new torch / transformers / openvino / onnxruntime version gives a
new hash and one new export. Exports are written to a temporary directory and renamed into
place under a file lock, so concurrent workers export once and never see half a model. A
backend that does not keep the vectors is remembered in the manifest, not retried every start.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import embeddings.backends.check as check
from embeddings.backends.encode import Encoder, OnnxEncoder, STEncoder, load_st, quiet
from embeddings.backends.source import ModelSource, atomic_write

__all__ = ["EXPORT_FORMAT", "INT8", "export", "export_dir", "export_lock", "open_exported"]

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1
"""Bump when the layout or the way of exporting changes: every cached export is redone."""
INT8 = "openvino-int8"
"""The export kind of an int8 model: the OpenVINO export, quantised by NNCF (its own cache
directory, since its weights differ)."""


def _versions(*dists: str) -> dict[str, str]:
    out = {}
    for d in dists:
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            out[d] = "-"
    return out


def _toolchain(backend: str) -> dict[str, str]:
    common = ("torch", "transformers", "sentence-transformers")
    if backend == "openvino":
        return _versions(*common, "openvino", "optimum-intel", "optimum")
    if backend == INT8:
        return _versions(*common, "openvino", "optimum-intel", "optimum", "nncf")
    return _versions(*common, "onnx", "onnxscript", "onnxruntime")


_EXPORT_LOCK = threading.Lock()


@contextlib.contextmanager
def export_lock(directory: Path) -> Iterator[None]:
    """Serialises exports of one model across threads and processes (flock where there is
    one)."""
    directory.mkdir(parents=True, exist_ok=True)
    with _EXPORT_LOCK, open(directory / ".lock", "a+b") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: the thread lock is all we have
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def export_dir(models_dir: Path, model_id: str, backend: str) -> Path:
    tool = _toolchain(backend)
    key = hashlib.sha256(json.dumps([EXPORT_FORMAT, tool], sort_keys=True).encode()).hexdigest()
    # No "@" in the path: huggingface_hub reads "name@rev" as a revision of a hub repo.
    return models_dir / re.sub(r"[^A-Za-z0-9._-]+", "_", model_id) / f"{backend}-{key[:12]}"


def open_exported(
    src: ModelSource, backend: str, target: Path, precision: str = "fp32"
) -> tuple[Encoder, int]:
    """Open an export; ``precision`` bf16 runs OpenVINO's f32 model in bf16 (a runtime hint)."""
    if backend in ("openvino", INT8):
        st = load_st(target / "model", "cpu", backend="openvino", precision=precision)
        return STEncoder(st), int(st.max_seq_length)
    st = load_st(src.path, "cpu")
    return OnnxEncoder(st, target / "model.onnx"), int(st.max_seq_length)


def export(src: ModelSource, backend: str, target: Path, precision: str = "fp32") -> None:
    """Export, check against torch, and publish ``target`` (with a manifest saying whether
    the backend keeps the vectors: a failed check is remembered, not retried every start)."""
    log.info("exporting %s to %s (once per model and toolchain)", src.path, backend)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{backend}-", dir=target.parent))
    manifest: dict[str, Any] = {"backend": backend, "toolchain": _toolchain(backend)}
    try:
        torch_st = load_st(src.path, "cpu")
        ref = STEncoder(torch_st).encode(check.PROBE_TEXTS)
        np.save(tmp / "probe_torch.npy", ref)
        try:
            with quiet():
                if backend in ("openvino", INT8):
                    ov = load_st(src.path, "cpu", backend="openvino")
                    ov.save_pretrained(str(tmp / "model"))
                    del ov
                    if backend == INT8:
                        manifest["calibration"] = _quantize_int8(torch_st, tmp / "model")
                else:
                    _export_onnx(torch_st, tmp / "model.onnx")
            encoder, _ = open_exported(src, backend, tmp, precision)
            cos = check.min_cosine(ref, encoder.encode(check.PROBE_TEXTS))
            floor = check.min_cosine_for(precision)
            manifest.update(ok=cos >= floor, probe_min_cosine=cos, precision=precision)
            if cos < floor:
                manifest["reason"] = f"probe cosine {cos:.5f} < {floor} ({precision})"
        except Exception as exc:  # remembered in the manifest, logged on load
            manifest.update(ok=False, reason=f"{type(exc).__name__}: {exc}"[:2000])
        if not manifest["ok"]:  # keep only the verdict, not a model nobody may use
            for p in tmp.iterdir():
                if p.name != "probe_torch.npy":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        manifest["export_seconds"] = round(time.perf_counter() - t0, 2)
        manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        atomic_write(tmp / "manifest.json", json.dumps(manifest, indent=2))
        if target.exists():  # a stale dir without manifest (crashed export)
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _export_onnx(st_model: Any, out: Path) -> None:
    """The transformer of an ST model to ONNX with dynamic batch and sequence axes."""
    import torch

    hf = st_model[0].auto_model.eval()
    sample = st_model.tokenizer(
        ["a short text", "a somewhat longer text to pad the first one"],
        padding=True,
        return_tensors="pt",
    )
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class _Wrapped(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            kw = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            return self.model(**kw).last_hidden_state

    max_len = int(getattr(hf.config, "max_position_embeddings", 512) or 512)
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("sequence", max=max_len)
    args = tuple(sample[n] for n in names)
    shapes = {n: {0: batch, 1: seq} for n in names}
    program = torch.onnx.export(
        _Wrapped(hf),
        args,
        input_names=names,
        output_names=["last_hidden_state"],
        dynamic_shapes=shapes,
        dynamo=True,
        verbose=False,
    )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    program.save(str(out))


def _quantize_int8(st_model: Any, model_dir: Path) -> dict[str, Any]:
    """NNCF post-training static quantisation of the exported OpenVINO model, in place.

    Calibrated on :func:`~embeddings.backends.calibration.calibration_texts` (code and prose
    from the Python standard library: present offline on every machine, the same for a given
    Python), tokenised as the model will see them. Transformer mode keeps softmax, layer norm
    and GELU in float, which is what keeps the cosine near 0.995."""
    import nncf
    import openvino as ov

    from embeddings.backends.calibration import calibration_texts

    xml = next(model_dir.rglob("openvino_model.xml"))
    core = ov.Core()
    model = core.read_model(str(xml))
    names = [i.get_any_name() for i in model.inputs]
    texts = calibration_texts()
    tok = st_model.tokenizer
    max_len = int(st_model.max_seq_length)
    samples = []
    for text in texts:
        enc = tok([text], truncation=True, max_length=max_len, return_tensors="np")
        samples.append({n: enc[n] for n in names if n in enc})
    # NNCF's progress bars go to stdout: keep stdout for the commands' JSON.
    with quiet(), contextlib.redirect_stdout(sys.stderr):
        quantized = nncf.quantize(
            model,
            nncf.Dataset(samples),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(samples),
        )
    tmp_xml = xml.with_name("openvino_model.int8.xml")
    ov.save_model(quantized, str(tmp_xml))
    del model, quantized
    os.replace(tmp_xml, xml)
    os.replace(tmp_xml.with_suffix(".bin"), xml.with_suffix(".bin"))
    return {"texts": len(samples), "source": "python standard library"}
