"""The Edge HNSW build off the request path: copy, child process, journal, swap.

Real shards on disk, a real child process. Small shards (the child's ``optimize`` has
nothing to index below Qdrant's threshold) still run every step that can lose data: the
copy, writes journalled during the build, the replay, the switch of the live directory, a
reopen, and the cleanup of what a build leaves behind.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from pathlib import Path

import pytest

import coderag.index.edge as edge_mod
from coderag.index import EdgeIndex, IndexPoint, SearchFilter, SparseVec
from coderag.index.edge_build import BuildAbandoned, HnswBuilder, build_in_child

pytestmark = pytest.mark.integration

DIM = 8


def pt(n: int, path: str = "a.py") -> IndexPoint:
    rng = random.Random(n)
    return IndexPoint(
        id=str(uuid.uuid5(uuid.NAMESPACE_OID, str(n))),
        dense=[rng.uniform(-1, 1) for _ in range(DIM)],
        sparse=SparseVec([n % 50, 100 + n % 7], [1.0, 0.5]),
        payload={"repo": "r", "branches": ["main"], "path": path, "text": f"chunk {n}"},
    )


def _open(path: Path, n: int = 60) -> EdgeIndex:
    idx = EdgeIndex(path)
    idx.ensure(DIM)
    idx.upsert([pt(i, f"src/f{i % 5}.py") for i in range(n)])
    return idx


def test_build_replays_the_writes_made_meanwhile_and_survives_a_reopen(tmp_path: Path) -> None:
    idx = _open(tmp_path)
    query = pt(3).dense
    target = idx._begin_build()
    assert target.name == "coderag.g1" and target.is_dir()
    # writes while the child builds: they reach the live shard now and the copy later
    idx.upsert([pt(i, "src/new.py") for i in range(100, 110)])
    idx.delete([pt(0).id, pt(1).id])
    idx.set_branches({pt(2).id: ["main", "dev"]})
    report = build_in_child(target, threads=1)
    assert report["points"] == 60  # the copy, as it was when copied
    before = [(r.id, r.score) for r in idx.search_dense(query, SearchFilter(), 20)]
    swap = idx._finish_build(target)
    assert swap["journal_points"] == 11  # 10 upserted + 1 set_branches
    assert json.loads(idx.active_file.read_text())["dir"] == "coderag.g1"
    assert idx.shard_dir == target and not (tmp_path / "coderag").exists()
    assert [(r.id, r.score) for r in idx.search_dense(query, SearchFilter(), 20)] == before
    assert idx.count() == 68
    assert idx.retrieve([pt(2).id])[pt(2).id]["branches"] == ["dev", "main"]
    assert not idx.retrieve([pt(0).id, pt(1).id])
    idx.upsert([pt(200)])  # writes go to the new live shard
    idx.close()

    again = EdgeIndex(tmp_path)
    assert again.count() == 69
    assert again.shard_dir == target
    assert [(r.id, r.score) for r in again.search_dense(query, SearchFilter(), 20)][:5] == (
        before[:5]
    )
    second = again.build_hnsw(threads=1)  # the next generation replaces this one
    assert second["points"] == 69 and again.shard_dir.name == "coderag.g2"
    assert not target.exists() and again.count() == 69
    again.close()


def test_too_many_writes_during_a_build_abandon_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge_mod, "JOURNAL_MAX_POINTS", 3)
    idx = _open(tmp_path)
    target = idx._begin_build()
    idx.upsert([pt(i) for i in range(100, 105)])
    build_in_child(target, threads=1)
    with pytest.raises(BuildAbandoned):
        idx._finish_build(target)
    idx._abort_build(target)
    assert not target.exists() and idx.shard_dir.name == "coderag"
    assert idx.count() == 65  # nothing lost: the live shard had every write
    idx.close()


def test_reads_and_writes_go_on_during_a_build(tmp_path: Path) -> None:
    idx = _open(tmp_path, 200)
    errors: list[BaseException] = []
    stop = threading.Event()
    reads = [0]

    def reader() -> None:
        try:
            while not stop.is_set():
                assert idx.search_dense(pt(5).dense, SearchFilter(), 10, ("path",))
                reads[0] += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        builder = HnswBuilder(idx)
        done = threading.Thread(target=lambda: builder.build_now(threads=1))
        done.start()
        n = 1000
        while done.is_alive():
            idx.upsert([pt(n)])
            n += 1
        done.join()
    finally:
        stop.set()
        t.join()
    assert not errors and reads[0] > 0
    assert builder.last is not None and "swap_s" in builder.last
    assert idx.count() == 200 + (n - 1000)
    idx.close()


def test_leftovers_of_a_build_are_removed_on_open(tmp_path: Path) -> None:
    idx = _open(tmp_path)
    idx.close()
    stale = tmp_path / "coderag.g7"
    stale.mkdir()
    (stale / "junk").write_text("x")
    other = tmp_path / "coderag-not-ours.g1"
    other.mkdir()
    idx = EdgeIndex(tmp_path)
    assert idx.count() == 60
    assert not stale.exists() and other.exists()
    idx.close()


def test_a_due_build_waits_for_enough_unindexed_points_and_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coderag.index.edge_build as build_mod

    idx = _open(tmp_path)
    builder = HnswBuilder(idx)
    assert idx.unindexed_points() == 60
    monkeypatch.setattr(build_mod, "MIN_UNINDEXED_POINTS", 50)
    assert not builder.due()  # written just now
    monkeypatch.setattr(build_mod, "QUIET_SECONDS", 0.0)
    assert builder.due()
    monkeypatch.setattr(build_mod, "MIN_UNINDEXED_POINTS", 61)
    assert not builder.due()
    idx.close()


def test_close_stops_the_background_builder(tmp_path: Path) -> None:
    idx = EdgeIndex(tmp_path, background_hnsw=True)
    idx.ensure(DIM)
    builder = idx.hnsw_builder
    assert builder is not None and builder._thread is not None and builder._thread.is_alive()
    idx.close()
    assert not builder._thread.is_alive()
