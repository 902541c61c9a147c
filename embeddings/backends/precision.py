"""Which numeric precision the model runs in, chosen from what this CPU does natively.

Why it matters: on a CPU with native bf16 (AVX512-BF16, AMX) OpenVINO runs MiniLM about three
times faster in bf16 than in f32, and an int8 model (NNCF post-training quantisation) uses the
VNNI / AMX-INT8 kernels. Both change the vectors a little: bf16 keeps a cosine of about
0.99997 to fp32, int8 about 0.995. What retrieval loses is measured, not assumed:
``coderag bench precision`` embeds the same chunks in every precision, scores CoSQA dev with
each, and writes its pick (the fastest whose MRR is within 0.3 of fp32) next to the model's
exports. ``auto`` reads that verdict when it was measured on a CPU like this one; without one
it takes bf16 where the CPU has it natively and fp32 elsewhere (int8 only when measured or
asked for).

Vectors of two precisions must not be mixed in one index, so a precision other than fp32 is
part of the model id (``~bf16``), hence of the embedding cache keys and the index fingerprint.
"""

from __future__ import annotations

import json
import logging
import platform
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "CPU_PRECISIONS",
    "PRECISIONS",
    "VERDICT_FILE",
    "can_run",
    "cpu_features",
    "cpu_signature",
    "default_cpu_precision",
    "precision_tag",
    "read_verdict",
    "resolve_precision",
    "strip_precision_tag",
    "write_verdict",
]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
CPU_PRECISIONS = ("fp32", "bf16", "int8")
"""What the OpenVINO backend runs on a CPU (fp16 is a GPU precision here)."""

VERDICT_FILE = "precision.json"
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@lru_cache(maxsize=1)
def cpu_features() -> dict[str, Any]:
    """The CPU's model name, the flags that decide precision, and OpenVINO's own view
    (``OPTIMIZATION_CAPABILITIES``: which precisions its CPU plugin runs natively)."""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
        flags = set(m.group(1).split()) if m else set()
        name = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        model = name.group(1).strip() if name else model
    except OSError:  # not Linux: OpenVINO's capabilities below still answer
        pass
    caps: list[str] = []
    try:
        import openvino as ov

        caps = sorted(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception as exc:  # no OpenVINO: only torch runs, fp32
        log.debug("OpenVINO CPU capabilities unavailable: %s", exc)
    return {
        "model": model,
        "flags": sorted(f for f in _FLAGS if f in flags),
        "openvino_capabilities": caps,
    }


def cpu_signature(features: dict[str, Any] | None = None) -> str:
    """What makes two CPUs alike for precision: model name and the deciding flags."""
    f = features or cpu_features()
    return f"{f['model']}|{','.join(f['flags'])}"


def default_cpu_precision(features: dict[str, Any] | None = None) -> str:
    """Without a measured verdict: bf16 where OpenVINO runs it natively, else fp32."""
    f = features or cpu_features()
    return "bf16" if "BF16" in f.get("openvino_capabilities", []) else "fp32"


def verdict_path(models_dir: Path, weights_id: str) -> Path:
    return models_dir / re.sub(r"[^A-Za-z0-9._-]+", "_", weights_id) / VERDICT_FILE


def read_verdict(models_dir: Path | None, weights_id: str) -> dict[str, Any] | None:
    """The verdict of ``coderag bench precision`` for this model on a CPU like this one."""
    if models_dir is None:
        return None
    path = verdict_path(models_dir, weights_id)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("cpu_signature") != cpu_signature() or data.get("pick") not in CPU_PRECISIONS:
        return None
    return data


def write_verdict(models_dir: Path, weights_id: str, verdict: dict[str, Any]) -> Path:
    from coderag.atomic import atomic_write

    path = verdict_path(models_dir, weights_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({**verdict, "cpu_signature": cpu_signature()}, indent=2))
    return path


def resolve_precision(
    requested: str, backend: str, device: str, models_dir: Path | None, weights_id: str
) -> str:
    """The precision ``requested`` means for ``backend`` on ``device`` (both resolved).

    Raises ``ValueError`` with the reason for a combination that cannot run."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    if backend == "torch":
        if requested == "auto":
            return "fp16" if device == "cuda" else "fp32"
        if requested == "int8":
            raise ValueError("precision int8 runs on the openvino backend, not torch")
        return requested
    if backend == "onnx":
        if requested not in ("auto", "fp32"):
            raise ValueError(f"precision {requested} needs the openvino or torch backend")
        return "fp32"
    # openvino, on the CPU
    if requested == "fp16":
        raise ValueError("precision fp16 is for CUDA (torch backend); the CPU runs bf16")
    if requested != "auto":
        if not can_run(requested, "cpu"):
            # OpenVINO takes the bf16 hint on a CPU without BF16 and runs f32, emulated int8
            # is slower than f32: allowed (an operator may align to an index), but said.
            log.warning(
                "precision %s is not native on this CPU (OpenVINO capabilities: %s): it runs, "
                "but slower than fp32 or emulated; 'auto' would pick %s",
                requested,
                ", ".join(cpu_features().get("openvino_capabilities", [])) or "unknown",
                default_cpu_precision(),
            )
        return requested
    verdict = read_verdict(models_dir, weights_id)
    return verdict["pick"] if verdict else default_cpu_precision()


def precision_tag(precision: str) -> str:
    """The model-id suffix of a precision: none for fp32 (indexes written before precision
    was chosen were fp32 and keep their id), ``~bf16`` and so on otherwise."""
    return "" if precision in ("fp32", "auto") else f"~{precision}"


def strip_precision_tag(model_id_or_fingerprint: str) -> tuple[str, str]:
    """``(text without the precision tag, precision)`` of a model id or an index fingerprint."""
    m = re.search(r"~(fp16|bf16|int8)(?=$|:)", model_id_or_fingerprint)
    if not m:
        return model_id_or_fingerprint, "fp32"
    s = model_id_or_fingerprint
    return s[: m.start()] + s[m.end() :], m.group(1)


def can_run(precision: str, device: str) -> bool:
    """Whether this machine runs ``precision`` natively (what aligning to an index needs)."""
    if precision == "fp32":
        return True
    if device == "cuda":
        return precision in ("fp16", "bf16")
    caps = cpu_features().get("openvino_capabilities", [])
    return (precision == "bf16" and "BF16" in caps) or (precision == "int8" and "INT8" in caps)
