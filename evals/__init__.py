"""evals stage of coderag: retrieval benchmarks run through the real pipeline.

Datasets (BEIR layout, SWE-bench layout, a repository's own history) are indexed by the
service's own indexer on a temporary embedded index and queried through its retriever;
:mod:`evals.metrics` scores the rankings and every command prints one JSON report shape
(:mod:`evals.report`). Nothing here is imported by the service: importing this package is
cheap and loads no model.
"""

from evals.beir import BeirDataset, load_beir, run_beir
from evals.compare import compare
from evals.harness import eval_runtime, eval_settings
from evals.history import HistoryBenchmark, build_history, run_history
from evals.metrics import aggregate, latency_summary, score_query
from evals.report import QueryResult, Skipped, build_report
from evals.swebench import Instance, load_instances, run_instances, run_swebench

__all__ = [
    "BeirDataset",
    "HistoryBenchmark",
    "Instance",
    "QueryResult",
    "Skipped",
    "aggregate",
    "build_history",
    "build_report",
    "compare",
    "eval_runtime",
    "eval_settings",
    "latency_summary",
    "load_beir",
    "load_instances",
    "run_beir",
    "run_history",
    "run_instances",
    "run_swebench",
    "score_query",
]
