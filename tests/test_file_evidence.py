"""Evidence beyond one chunk for long queries (bug reports), each a FusionConfig setting
(file lexical evidence on by default, the others off until measured to win): a file's summed
lexical evidence, dense windows of a long report, paths that a dotted module name points at.
Through the real index, model and retriever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coderag.index import ScoredRecord
from coderag.runtime import build_runtime
from coderag.settings import Settings
from retriever.query import MAX_SEGMENTS, SEGMENT_CHARS, parse_query
from retriever.search import FusionConfig, _file_lexical, _same_file
from tests.conftest import git

pytestmark = pytest.mark.integration


def _rec(pid: str, path: str, score: float) -> ScoredRecord:
    return ScoredRecord(id=pid, score=score, payload={"repo": "r", "path": path})


def test_file_lexical_sums_a_files_best_chunks_relative_to_the_best_file() -> None:
    lexical = [  # score order, as the index returns them
        _rec("a1", "a.py", 10.0),
        _rec("b1", "b.py", 8.0),
        _rec("b2", "b.py", 7.0),
        _rec("b3", "b.py", 6.0),
        _rec("b4", "b.py", 5.0),  # a fourth chunk of b does not count (per_file=3)
        _rec("a2", "a.py", 1.0),
    ]
    got = _file_lexical(lexical, 10.0, 3)
    assert got[("r", "b.py")] == pytest.approx(1.0)  # 0.8 + 0.7 + 0.6 is the best sum
    assert got[("r", "a.py")] == pytest.approx((1.0 + 0.1) / 2.1)
    assert _file_lexical([], 1.0, 3) == {}


@pytest.mark.parametrize(
    ("path", "mentioned", "same"),
    [
        ("pkg/mod.py", "pkg/mod.py", True),
        ("pkg/mod.py", "/usr/lib/python3/site-packages/pkg/mod.py", False),  # measured
        ("pkg/mod.py", "mod.py", True),  # a bare file name
        ("pkg/oauth.py", "auth.py", False),  # not at a directory boundary
        ("pkg/mod.py", "other/pkg/mod.pyc", False),
    ],
)
def test_same_file(path: str, mentioned: str, same: bool) -> None:
    assert _same_file(path, mentioned) is same


def test_parse_query_of_a_long_report() -> None:
    steps = " ".join(f"step {i} calls render_table with header {i}." for i in range(120))
    report = (
        "autodoc crashes on a partial function\n\n"
        f"{steps}\n\n```python\nfrom sphinx.ext.autodoc import Documenter\n```\n"
    )
    pq = parse_query(report)
    assert pq.words > 500
    assert 1 <= len(pq.segments) <= MAX_SEGMENTS
    assert all(len(s) <= SEGMENT_CHARS for s in pq.segments)
    assert "sphinx/ext/autodoc.py" in pq.module_paths
    assert "sphinx/ext/autodoc/__init__.py" in pq.module_paths
    assert pq.full_text.endswith("```\n")  # the lexical side sees all of it
    short = parse_query("how is the retry backoff computed")
    assert short.segments == () and short.module_paths == () and short.words == 6


FILLER = "\n".join(f"def helper_{i}(x):\n    return x + {i}\n" for i in range(40))


@pytest.fixture
def rt(tmp_path: Path, embedder: Any):  # type: ignore[no-untyped-def]
    """Two modules: ``ledger.py`` names the report's words across several functions,
    ``report.py`` has one function that names a few of them."""
    repo = tmp_path / "repo"
    (repo / "bank").mkdir(parents=True)
    ledger = "\n\n".join(
        f'def {name}(entries):\n    """{doc}"""\n    return [e for e in entries if e]\n'
        for name, doc in [
            ("post_entries", "Post ledger entries; reconciliation of the settlement batch."),
            ("settle_batch", "Settle the batch; overdraft fees are charged here."),
            ("reverse_entry", "Reverse a ledger entry when the settlement bounces."),
            ("overdraft_fee", "The overdraft fee of an account in the settlement currency."),
        ]
    )
    (repo / "bank" / "ledger.py").write_text(ledger + "\n\n" + FILLER)
    (repo / "bank" / "report.py").write_text(
        'def settlement_report(batch):\n    """Print the settlement batch."""\n'
        "    return str(batch)\n\n" + FILLER
    )
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "bank")
    runtime = build_runtime(Settings(data_dir=tmp_path / "data", index_backend="edge"))
    runtime.embedder = runtime.indexer.embedder = runtime.retriever.embedder = embedder
    runtime.indexer.index(repo, repo="acme/bank")
    yield runtime
    runtime.close()


REPORT = (
    "Settlement batch posts the wrong overdraft fee. When the settlement batch is posted, "
    "the ledger entries are reversed but the overdraft fee stays charged, and "
    "reconciliation of the ledger fails for the whole batch. Steps: post entries, settle "
    "the batch, reverse an entry, look at the overdraft fee in the settlement currency. "
    "Expected the reversal to refund the fee; seen in production for every bounced entry."
)


def _file_scores(runtime: Any, query: str) -> dict[str, float]:
    hits = runtime.retriever.search(query, repos=["acme/bank"], k=50, max_per_file=1000)
    best: dict[str, float] = {}
    for h in hits:
        best[h.path] = max(best.get(h.path, -9.0), h.score)
    return best


def test_file_lexical_evidence_lifts_the_file_that_names_the_report_throughout(rt: Any) -> None:
    rt.retriever.fusion = FusionConfig(file_lexical_weight=0.0)
    off = _file_scores(rt, REPORT)
    rt.retriever.fusion = FusionConfig(file_lexical_weight=0.2)
    on = _file_scores(rt, REPORT)
    lift = {p: on[p] - off[p] for p in on}
    # ledger.py holds the best lexical file sum: it gains most, never more than the weight
    assert 0 < lift["bank/ledger.py"] <= 0.2 + 1e-6
    assert 0 <= lift["bank/report.py"] < lift["bank/ledger.py"]
    assert max(on, key=on.__getitem__) == "bank/ledger.py"
    # a short question is left alone
    q = "where is the overdraft fee charged"
    rt.retriever.fusion = FusionConfig(file_lexical_weight=0.0)
    before = _file_scores(rt, q)
    rt.retriever.fusion = FusionConfig(file_lexical_weight=0.2)
    assert _file_scores(rt, q) == pytest.approx(before)


def test_module_paths_and_dense_segments_switches(rt: Any) -> None:
    q = "bank.ledger gives a wrong fee " + " ".join(["the settlement batch report"] * 60)
    off = _file_scores(rt, q)
    rt.retriever.fusion = FusionConfig(module_paths=True)
    on = _file_scores(rt, q)
    assert on["bank/ledger.py"] - off["bank/ledger.py"] == pytest.approx(0.05, abs=1e-6)
    assert on["bank/report.py"] == pytest.approx(off["bank/report.py"])
    rt.retriever.fusion = FusionConfig(dense_segments=True)
    seg = rt.retriever.search(q, repos=["acme/bank"], k=5, mode="dense")
    plain = FusionConfig()
    rt.retriever.fusion = plain
    base = rt.retriever.search(q, repos=["acme/bank"], k=5, mode="dense")
    # each chunk keeps its best cosine over the windows: never below the first window's
    by_id = {h.id: h.score for h in base}
    assert all(h.score >= by_id[h.id] - 1e-6 for h in seg if h.id in by_id)
    assert parse_query(q).segments
