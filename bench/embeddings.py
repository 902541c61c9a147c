"""``coderag bench embeddings``: throughput and agreement of the embedding backends.

Answers "which backend should this machine use, and does it keep the vectors?" with numbers:
chunks/s per backend through the real :class:`Embedder` pipeline (length-sorted batches,
tokenisation included, no cache), the speed-up over torch fp32, and the cosine between each
backend's vectors and torch's. Rounds are interleaved across backends and the best round is
reported, so a noisy shared machine slows every backend alike instead of whichever ran last;
CPU seconds are reported beside wall time for the same reason.

    coderag bench embeddings --source path/to/pkg --source path/to/other --limit 500
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embeddings.backends import available_backends
from embeddings.facade import Embedder

__all__ = ["bench_backends", "bench_embeddings", "code_windows"]


def code_windows(
    root: Path, *, lines: int = 40, limit: int = 500, suffix: str = ".py"
) -> list[str]:
    """Realistic chunks: ``lines``-line windows of the source files under ``root`` (sorted,
    so the set is the same on every run), each headed by its relative path."""
    out: list[str] = []
    for f in sorted(root.rglob(f"*{suffix}")):
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        rows = text.splitlines()
        for i in range(0, len(rows), lines):
            body = "\n".join(rows[i : i + lines])
            if body.strip():
                out.append(f"{f.relative_to(root).as_posix()}\n{body}")
                if len(out) >= limit:
                    return out
    return out


def bench_backends(
    texts: Sequence[str],
    batch_size: int = 32,
    *,
    model: str | None = None,
    backends: Sequence[str] | None = None,
    models_dir: Path | None = None,
    rounds: int = 2,
) -> dict[str, Any]:
    """chunks/s of torch fp32 and every other installed CPU backend on ``texts``, and the
    cosine of each backend's vectors with torch's (min and mean over the texts).

    ``models_dir``: where exports are cached (a temporary dir when ``None``: the export time
    is then part of ``warm_up_s``). A backend that fails its check at export falls back to
    torch; it is reported with ``resolved_backend`` = torch and its ``fallback_reason``.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("bench_backends needs at least one text")
    wanted = list(backends) if backends else available_backends()
    if "torch" in wanted:
        wanted.remove("torch")
    wanted.insert(0, "torch")  # the baseline first, always
    tmp = tempfile.TemporaryDirectory(prefix="coderag-bench-") if models_dir is None else None
    mdir = Path(tmp.name) if tmp else Path(models_dir)  # type: ignore[arg-type]
    try:
        embedders: dict[str, Embedder] = {}
        result: dict[str, dict[str, Any]] = {}
        for name in wanted:
            emb = Embedder(model, backend=name, device="cpu", batch_size=batch_size,
                           models_dir=mdir)  # fmt: skip
            t0 = time.perf_counter()
            emb.warm_up()
            info = emb.backend_info
            result[name] = {
                "resolved_backend": emb.backend,
                "warm_up_s": round(time.perf_counter() - t0, 2),
                "exported": info.get("exported"),
                "probe_min_cosine": info.get("probe_min_cosine"),
            }
            if "fallback_reason" in info:
                result[name]["fallback_reason"] = info["fallback_reason"]
            emb.embed_documents(texts[:batch_size])  # first-call allocations off the clock
            embedders[name] = emb
        timings: dict[str, list[float]] = {name: [] for name in embedders}
        cpu: dict[str, list[float]] = {name: [] for name in embedders}
        vectors: dict[str, np.ndarray] = {}
        for _ in range(max(1, rounds)):
            for name, emb in embedders.items():
                t0, c0 = time.perf_counter(), time.process_time()
                vectors[name] = emb.embed_documents(texts)
                timings[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        ref = vectors["torch"]
        base = len(texts) / min(timings["torch"])
        for name in embedders:
            best = min(timings[name])
            cos = np.sum(ref * vectors[name], axis=1)
            cps = len(texts) / best
            result[name].update(
                chunks_per_s=round(cps, 1),
                chunks_per_s_rounds=[round(len(texts) / t, 1) for t in timings[name]],
                speedup_vs_torch=round(cps / base, 2),
                # CPU seconds used (all threads): on a shared, busy machine a steadier
                # measure of the work a backend needs than wall time.
                cpu_s=round(min(cpu[name]), 2),
                chunks_per_cpu_s=round(len(texts) / min(cpu[name]), 1),
                cpu_speedup_vs_torch=round(min(cpu["torch"]) / min(cpu[name]), 2),
                cosine_min=round(float(cos.min()), 6),
                cosine_mean=round(float(cos.mean()), 6),
            )
        any_emb = embedders["torch"]
        tokens = [min(n, any_emb.max_seq_length) for n in any_emb.count_tokens(texts)]
        return {
            "model": any_emb.model_id,
            "texts": len(texts),
            "batch_size": batch_size,
            "rounds": max(1, rounds),
            "mean_tokens": round(statistics.fmean(tokens), 1),
            "max_seq_length": any_emb.max_seq_length,
            "backends": result,
        }
    finally:
        if tmp is not None:
            tmp.cleanup()


def bench_embeddings(
    sources: Sequence[Path],
    *,
    suffix: str = ".py",
    lines: int = 40,
    limit: int = 500,
    batch_size: int = 32,
    rounds: int = 2,
    model: str | None = None,
    backends: Sequence[str] | None = None,
    models_dir: Path | None = None,
) -> dict[str, Any]:
    """:func:`bench_backends` on up to ``limit`` :func:`code_windows` of ``sources``, taken
    from each source in turn until the limit is reached."""
    texts: list[str] = []
    for root in sources:
        left = limit - len(texts)
        if left > 0:
            texts += code_windows(root, lines=lines, limit=left, suffix=suffix)
    return bench_backends(
        texts,
        batch_size,
        model=model,
        backends=backends,
        models_dir=models_dir,
        rounds=rounds,
    )
