"""CI quality gate on a large repository: issue -> files on Sphinx, through the real pipeline.

The CoSQA gate (``tests/test_quality_gate.py``) watches short questions over small snippets;
large repositories are where issue -> code retrieval is hard and where regressions hide
(small repositories let whole-file BM25 reach 87 Acc@5). This gate indexes the Python
sources of the ``sphinx`` package of Sphinx 3.3.1 (``scripts/fetch-benchmarks.sh``, run by
``scripts/bootstrap.sh --tests``; 182 modules, 66k lines) as one commit and runs the 7
SWE-bench dev-large instances filed against that code (``tests/data/swebench-large-gate``)
in the three modes, on one index. It fails when hybrid falls below the figures measured when
it was set (minus a margin) or below the better of its parts.

Why the package's Python only: the whole source distribution (tests, docs, themes) is about
15,000 chunks, 13 minutes of embedding on a 2-core CPU without AVX-512, too long for every
CI run; there hybrid scored Acc@5 57.1, MRR 48.6 (dense 42.9 / 41.6, lexical 42.9 / 37.8).
The whole tree at each real base commit is what ``coderag eval swebench`` on dev-large runs.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest

from coderag.runtime import build_runtime
from coderag.settings import Settings
from evals.swebench import load_instances, run_instances_modes
from tests.conftest import DATA, git

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SPHINX = ROOT / ".cache" / "benchmarks" / "Sphinx-3.3.1"
INSTANCES = DATA / "swebench-large-gate" / "instances.jsonl"
# Measured on this slice when the gate was set (hybrid, file level; dense 42.9 / 55.6, lexical
# 85.7 / 82.1 Acc@5 / MRR; FusionConfig.lexical_weight_long says what moved them).
GATE = {"acc@5": 85.71, "mrr": 90.48}
MARGIN = {"acc@5": 14.29, "mrr": 5.0}  # 7 queries: one query moving is 14.3 Acc@5 points


@pytest.fixture(scope="module")
def sphinx_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    if not (SPHINX / ".complete").is_file():
        pytest.fail(
            f"{SPHINX.relative_to(ROOT)} is missing: run `bash scripts/fetch-benchmarks.sh` "
            "(scripts/bootstrap.sh --tests does)"
        )
    repo = tmp_path_factory.mktemp("sphinx") / "sphinx"
    for src in sorted((SPHINX / "sphinx").rglob("*.py")):
        dst = repo / src.relative_to(SPHINX)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Sphinx 3.3.1 (source distribution)")
    return repo, git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def large_reports(
    sphinx_repo: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory, embedder: Any
) -> dict[str, dict[str, Any]]:
    repo, sha = sphinx_repo
    instances = [dataclasses.replace(i, base_commit=sha) for i in load_instances(INSTANCES)]
    assert len(instances) == 7
    rt = build_runtime(Settings(data_dir=tmp_path_factory.mktemp("gate-large")))
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    try:  # one index, three modes queried on it
        reports = run_instances_modes(
            rt,
            instances,
            {"sphinx-doc/sphinx": repo},
            dataset="gate",
            modes=("hybrid", "dense", "lexical"),
        )
    finally:
        rt.close()
    print({m: r["metrics"] for m, r in reports.items()})
    return reports


def test_every_instance_is_scored(large_reports: dict[str, dict[str, Any]]) -> None:
    for report in large_reports.values():
        assert report["n_queries"] == 7 and not report["skipped"]
        assert report["index"]["chunks"] > 3000  # the whole package, not a fragment


def test_hybrid_meets_the_large_gate(large_reports: dict[str, dict[str, Any]]) -> None:
    metrics = large_reports["hybrid"]["metrics"]
    for name, floor in GATE.items():
        assert metrics[name] >= floor - MARGIN[name], (name, metrics)


def test_hybrid_never_loses_to_its_parts_on_a_large_repo(
    large_reports: dict[str, dict[str, Any]],
) -> None:
    hybrid = large_reports["hybrid"]["metrics"]["mrr"]
    assert hybrid >= max(large_reports[m]["metrics"]["mrr"] for m in ("dense", "lexical"))
