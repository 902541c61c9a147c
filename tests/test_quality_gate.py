"""CI quality gate: CoSQA-dev retrieval on a fixed slice, through the real pipeline.

Fails when hybrid MRR drops below the figure reached when fusion was tuned (minus a small
margin), or when hybrid loses to the better of its two parts. The slice is fixed (the first
``N_QUERIES`` queries, their gold snippets, and the first ``N_DOCS`` snippets of the pool) so
the figures are comparable run to run; the whole-pool figures come from ``coderag eval beir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coderag.runtime import Runtime, build_runtime
from coderag.settings import Settings
from evals.beir import load_beir, run_beir, write_slice
from tests.conftest import DATA

pytestmark = pytest.mark.integration

COSQA = DATA / "cosqa-dev-slice"  # committed: exactly this slice (cutting it again is a no-op)
N_QUERIES = 120
N_DOCS = 1000
# Measured on this slice when fusion was last tuned (see README "Retrieval quality").
GATE = {"hybrid": 72.78, "dense": 72.44, "lexical": 45.17}
MARGIN = 1.5  # MRR points: the pipeline is deterministic, this only absorbs library drift


@pytest.fixture(scope="module")
def cosqa_gate_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    full = load_beir(COSQA)
    queries = [(q, t) for q, t in full.queries if full.qrels.get(q)][:N_QUERIES]
    return write_slice(full, queries, N_DOCS, tmp_path_factory.mktemp("gate") / "cosqa-gate")


@pytest.fixture(scope="module")
def gate_reports(
    cosqa_gate_slice: Path, tmp_path_factory: pytest.TempPathFactory, embedder: Any
) -> dict[str, dict[str, Any]]:
    ds = load_beir(cosqa_gate_slice)
    reports = {}
    for mode in ("dense", "lexical", "hybrid"):
        settings = Settings(data_dir=tmp_path_factory.mktemp(f"gate-{mode}"))
        rt: Runtime = build_runtime(settings)
        rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
        try:
            reports[mode] = run_beir(rt, ds, mode=mode)
        finally:
            rt.close()
    print({m: r["metrics"]["mrr"] for m, r in reports.items()})
    return reports


def test_hybrid_meets_the_gate(gate_reports: dict[str, dict[str, Any]]) -> None:
    for mode, floor in GATE.items():
        assert gate_reports[mode]["metrics"]["mrr"] >= floor - MARGIN, mode


def test_hybrid_never_loses_to_its_parts(gate_reports: dict[str, dict[str, Any]]) -> None:
    best_single = max(gate_reports[m]["metrics"]["mrr"] for m in ("dense", "lexical"))
    assert gate_reports["hybrid"]["metrics"]["mrr"] >= best_single
