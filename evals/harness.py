"""The temporary index every benchmark runs on, built by the service's own composition root.

A benchmark is only worth something if it measures what users get: the same chunkers,
embedder, index backend and retriever, wired by :func:`coderag.runtime.build_runtime`. Only
the data dir is temporary (an Edge shard can be open in one process, and an eval must never
touch the user's index); the embedding cache and the exported models stay shared, so a second
run of a benchmark does not embed the corpus again.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from coderag.errors import InputError
from coderag.settings import Settings

if TYPE_CHECKING:
    from coderag.models_registry import ModelSpec
    from coderag.runtime import Runtime

__all__ = ["MODES", "ProgressFn", "check_mode", "eval_runtime", "eval_settings"]

MODES = ("hybrid", "dense", "lexical")

ProgressFn = Callable[[str, int, int], None]
"""progress(stage, done, total), as the indexer reports it; the CLI draws it on stderr."""


def eval_settings(data_dir: Path, base: Settings | None = None) -> Settings:
    """``base`` (default: the environment's settings) on an embedded index in ``data_dir``.

    The cache and model-export dirs are pinned to ``base``'s so that they outlive
    ``data_dir``; the backend is forced to Edge so a configured Qdrant server is never
    written to by a benchmark.
    """
    base = base if base is not None else Settings()
    return base.model_copy(
        update={
            "data_dir": Path(data_dir),
            "index_backend": "edge",
            "qdrant_url": None,
            "embedding_cache_dir": base.cache_dir,
            "model_export_dir": base.models_dir,
        }
    )


@contextmanager
def eval_runtime(
    base: Settings | None = None,
    *,
    data_dir: Path | None = None,
    model: ModelSpec | None = None,
) -> Iterator[Runtime]:
    """A runtime on a fresh temporary data dir, removed afterwards.

    ``data_dir`` keeps the index somewhere chosen instead (not removed), for inspecting it
    with ``coderag search --data-dir`` after a run. ``model``: a registered model instead of
    the settings' (``coderag eval ... --model``); the eval index is one plain index of it.
    """
    from coderag.runtime import build_runtime

    tmp = None
    if data_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="coderag-eval-"))
        data_dir = tmp
    runtime = build_runtime(eval_settings(data_dir, base), model=model)
    try:
        yield runtime
    finally:
        runtime.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def check_mode(mode: str) -> str:
    """Fail before indexing (minutes) rather than at the first query."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode
