"""The one JSON shape every benchmark prints, so any two runs can be compared.

```
{"dataset", "mode", "n_queries", "skipped": [{"id", "reason"}],
 "metrics": {"mrr", "ndcg@10", "recall@1|3|5|10", "acc@1|3|5|10"},   # percentages, 2 decimals
 "latency_ms": {"p50", "p95"},           # one retriever.search call, query embedding included
 "index": {"chunks", "seconds"},         # points in the eval index at the end; indexing time
 "function_level": {"n_queries", "metrics"},   # swebench/history, when gold spans allow
 "per_query": [...]}                     # only with --per-query
```
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from evals.metrics import aggregate, latency_summary

__all__ = ["QueryResult", "Skipped", "build_report"]

TOP_IDS_IN_PER_QUERY = 10
"""How much of each ranking ``--per-query`` keeps: enough to see why a query failed."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A query or instance that was not scored, and why (never silently dropped)."""

    id: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason}


@dataclass(slots=True)
class QueryResult:
    """One scored query: what was retrieved, what was wanted, how long it took."""

    id: str
    ranked: list[str]
    gold: list[str]
    metrics: dict[str, float]
    latency_ms: float
    function_ranked: list[str] | None = None
    function_gold: list[str] | None = None
    function_metrics: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        gold = set(self.gold)
        first = next((i for i, r in enumerate(self.ranked, 1) if r in gold), None)
        out: dict[str, Any] = {
            "id": self.id,
            "gold": list(self.gold),
            "first_gold_rank": first,
            "top": self.ranked[:TOP_IDS_IN_PER_QUERY],
            "metrics": _percent(self.metrics),
            "latency_ms": round(self.latency_ms, 2),
        }
        if self.function_metrics is not None:
            out["function_level"] = {
                "gold": list(self.function_gold or []),
                "top": (self.function_ranked or [])[:TOP_IDS_IN_PER_QUERY],
                "metrics": _percent(self.function_metrics),
            }
        out.update(self.extra)
        return out


def _percent(metrics: dict[str, float]) -> dict[str, float]:
    """Per-query values on the same scale as the aggregates (percent), so they read alike."""
    return {k: round(100.0 * v, 2) for k, v in metrics.items()}


def build_report(
    *,
    dataset: str,
    mode: str,
    results: Sequence[QueryResult],
    skipped: Sequence[Skipped],
    index_chunks: int,
    index_seconds: float,
    per_query: bool = False,
    function_level: bool = False,
) -> dict[str, Any]:
    """Assemble the report. ``function_level`` adds the sub-dict computed over the queries
    that had function-level gold (others are simply not part of that average)."""
    report: dict[str, Any] = {
        "dataset": dataset,
        "mode": mode,
        "n_queries": len(results),
        "skipped": [s.as_dict() for s in skipped],
        "metrics": aggregate([r.metrics for r in results]),
        "latency_ms": latency_summary([r.latency_ms for r in results]),
        "index": {"chunks": int(index_chunks), "seconds": round(index_seconds, 2)},
    }
    if function_level:
        scored = [r.function_metrics for r in results if r.function_metrics is not None]
        report["function_level"] = {"n_queries": len(scored), "metrics": aggregate(scored)}
    if per_query:
        report["per_query"] = [r.as_dict() for r in results]
    return report
