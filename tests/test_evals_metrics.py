"""The metrics against rankings scored by hand: every tuning decision rests on these."""

from __future__ import annotations

import math

import pytest

from evals.metrics import (
    METRIC_NAMES,
    aggregate,
    dedupe,
    latency_summary,
    percentile,
    score_query,
)
from evals.report import QueryResult, Skipped, build_report

ALL_ZERO = dict.fromkeys(METRIC_NAMES, 0.0)


def test_one_gold_at_rank_three() -> None:
    m = score_query(["a", "b", "g", "d"], {"g"})
    assert m["mrr"] == pytest.approx(1 / 3)
    # DCG = 1/log2(4) = 0.5, ideal = 1/log2(2) = 1
    assert m["ndcg@10"] == pytest.approx(0.5)
    assert (m["recall@1"], m["recall@3"], m["recall@5"], m["recall@10"]) == (0, 1, 1, 1)
    assert (m["acc@1"], m["acc@3"], m["acc@5"], m["acc@10"]) == (0, 1, 1, 1)


def test_several_gold_items_partly_found() -> None:
    m = score_query(["x", "g1", "y", "g2", "z"], ["g1", "g2", "g3"])
    assert m["mrr"] == pytest.approx(0.5)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@10"] == pytest.approx(dcg / ideal)
    assert m["recall@1"] == 0
    assert m["recall@3"] == pytest.approx(1 / 3)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["recall@10"] == pytest.approx(2 / 3)
    # Acc@k needs *all* gold items in the top k: never reached here
    assert all(m[f"acc@{k}"] == 0 for k in (1, 3, 5, 10))


def test_all_gold_found_gives_acc_at_the_rank_of_the_last_one() -> None:
    m = score_query(["g2", "x", "g1", "y"], {"g1", "g2"})
    assert m["mrr"] == 1.0
    assert (m["acc@1"], m["acc@3"]) == (0.0, 1.0)
    assert (m["recall@1"], m["recall@3"]) == (0.5, 1.0)
    ideal = 1 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / ideal)


def test_duplicates_take_one_rank() -> None:
    # without de-duplication g would sit at rank 4
    m = score_query(["a", "a", "b", "g", "a"], {"g"})
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["recall@3"] == 1.0
    # a gold item retrieved twice counts once
    m = score_query(["g", "g", "h"], {"g", "h"})
    assert m["recall@1"] == 0.5
    assert m["acc@1"] == 0.0
    assert m["acc@3"] == 1.0
    assert m["ndcg@10"] == pytest.approx(1.0)
    assert dedupe(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]


def test_empty_ranking_and_absent_gold_score_zero() -> None:
    assert score_query([], {"g"}) == ALL_ZERO
    assert score_query(["a", "b", "c"], {"g"}) == ALL_ZERO


def test_mrr_is_cut_at_rank_100() -> None:
    filler = [f"d{i}" for i in range(99)]
    assert score_query([*filler, "g"], {"g"})["mrr"] == pytest.approx(1 / 100)
    assert score_query([*filler, "x", "g"], {"g"})["mrr"] == 0.0


def test_ndcg_ideal_is_capped_at_ten_items() -> None:
    gold = [f"g{i}" for i in range(15)]
    assert score_query(gold, gold)["ndcg@10"] == pytest.approx(1.0)
    assert score_query(["x", *gold], gold)["ndcg@10"] < 1.0


def test_query_without_gold_is_refused() -> None:
    with pytest.raises(ValueError):
        score_query(["a"], [])


def test_aggregate_is_a_percentage_rounded_to_two_decimals() -> None:
    per_query = [score_query(["g"], {"g"}), score_query(["a", "g"], {"g"}), score_query([], {"g"})]
    agg = aggregate(per_query)
    assert list(agg) == list(METRIC_NAMES)
    assert agg["mrr"] == 50.0  # (1 + 0.5 + 0) / 3
    assert agg["recall@1"] == 33.33
    assert agg["acc@3"] == 66.67
    assert aggregate([]) == ALL_ZERO


def test_percentiles_interpolate_like_numpy() -> None:
    np = pytest.importorskip("numpy")
    values = [12.0, 3.0, 7.5, 1.0, 30.0, 4.0, 9.0]
    for q in (0, 25, 50, 90, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5.0], 95) == 5.0
    assert percentile([], 50) == 0.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    assert latency_summary([1.0, 2.0, 3.0, 4.0]) == {"p50": 2.5, "p95": 3.85}


def _result(qid: str, ranked: list[str], gold: list[str], ms: float) -> QueryResult:
    return QueryResult(qid, ranked, gold, score_query(ranked, gold), ms)


def test_report_has_exactly_the_documented_shape() -> None:
    results = [_result("q1", ["a", "b"], ["b"], 10.0), _result("q2", ["c"], ["c"], 20.0)]
    report = build_report(
        dataset="demo",
        mode="dense",
        results=results,
        skipped=[Skipped("q3", "no relevant document in the corpus")],
        index_chunks=42,
        index_seconds=1.23456,
    )
    assert list(report) == [
        "dataset", "mode", "n_queries", "skipped", "metrics", "latency_ms", "index",
    ]  # fmt: skip
    assert report["n_queries"] == 2
    assert report["skipped"] == [{"id": "q3", "reason": "no relevant document in the corpus"}]
    assert list(report["metrics"]) == list(METRIC_NAMES)
    assert report["metrics"]["mrr"] == 75.0
    assert report["latency_ms"] == {"p50": 15.0, "p95": 19.5}
    assert report["index"] == {"chunks": 42, "seconds": 1.23}


def test_report_per_query_and_function_level_only_when_asked() -> None:
    r = _result("q1", ["x", "a"], ["a"], 5.0)
    r.function_ranked, r.function_gold = ["a::f"], ["a::f"]
    r.function_metrics = score_query(r.function_ranked, r.function_gold)
    plain = _result("q2", ["b"], ["b"], 5.0)  # no function-level gold: not in that average
    report = build_report(
        dataset="d",
        mode="hybrid",
        results=[r, plain],
        skipped=[],
        index_chunks=1,
        index_seconds=0.0,
        per_query=True,
        function_level=True,
    )
    assert report["function_level"]["n_queries"] == 1
    assert report["function_level"]["metrics"]["acc@1"] == 100.0
    first = report["per_query"][0]
    assert first["id"] == "q1"
    assert first["first_gold_rank"] == 2
    assert first["metrics"]["mrr"] == 50.0
    assert first["function_level"]["metrics"]["mrr"] == 100.0
    assert "function_level" not in report["per_query"][1]
