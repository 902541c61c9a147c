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
coderag_embedding_errors_total         counter       kind (documents, queries)
coderag_search_results_total           counter       endpoint
coderag_http_errors_total              counter       error_code
coderag_secrets_redacted_total         counter       kind (aws-access-key, password, ...)
=====================================  ============  =========================================

Reconciliation (:mod:`coderag.freshness`):

================================================  =======  ==================================
coderag_hook_disabled                             gauge    repo
coderag_branch_behind_commits                     gauge    repo, branch
coderag_reconcile_last_success_timestamp_seconds  gauge    repo
coderag_reconcile_scheduled_total                 counter  repo
================================================  =======  ==================================

The reconciliation metrics are read from the ``reconcile/<repo>`` state records that the
periodic pass (:mod:`coderag.freshness`) writes, so the API exposes them whichever process
ran the pass (a worker, in distributed mode), and the counter is the stored cumulative count:
it survives restarts of the API. ``coderag_hook_disabled`` is 0 for an executable hook, 0.5
for a temporarily disabled one (GitLab retries it after a back-off) and 1 for a permanently
disabled one (no delivery until someone re-enables it): alert on ``== 1``, watch ``> 0``.
``coderag_branch_behind_commits`` is ``git rev-list --count indexed..head`` in the local
mirror; when the mirror lacks one of the commits (typically: the run that fetches them has
not started) it is 1, a lower bound, since the index is known to differ from GitLab's head.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import CounterMetricFamily

__all__ = [
    "BRANCH_BEHIND",
    "CHUNKS_EMBEDDED",
    "CONTENT_TYPE_LATEST",
    "EMBEDDING_ERRORS",
    "HOOK_DISABLED",
    "HTTP_ERRORS",
    "INDEX_LAG",
    "QUERY_LATENCY",
    "QUEUE_DEPTH",
    "RECONCILE_LAST_SUCCESS",
    "RECONCILE_SCHEDULED",
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
EMBEDDING_ERRORS = Counter(
    "coderag_embedding_errors_total",
    "Embedding calls that returned no vectors (model missing or failing to load or run), by "
    "kind: documents (indexing) or queries (search).",
    ["kind"],
)
for _kind in ("documents", "queries"):  # exported as 0 from the start: rate() sees error one
    EMBEDDING_ERRORS.labels(kind=_kind)
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
HOOK_DISABLED = Gauge(
    "coderag_hook_disabled",
    "GitLab project hook health from the last reconciliation pass: 0 executable, 0.5 "
    "temporarily disabled, 1 permanently disabled.",
    ["repo"],
)
BRANCH_BEHIND = Gauge(
    "coderag_branch_behind_commits",
    "Commits GitLab's branch head is ahead of the indexed commit (1 when they differ but the "
    "mirror cannot count them), computed at scrape time.",
    ["repo", "branch"],
)
RECONCILE_LAST_SUCCESS = Gauge(
    "coderag_reconcile_last_success_timestamp_seconds",
    "Unix time of the last reconciliation pass that listed the repo's branches and "
    "submitted what was behind.",
    ["repo"],
)


class _StoredCounter:
    """A counter whose values live in the index state, not in this process: exposed at
    scrape time from what :func:`refresh` read, so it stays cumulative across restarts and
    across the processes that incremented it."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.values: dict[str, float] = {}

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=[self.label])

    def describe(self) -> list[CounterMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        for value, n in sorted(self.values.items()):
            family.add_metric([value], n)
        yield family


RECONCILE_SCHEDULED = _StoredCounter(
    "coderag_reconcile_scheduled",
    "Branch runs (catch-ups and removals) the reconciliation passes scheduled because no "
    "webhook had: missed deliveries, multi-ref pushes, disabled hooks, downtime.",
    "repo",
)
REGISTRY.register(RECONCILE_SCHEDULED)


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
    try:
        _refresh_reconcile(runtime.index)
    except Exception as exc:
        log.warning("metrics: reconciliation state unavailable", extra={"error": repr(exc)})


def _refresh_reconcile(index: Any) -> None:
    """The reconciliation gauges and counter, from the ``reconcile/<repo>`` records."""
    from coderag.status import (
        branch_lag_commits,
        branch_states,
        hook_disabled_level,
        reconcile_states,
    )

    indexed = branch_states(index)
    records = reconcile_states(index)
    HOOK_DISABLED.clear()
    BRANCH_BEHIND.clear()
    RECONCILE_LAST_SUCCESS.clear()
    totals: dict[str, float] = {}
    for repo, rec in records.items():
        level = hook_disabled_level((rec.get("hook") or {}).get("alert_status"))
        if level is not None:
            HOOK_DISABLED.labels(repo=repo).set(level)
        if isinstance(rec.get("ok_at"), int | float):
            RECONCILE_LAST_SUCCESS.labels(repo=repo).set(float(rec["ok_at"]))
        totals[repo] = float(rec.get("scheduled_total") or 0)
        for branch, head in sorted((rec.get("heads") or {}).items()):
            commit = (indexed.get((repo, branch)) or {}).get("commit") or None
            behind = branch_lag_commits(commit, head, rec.get("mirror"))
            BRANCH_BEHIND.labels(repo=repo, branch=branch).set(1 if behind is None else behind)
    RECONCILE_SCHEDULED.values = totals
