"""Prometheus metrics of coderag: defined once here, incremented by every stage.

All metrics live in the default ``prometheus_client`` registry, so any process (API, embedded
background indexing, a Celery worker with its own exporter) exposes the same names. Gauges
that describe *state* rather than events (queue depth, index lag) are not kept up to date by
the code that changes that state: they are recomputed at scrape time by :func:`refresh`, from
the dispatcher and the index, so they can never drift from the truth.

Names and labels (keep label values low-cardinality: no paths, no commit ids, no users):

=====================================  ============  =========================================
coderag_webhook_events_total           counter       event (push, tag_push, ...), outcome
coderag_task_duration_seconds          histogram     task (index_push, ...), stage (embed, ...)
coderag_queue_depth                    gauge         queue (from the dispatcher, at scrape)
coderag_index_lag_seconds              gauge         repo, branch (index + dispatcher, at scrape)
coderag_query_latency_seconds          histogram     endpoint (search, continue, context)
coderag_chunks_embedded_total          counter       (none)
coderag_search_results_total           counter       endpoint
coderag_http_errors_total              counter       error_code
coderag_secrets_redacted_total         counter       kind (aws-access-key, password, ...)
=====================================  ============  =========================================
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest

__all__ = [
    "CHUNKS_EMBEDDED",
    "CONTENT_TYPE_LATEST",
    "HTTP_ERRORS",
    "INDEX_LAG",
    "QUERY_LATENCY",
    "QUEUE_DEPTH",
    "SEARCH_RESULTS",
    "SECRETS_REDACTED",
    "TASK_DURATION",
    "WEBHOOK_EVENTS",
    "generate_latest",
    "refresh",
]

log = logging.getLogger(__name__)

WEBHOOK_EVENTS = Counter(
    "coderag_webhook_events_total",
    "GitLab webhook events received, by event kind and what was done with them.",
    ["event", "outcome"],
)
TASK_DURATION = Histogram(
    "coderag_task_duration_seconds",
    "Seconds spent by indexing tasks, per task and stage (total, read, embed, write, ...).",
    ["task", "stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
)
QUEUE_DEPTH = Gauge(
    "coderag_queue_depth",
    "Tasks waiting per queue, read from the dispatcher at scrape time.",
    ["queue"],
)
INDEX_LAG = Gauge(
    "coderag_index_lag_seconds",
    "Seconds since the oldest push of a branch still waiting to be indexed (0 when none "
    "waits), computed at scrape time.",
    ["repo", "branch"],
)
QUERY_LATENCY = Histogram(
    "coderag_query_latency_seconds",
    "Latency of retrieval endpoints, query embedding included.",
    ["endpoint"],
    buckets=(0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CHUNKS_EMBEDDED = Counter(
    "coderag_chunks_embedded_total",
    "Chunk texts run through the embedding model (embedding-cache misses).",
)
SEARCH_RESULTS = Counter(
    "coderag_search_results_total",
    "Chunks returned by retrieval endpoints.",
    ["endpoint"],
)
SECRETS_REDACTED = Counter(
    "coderag_secrets_redacted_total",
    "Secrets replaced by a redaction marker before chunking, by kind (see chunkers.secrets).",
    ["kind"],
)
HTTP_ERRORS = Counter(
    "coderag_http_errors_total",
    "Error responses of the API, by error_code.",
    ["error_code"],
)


def generate_latest() -> bytes:
    """The exposition text of the default registry."""
    return _generate_latest(REGISTRY)


def refresh(app_state: Any) -> None:
    """Recompute the scrape-time gauges from what ``app.state`` holds. Never raises: a broken
    dependency must not take the whole metrics page down (readyz reports it instead)."""
    dispatcher = getattr(app_state, "dispatcher", None)
    if dispatcher is not None and hasattr(dispatcher, "queue_depths"):
        try:
            depths = dispatcher.queue_depths() or {}
            QUEUE_DEPTH.clear()
            for queue, n in depths.items():
                QUEUE_DEPTH.labels(queue=str(queue)).set(float(n))
        except Exception as exc:  # reported as a log line, not a failed scrape
            log.warning("metrics: queue depths unavailable", extra={"error": repr(exc)})
    runtime = getattr(app_state, "runtime", None)
    if runtime is None:
        return
    try:
        from coderag.status import branch_lag_seconds, branch_states, pending_push

        now = time.time()
        INDEX_LAG.clear()
        for repo, branch in branch_states(runtime.index):
            pending = pending_push(dispatcher, repo, branch)
            INDEX_LAG.labels(repo=repo, branch=branch).set(branch_lag_seconds(pending, now))
    except Exception as exc:
        log.warning("metrics: index lag unavailable", extra={"error": repr(exc)})
