"""``coderag bench precision``: speed and retrieval quality of each precision on this CPU.

Answers "which precision should this machine embed in?" with numbers measured in one run, on
the same texts: torch fp32 (the reference), OpenVINO fp32, bf16 and int8 (NNCF), each
through the real :class:`~embeddings.Embedder` (length-sorted batches, tokenisation
included, no cache). Speed: chunks/s over code windows, the median of rounds interleaved
across variants (a busy moment slows every variant alike; the median ignores one slow
round). Quality: cosine of each variant's vectors to torch fp32's on those windows, and
dense MRR@100 on CoSQA dev (every query against the whole pool, exact cosine), the figure
that decides. The pick is the fastest variant whose MRR is within ``--mrr-tolerance`` points
(default 0.3) of torch fp32; with ``--write-verdict`` it is stored beside the model's
exports, where ``embedding_precision = auto`` reads it on CPUs like this one.

    coderag bench precision --source path/to/pkg --cosqa benchmarks/cosqa-dev
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.embeddings import code_windows
from embeddings.backends.precision import cpu_features, default_cpu_precision, write_verdict
from embeddings.facade import Embedder

__all__ = ["VARIANTS", "bench_precision", "cosqa_mrr", "pick"]

VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("torch-fp32", "torch", "fp32"),
    ("openvino-fp32", "openvino", "fp32"),
    ("openvino-bf16", "openvino", "bf16"),
    ("openvino-int8", "openvino", "int8"),
)
"""``(name, backend, precision)``; the first is the reference every ratio is taken to."""


def _load_cosqa(root: Path, queries: int | None) -> tuple[list[str], list[str], list[int]]:
    """Corpus texts, query texts, and each query's gold corpus row (BEIR layout)."""
    ids: list[str] = []
    corpus: list[str] = []
    for line in (root / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            ids.append(str(row["_id"]))
            corpus.append(str(row["text"]))
    where = {d: i for i, d in enumerate(ids)}
    gold: dict[str, int] = {}
    for n, line in enumerate((root / "qrels.tsv").read_text(encoding="utf-8").splitlines()):
        parts = line.split("\t")
        if n == 0 or len(parts) < 2 or parts[1] not in where:
            continue
        gold.setdefault(parts[0], where[parts[1]])
    qtexts: list[str] = []
    qgold: list[int] = []
    for line in (root / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if str(row["_id"]) in gold and str(row["text"]).strip():
            qtexts.append(str(row["text"]))
            qgold.append(gold[str(row["_id"])])
        if queries is not None and len(qtexts) >= queries:
            break
    return corpus, qtexts, qgold


def cosqa_mrr(doc_vecs: np.ndarray, query_vecs: np.ndarray, gold: Sequence[int]) -> float:
    """Dense MRR@100 in points: each query's gold row ranked by exact cosine."""
    if len(gold) == 0:
        raise ValueError("no CoSQA query has its gold snippet in the pool")
    scores = query_vecs @ doc_vecs.T
    gold_scores = scores[np.arange(len(gold)), np.asarray(gold, dtype=np.int64)]
    ranks = 1 + np.sum(scores > gold_scores[:, None], axis=1)
    rr = np.where(ranks <= 100, 1.0 / ranks, 0.0)
    return round(100.0 * float(np.mean(rr)), 2)


def pick(results: dict[str, dict[str, Any]], tolerance: float) -> str:
    """The fastest variant whose MRR is within ``tolerance`` points of the reference's."""
    ref = results[VARIANTS[0][0]]
    ok = [
        name
        for name, r in results.items()
        if r.get("ok") and r.get("mrr") is not None and r["mrr"] >= ref["mrr"] - tolerance
    ]
    return max(ok, key=lambda n: results[n]["chunks_per_s"]) if ok else VARIANTS[0][0]


def bench_precision(
    sources: Sequence[Path],
    cosqa: Path | None,
    *,
    limit: int = 600,
    lines: int = 40,
    batch_size: int = 32,
    rounds: int = 2,
    queries: int | None = None,
    mrr_tolerance: float = 0.3,
    models_dir: Path,
    write: bool = False,
    model: str | None = None,
) -> dict[str, Any]:
    """Every variant on the same windows and the same CoSQA pool; see the module doc."""
    texts: list[str] = []
    for root in sources:
        if len(texts) < limit:
            texts += code_windows(root, lines=lines, limit=limit - len(texts))
    if not texts:
        raise ValueError("no source text found under --source")
    embedders: dict[str, Embedder] = {}
    results: dict[str, dict[str, Any]] = {}
    for name, backend, precision in VARIANTS:
        emb = Embedder(model, backend=backend, device="cpu", precision=precision,
                       batch_size=batch_size, models_dir=models_dir)  # fmt: skip
        t0 = time.perf_counter()
        try:
            emb.warm_up()
        except Exception as exc:  # a variant this machine cannot run is reported, not fatal
            results[name] = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
            continue
        info = emb.backend_info
        ran = (emb.backend, emb.precision) == (backend, precision)
        results[name] = {
            "ok": ran,
            "backend": emb.backend,
            "precision": emb.precision,
            "warm_up_s": round(time.perf_counter() - t0, 2),
            "probe_min_cosine": info.get("probe_min_cosine"),
        }
        if not ran:
            results[name]["reason"] = info.get("fallback_reason", "fell back")
            continue
        emb.embed_documents(texts[:batch_size])  # first-call allocations off the clock
        embedders[name] = emb
    timings: dict[str, list[float]] = {n: [] for n in embedders}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(max(1, rounds)):
        for name, emb in embedders.items():
            t0 = time.perf_counter()
            vectors[name] = emb.embed_documents(texts)
            timings[name].append(time.perf_counter() - t0)
    ref_name = VARIANTS[0][0]
    if ref_name not in embedders:
        raise RuntimeError(f"the reference {ref_name} did not load: {results[ref_name]}")
    base = len(texts) / float(np.median(timings[ref_name]))
    if cosqa is not None:
        corpus, qtexts, qgold = _load_cosqa(cosqa, queries)
    for name, emb in embedders.items():
        cps = len(texts) / float(np.median(timings[name]))
        cos = np.sum(vectors[ref_name] * vectors[name], axis=1)
        results[name].update(
            chunks_per_s=round(cps, 1),
            chunks_per_s_rounds=[round(len(texts) / t, 1) for t in timings[name]],
            ratio_to_torch_fp32=round(cps / base, 2),
            cosine_min=round(float(cos.min()), 5),
            cosine_mean=round(float(cos.mean()), 6),
        )
        if cosqa is not None:
            t0 = time.perf_counter()
            docs = emb.embed_documents(corpus)
            results[name]["mrr"] = cosqa_mrr(docs, emb.embed_queries(qtexts), qgold)
            results[name]["cosqa_s"] = round(time.perf_counter() - t0, 1)
    report: dict[str, Any] = {
        "cpu": cpu_features(),
        "model": embedders[ref_name].base_id,
        "texts": len(texts),
        "batch_size": batch_size,
        "rounds": max(1, rounds),
        "variants": results,
        "default_without_verdict": default_cpu_precision(),
    }
    if cosqa is not None:
        report["cosqa"] = {"queries": len(qtexts), "pool": len(corpus), "metric": "MRR@100"}
        chosen = pick(results, mrr_tolerance)
        fastest = max(embedders, key=lambda n: results[n]["chunks_per_s"])
        report.update(
            pick=chosen,
            pick_precision=results[chosen]["precision"],
            pick_rule=f"fastest with MRR >= torch fp32 MRR - {mrr_tolerance}",
            fastest=fastest,
            pick_ratio_to_torch_fp32=results[chosen]["ratio_to_torch_fp32"],
        )
        if write:
            verdict = {
                "pick": results[chosen]["precision"],
                "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "variants": {
                    n: {k: r.get(k) for k in ("chunks_per_s", "mrr", "ratio_to_torch_fp32")}
                    for n, r in results.items()
                },
            }
            path = write_verdict(models_dir, embedders[ref_name].base_id, verdict)
            report["verdict_file"] = str(path)
    return report
