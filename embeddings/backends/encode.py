"""Running a model: the encoders that turn a batch of texts into normalised vectors.

* torch and OpenVINO: sentence-transformers' own ``encode`` (its ``backend="openvino"``
  through optimum-intel), in the precision chosen for it (never the plugin's silent default).
* ONNX Runtime: our own exported transformer; sentence-transformers tokenises and pools.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embeddings.backends.source import offline_hub

__all__ = [
    "OPENVINO_CONFIG",
    "Encoder",
    "OnnxEncoder",
    "STEncoder",
    "TorchEncoder",
    "load_st",
    "normalize",
    "openvino_config",
    "quiet",
]


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (a zero row stays zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


class Encoder(Protocol):
    """One loaded model: turns one batch of texts into normalised float32 vectors."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class STEncoder:
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


class TorchEncoder(STEncoder):
    """sentence-transformers on torch, in two steps: :meth:`prepare` (tokenise, on the CPU)
    and :meth:`run` (the model, on its device).

    Why two: on a GPU the model runs a batch in milliseconds and tokenising the next one on
    the same thread leaves the GPU idle meanwhile; with the steps apart the embedder
    tokenises batch i+1 on another thread while the device runs batch i
    (:meth:`embeddings.Embedder._encode_sorted`). ``encode`` is the two in a row, the same
    forward pass as sentence-transformers' own ``encode`` (the token tensors are pinned on
    CUDA so the copy to the GPU can overlap)."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.cuda = str(getattr(model, "device", "cpu")).startswith("cuda")

    def prepare(self, texts: Sequence[str]) -> dict[str, Any]:
        import torch

        pre = getattr(self.model, "preprocess", None) or self.model.tokenize
        features = dict(pre(list(texts)))
        if self.cuda:
            features = {
                k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in features.items()
            }
        return features

    def run(self, features: dict[str, Any]) -> np.ndarray:
        import torch

        device = self.model.device
        feats = {
            k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in features.items()
        }
        with torch.inference_mode():
            out = self.model(feats)["sentence_embedding"].float()
            out = torch.nn.functional.normalize(out, p=2, dim=1)
            return normalize(out.cpu().numpy())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.run(self.prepare(texts))


class OnnxEncoder:
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


OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
"""OpenVINO computes in bf16 on CPUs that have it (AVX512-BF16, AMX) unless told otherwise, so
the precision is always stated: the one coderag chose (see
:mod:`embeddings.backends.precision`), which is also part of the model id. An int8 model runs
its remaining float ops in f32 (measured faster than bf16 for them on a 2-core AMX box)."""


def openvino_config(precision: str) -> dict[str, str]:
    """OpenVINO's CPU settings for a precision (``bf16`` is a runtime hint on the f32 model)."""
    return {**OPENVINO_CONFIG, "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}


def load_st(
    path: Path, device: str, backend: str = "torch", precision: str = "fp32", **kwargs: Any
) -> Any:
    offline_hub()
    from sentence_transformers import SentenceTransformer

    if backend == "openvino":  # its import resets optimum's log level: import before quiet
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import optimum.intel.openvino  # noqa: F401
        kwargs.setdefault("model_kwargs", {"ov_config": openvino_config(precision)})
    with quiet():
        return SentenceTransformer(
            str(path), device=device, backend=backend, local_files_only=True, **kwargs
        )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
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
