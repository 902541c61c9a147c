"""Ranking metrics, exactly as the benchmark README defines them.

Kept free of anything but the kernel's :mod:`coderag.stats` (itself dependency-free) so the
figures can be checked by hand: a metric that is wrong silently makes every later tuning
decision wrong.

Definitions (one query, ``ranked`` = retrieved ids best first, ``gold`` = relevant ids):

- the ranking is de-duplicated first, keeping the first occurrence (a file retrieved through
  two chunks is one item at its best rank);
- ``mrr``: 1 / rank of the first gold item if it is within the top :data:`MRR_DEPTH` (100),
  else 0;
- ``ndcg@10``: binary relevance, DCG = sum over gold items at rank r <= 10 of 1/log2(r+1),
  divided by the ideal DCG of min(|gold|, 10) gold items at the top;
- ``recall@k``: share of the gold items found in the top k;
- ``acc@k``: 1 when *all* gold items are in the top k, else 0 (LocAgent's file-level Acc@k).

Per-query values are fractions in [0, 1]; :func:`aggregate` reports means as percentages
rounded to two decimals (the unit of every figure in the benchmark README).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence

from coderag import stats

__all__ = [
    "KS",
    "METRIC_NAMES",
    "MRR_DEPTH",
    "NDCG_DEPTH",
    "aggregate",
    "dedupe",
    "latency_summary",
    "percentile",
    "score_query",
]

KS: tuple[int, ...] = (1, 3, 5, 10)
MRR_DEPTH = 100
NDCG_DEPTH = 10
METRIC_NAMES: tuple[str, ...] = (
    "mrr",
    "ndcg@10",
    *(f"recall@{k}" for k in KS),
    *(f"acc@{k}" for k in KS),
)
"""Every aggregate metric, in report order."""


def dedupe(ranked: Iterable[str]) -> list[str]:
    """First occurrence of each id, order kept: duplicates must not take two ranks."""
    seen: set[str] = set()
    out: list[str] = []
    for item in ranked:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def score_query(ranked: Sequence[str], gold: Collection[str]) -> dict[str, float]:
    """All metrics of one query as fractions in [0, 1].

    ``gold`` must be non-empty: a query without a relevant item has no defined score and is
    reported as skipped by the callers rather than silently counted as 0 or 1.
    """
    gold_set = set(gold)
    if not gold_set:
        raise ValueError("a query needs at least one gold item to be scored")
    ranking = dedupe(ranked)
    first = next((i for i, item in enumerate(ranking[:MRR_DEPTH], 1) if item in gold_set), None)
    out: dict[str, float] = {"mrr": 1.0 / first if first else 0.0}
    dcg = sum(
        1.0 / math.log2(rank + 1)
        for rank, item in enumerate(ranking[:NDCG_DEPTH], 1)
        if item in gold_set
    )
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(gold_set), NDCG_DEPTH) + 1))
    out["ndcg@10"] = dcg / ideal
    for k in KS:
        found = len(gold_set.intersection(ranking[:k]))
        out[f"recall@{k}"] = found / len(gold_set)
        out[f"acc@{k}"] = 1.0 if found == len(gold_set) else 0.0
    return out


def aggregate(per_query: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over the queries, as a percentage rounded to 2 decimals.

    No queries gives 0.0 everywhere (a report must keep its shape even when every query was
    skipped; ``n_queries`` = 0 next to it says what the zeros mean).
    """
    n = len(per_query)
    return {
        name: round(100.0 * sum(q[name] for q in per_query) / n, 2) if n else 0.0
        for name in METRIC_NAMES
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between order statistics; 0.0 for
    no values.

    Same convention as ``numpy.percentile``'s default (``coderag.stats.percentile`` with
    ``method="linear"``): evaluation reports have always given latency that way.
    """
    if not values:
        return 0.0
    return stats.percentile(values, q, method="linear")


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50 and p95 in milliseconds, rounded to 2 decimals."""
    return {
        name: float(value or 0.0)
        for name, value in stats.summarize(latencies_ms, (50, 95), method="linear").items()
    }
