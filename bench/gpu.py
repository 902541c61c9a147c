"""``coderag bench gpu`` (or ``python -m bench.gpu``): embedding chunks/s on a CUDA GPU, JSON.

What a GPU worker does with the chunks of a full index, timed: the real
:class:`~embeddings.Embedder` on torch, length-sorted batches, the next batch tokenised on
another thread while the GPU runs the current one (``pipeline``), in fp16 and fp32, at
several batch sizes, on the same texts (code windows of this repository's own sources, made
distinct so nothing is deduplicated). Each figure is the median of ``--rounds`` rounds; the
cosine of fp16 vectors to fp32's says what the faster precision costs. ``scripts/gpu-bench.sh``
prepares and runs it on a lent GPU machine in one call. The goal it prints: 5,000 chunks/s on
one H100/H200-class GPU.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

__all__ = ["GOAL_CHUNKS_PER_S", "bench_gpu", "run"]

GOAL_CHUNKS_PER_S = 5000
ROOT = Path(__file__).resolve().parent.parent


def _texts(n: int) -> list[str]:
    from bench.embeddings import code_windows

    windows: list[str] = []
    for sub in ("embeddings", "indexer", "retriever", "chunkers", "coderag", "evals", "bench"):
        windows += code_windows(ROOT / sub, limit=n)
    if not windows:
        raise RuntimeError(f"no source files under {ROOT}")
    return [f"{windows[i % len(windows)]}\n# {i}" for i in range(n)]


def run(
    model: str | None,
    *,
    chunks: int = 20000,
    rounds: int = 3,
    batch_sizes: tuple[int, ...] = (128, 256, 512),
) -> dict[str, Any]:
    """The report: one row per (precision, batch size, pipeline)."""
    import torch

    from embeddings.facade import Embedder

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA GPU: run this on the GPU machine")
    texts = _texts(chunks)
    configs = [("fp16", bs, True) for bs in batch_sizes]
    configs += [("fp16", batch_sizes[len(batch_sizes) // 2], False)]
    configs += [("fp32", batch_sizes[len(batch_sizes) // 2], True)]
    rows: list[dict[str, Any]] = []
    vectors: dict[str, np.ndarray] = {}
    for precision, bs, pipeline in configs:
        emb = Embedder(
            model=model,
            backend="torch",
            device="cuda",
            precision=precision,
            cuda_batch_size=bs,
            pipeline=pipeline,
        )
        t0 = time.perf_counter()
        emb.warm_up()
        warm = time.perf_counter() - t0
        emb.embed_documents(texts[:bs])  # kernels chosen and memory pooled off the clock
        times = []
        for r in range(max(1, rounds)):
            batch = [f"{t} r{r}" for t in texts]  # distinct per round: no in-process reuse
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            out = emb.embed_documents(batch)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t1)
        vectors.setdefault(precision, out)
        med = statistics.median(times)
        rows.append(
            {
                "precision": emb.precision,
                "batch_size": bs,
                "pipeline": pipeline,
                "chunks_per_s": round(len(texts) / med, 1),
                "chunks_per_s_rounds": [round(len(texts) / t, 1) for t in times],
                "warm_up_s": round(warm, 2),
                "peak_gpu_mem_bytes": int(torch.cuda.max_memory_allocated()),
            }
        )
        del emb
        torch.cuda.empty_cache()
    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "chunks": len(texts),
        "rounds": max(1, rounds),
        "rows": rows,
        "best": max(rows, key=lambda r: r["chunks_per_s"]),
        "goal_chunks_per_s": GOAL_CHUNKS_PER_S,
    }
    if {"fp16", "fp32"} <= set(vectors):
        cos = np.sum(vectors["fp16"] * vectors["fp32"], axis=1)
        report["fp16_cosine_to_fp32"] = {
            "min": round(float(cos.min()), 5),
            "mean": round(float(cos.mean()), 6),
        }
    return report


def bench_gpu(
    model: Annotated[
        str | None, typer.Option(help="Local model dir (default: the bundled MiniLM).")
    ] = None,
    chunks: Annotated[int, typer.Option(help="Chunks embedded per round.")] = 20000,
    rounds: Annotated[int, typer.Option(help="Timed rounds per configuration (median).")] = 3,
) -> None:
    """Embedding chunks/s on a CUDA GPU: fp16/fp32, batch sizes, tokenising overlapped."""
    print(json.dumps(run(model, chunks=chunks, rounds=rounds), indent=2))


if __name__ == "__main__":
    typer.run(bench_gpu)
