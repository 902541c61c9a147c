"""Load, scaled down: the two load benchmarks (``coderag bench webhooks`` and
``coderag bench search-load``) run against a real app on loopback, asserting correctness only.

* a burst of push webhooks over several repos, with exact duplicates (same Idempotency-Key)
  and late deliveries of older pushes: every delivery answered 2xx, every duplicate
  recognised, every repo at its newest commit (and that commit's new function searchable),
  fewer runs than pushes;
* ``/v1/search`` from concurrent clients while pushes keep the in-process executor indexing:
  no failed request, and indexing really happened meanwhile.

The default suite serves the session's warmed model from a uvicorn thread (no second model
load); ``CODERAG_SOAK=1`` runs the full-size commands' settings (1,000 deliveries over 10
repos; concurrency 16 for 60 s) with the API in its own process, as the CLI does. Speed
figures are printed, never asserted.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.search_load import run_search_load
from bench.webhooks import Target, run_webhook_bench
from coderag.repos import RepoRecord, RepoRegistry, hash_secret
from coderag.runtime import Runtime, build_runtime
from coderag.settings import Settings
from indexer.queue import EmbeddedDispatcher
from tests.ingest_support import Remote

pytestmark = pytest.mark.integration

SOAK = os.environ.get("CODERAG_SOAK") == "1"
soak = pytest.mark.skipif(not SOAK, reason="full-size load runs: set CODERAG_SOAK=1")


@pytest.fixture
def runtime(tmp_path: Path, embedder: Any) -> Iterator[Runtime]:
    settings = Settings(
        data_dir=tmp_path / "data",
        index_backend="edge",
        push_debounce_seconds=0.2,
        api_tokens={},
        log_json=False,
        log_level="WARNING",
    )
    rt = build_runtime(settings)
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    try:
        yield rt
    finally:
        rt.close()


def _check_webhooks(report: dict[str, Any], repos: int) -> None:
    codes = report["status_codes"]
    assert report["deliveries"] == sum(codes.values())
    assert set(codes) <= {"200", "202"}, codes  # no 4xx, no 5xx, no unanswered delivery
    assert report["no_answer"] == 0 and report["server_errors"] == 0
    assert report["duplicates_detected"] == report["duplicates_sent"] > 0
    assert report["accepted"] == report["deliveries"] - report["duplicates_sent"]
    assert report["stale_sent"] > 0
    assert report["converged"], report
    assert len(report["at_newest_commit"]) == repos
    assert all(report["at_newest_commit"].values()), report["at_newest_commit"]
    assert report["lost"] == 0
    assert 0 < report["runs"] < report["accepted"]  # pushes folded into fewer runs
    assert report["ok"]


def _check_search(report: dict[str, Any]) -> None:
    assert report["requests"] > 0
    assert report["errors"] == 0, report["error_samples"]
    assert report["error_rate"] == 0
    meanwhile = report["indexing_meanwhile"]
    assert meanwhile["pushes"] > 0 and meanwhile["push_failures"] == 0
    assert meanwhile["runs"] > 0 and meanwhile["chunks_embedded"] > 0  # it really indexed
    assert meanwhile["caught_up_after_load"]
    assert report["ok"]


def test_a_late_push_of_an_older_commit_does_not_move_the_branch_back(
    runtime: Runtime, tmp_path: Path
):
    """GitLab delivers concurrently and retries late: the push of ``old`` arriving after the
    push of ``new`` replaces it as the pending commit. The run must still end at ``new``
    (the remote's head), not index ``old`` and stay there."""
    remote = Remote(tmp_path / "git")
    old = remote.commit({"src/fees.py": "def flat_fee(amount):\n    return 1\n"})
    new = remote.commit({"src/fees.py": "def tiered_fee(amount):\n    return amount // 100\n"})
    remote.push("main")
    repo = "grp/late-push"
    registry = RepoRegistry(runtime.index)
    registry.put(
        RepoRecord(id=repo, url=str(remote.bare), branches=["main"], secret_hash=hash_secret("x"))
    )
    d = EmbeddedDispatcher(runtime, registry=registry, debounce=0.2)
    try:
        d.submit_push(repo, "main", new, time.time())
        d.submit_push(repo, "main", old, time.time())  # the late delivery
        assert d.wait_idle(60)
        assert runtime.indexer.indexed_commit(repo, "main") == new
        hit = runtime.retriever.search("tiered fee", repos=[repo], branch="main", k=1)[0]
        assert hit.symbol == "tiered_fee"
    finally:
        d.close()


def test_webhook_burst_converges_and_folds(runtime: Runtime, tmp_path: Path):
    report = run_webhook_bench(
        Target(data_dir=runtime.settings.data_dir, runtime=runtime),
        repos=3,
        deliveries=100,
        concurrency=16,
        files=3,
        timeout=120,
        work_dir=tmp_path,
    )
    print("\nLOAD-FIGURE webhooks " + json.dumps(report))
    _check_webhooks(report, 3)


def test_search_under_indexing_has_no_errors(runtime: Runtime, tmp_path: Path):
    report = run_search_load(
        Target(data_dir=runtime.settings.data_dir, runtime=runtime),
        concurrency=4,
        seconds=3,
        files=12,
        files_per_commit=3,
        push_interval=0.5,
        timeout=120,
        work_dir=tmp_path,
    )
    print("\nLOAD-FIGURE search " + json.dumps(report))
    _check_search(report)


@soak
def test_full_size_webhook_burst(tmp_path: Path, model_dir: Path):
    report = run_webhook_bench(
        Target(data_dir=tmp_path / "data", models_dir=model_dir),
        repos=10,
        deliveries=1000,
        concurrency=64,
        timeout=600,
        work_dir=tmp_path,
    )
    print("\nLOAD-FIGURE webhooks " + json.dumps(report))
    _check_webhooks(report, 10)


@soak
def test_full_size_search_under_indexing(tmp_path: Path, model_dir: Path):
    report = run_search_load(
        Target(data_dir=tmp_path / "data", models_dir=model_dir),
        concurrency=16,
        seconds=60,
        timeout=600,
        work_dir=tmp_path,
    )
    print("\nLOAD-FIGURE search " + json.dumps(report))
    _check_search(report)
