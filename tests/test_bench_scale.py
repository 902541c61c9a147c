"""``coderag bench scale`` at a tiny size: it runs both backends and prints its JSON keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import bench_app
from bench.scale import _sizes

pytestmark = pytest.mark.integration


def test_sizes_read_suffixes() -> None:
    assert _sizes("10k, 100k,1m,2500") == [10_000, 100_000, 1_000_000, 2500]
    with pytest.raises(ValueError):
        _sizes("lots")


def test_bench_scale_prints_every_figure(tmp_path: Path) -> None:
    args = ["scale", "--sizes", "400,900", "--queries", "5", "--local-max", "500"]
    args += ["--backend", "edge", "--backend", "server", "--data-dir", str(tmp_path)]
    res = CliRunner().invoke(bench_app, args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["server_stand_in"] == "qdrant-client local mode"
    rows = {(r["backend"], r["points"]): r for r in report["results"]}
    assert set(rows) == {("edge", 400), ("edge", 900), ("server", 400), ("server", 900)}
    assert "over --local-max 500" in rows["server", 900]["skipped"]
    for key in (("edge", 400), ("edge", 900), ("server", 400)):
        row = rows[key]
        assert "error" not in row, row.get("error")
        assert row["upsert_points_per_s"] > 0
        assert row["rss_peak_bytes"] >= row["rss_after_bytes"] > 0
        assert row["disk_bytes"] > 0
        assert row["search"]["queries"] == 5
        assert {"p50_ms", "p95_ms", "p99_ms"} <= set(row["search"])
    assert rows["server", 400]["server_stand_in"] == "qdrant-client local mode"
    assert rows["edge", 900]["hnsw"]["points"] == 900  # built off the request path
    # Edge's candidate cache is warmed as a server warms it (what the cold searches did not
    # already fill); the stand-in has no such cache
    edge = rows["edge", 900]
    assert 0 < edge["cache_warm"]["points"] <= 900
    assert edge["search_cold_cache"]["queries"] == 5
    assert rows["server", 400]["cache_warm"]["points"] == 0
    assert not any(tmp_path.iterdir())  # each point's index is removed after it
