"""What only the Edge backend has: the process lock, threads, the state file on disk."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from coderag.errors import ConfigError, IndexError_, IndexLockedError, InputError
from coderag.index import EdgeIndex, IndexPoint, SearchFilter, SparseVec

pytestmark = pytest.mark.integration

DIM = 8

HOLDER = """
import sys
from pathlib import Path
from coderag.index import EdgeIndex
idx = EdgeIndex(Path(sys.argv[1]))
idx.ensure(8)
print("ready", flush=True)
sys.stdin.readline()
idx.close()
print("closed", flush=True)
"""


def pt(n: int, path: str = "a.py", dim: int = DIM) -> IndexPoint:
    rng = random.Random(n)
    return IndexPoint(
        id=str(uuid.uuid5(uuid.NAMESPACE_OID, str(n))),
        dense=[rng.uniform(-1, 1) for _ in range(dim)],
        sparse=SparseVec([1, 2 + n % 50], [1.0, 1.0]),
        payload={"repo": "g/app", "branches": ["main"], "path": path, "text": "x" * 200},
    )


def test_lock_refuses_a_second_process(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdin is not None
            assert holder.stdout.readline().strip() == "ready"
            second = EdgeIndex(tmp_path)
            with pytest.raises(IndexLockedError) as info:
                second.ensure(DIM)
            msg = str(info.value)
            assert f"pid {holder.pid}" in msg
            assert str(tmp_path) in msg and "server backend" in msg
            with pytest.raises(IndexLockedError):  # state is behind the same lock
                second.get_state("k")
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "closed"
            assert holder.wait(timeout=30) == 0
        finally:
            if holder.poll() is None:
                holder.kill()
    # once the owner is gone, the index opens
    with EdgeIndex(tmp_path) as idx:
        idx.ensure(DIM)
        assert idx.count() == 0


def test_lock_refuses_a_second_instance_in_process(tmp_path: Path) -> None:
    first = EdgeIndex(tmp_path)
    first.ensure(DIM)
    with pytest.raises(IndexLockedError, match="this process"):
        EdgeIndex(tmp_path).ensure(DIM)
    first.close()
    second = EdgeIndex(tmp_path)
    second.ensure(DIM)
    second.close()


def test_lock_file_names_the_owner(tmp_path: Path) -> None:
    with EdgeIndex(tmp_path) as idx:
        idx.ensure(DIM)
        assert (tmp_path / "LOCK").read_text().strip() == str(os.getpid())


def test_constructor_touches_nothing(tmp_path: Path) -> None:
    EdgeIndex(tmp_path / "idx")
    assert not (tmp_path / "idx").exists()


def test_reads_before_ensure_need_an_existing_shard(tmp_path: Path) -> None:
    idx = EdgeIndex(tmp_path)
    with pytest.raises(IndexError_, match="ensure"):
        idx.count()
    idx.close()
    with EdgeIndex(tmp_path) as idx:
        idx.ensure(DIM)
        idx.upsert([pt(1)])
    with EdgeIndex(tmp_path) as idx:  # an existing shard opens on first use
        assert idx.count() == 1


def test_dimension_mismatch_is_read_from_disk(tmp_path: Path) -> None:
    with EdgeIndex(tmp_path) as idx:
        idx.ensure(DIM)
    with EdgeIndex(tmp_path) as idx, pytest.raises(ConfigError, match=r"8-dim.*16-dim"):
        idx.ensure(16)


def test_concurrent_reads_while_writing(tmp_path: Path) -> None:
    """The FastAPI threadpool reads while the background indexer writes."""
    idx = EdgeIndex(tmp_path)
    idx.ensure(DIM)
    idx.upsert([pt(n, f"d{n % 4}/f{n}.py") for n in range(200)])
    errors: list[BaseException] = []
    done = threading.Event()
    reads = [0]

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not done.is_set():
                q = [rng.uniform(-1, 1) for _ in range(DIM)]
                flt = SearchFilter(repos=["g/app"], path_globs=["d1/*"])
                assert all(h.payload["path"].startswith("d1/") for h in idx.search_dense(q, flt, 5))
                idx.search_hybrid(q, SparseVec([1, 3], [1.0, 1.0]), SearchFilter(), 5)
                idx.count(SearchFilter(branch="main"))
                reads[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    try:
        for lo in range(200, 800, 100):
            idx.upsert([pt(n, f"d{n % 4}/f{n}.py") for n in range(lo, lo + 100)])
            idx.set_branches({pt(n).id: ["main", "dev"] for n in range(lo, lo + 50)})
            idx.set_state(f"k{lo}", {"n": lo})
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert reads[0] > 0
    assert idx.count() == 800
    idx.close()


def test_close_waits_and_then_refuses(tmp_path: Path) -> None:
    idx = EdgeIndex(tmp_path)
    idx.ensure(DIM)
    idx.upsert([pt(n) for n in range(10)])
    idx.scroll_page_size = 2
    it = idx.scroll(SearchFilter())
    next(it)  # a half-consumed scroll must not block close
    idx.close()
    with pytest.raises(IndexError_, match="closed"):
        list(it)
    with pytest.raises(IndexError_, match="closed"):
        idx.get_state("k")
    with pytest.raises(IndexError_, match="closed"):
        idx.ensure(DIM)


def test_state_file_is_replaced_atomically(tmp_path: Path) -> None:
    with EdgeIndex(tmp_path) as idx:
        idx.set_state("a", {"v": 1})
        before = idx.state_file.read_text()
        with pytest.raises(InputError):
            idx.set_state("b", {"v": object()})  # not JSON: nothing written
        assert idx.state_file.read_text() == before
        assert json.loads(before) == {"a": {"v": 1}}
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
        value = idx.get_state("a")
        assert value is not None
        value["v"] = 2  # callers get copies, not the cached record
        assert idx.get_state("a") == {"v": 1}


def test_corrupt_state_file_is_an_index_error(tmp_path: Path) -> None:
    (tmp_path / "coderag.state.json").write_text("{not json")
    with EdgeIndex(tmp_path) as idx, pytest.raises(IndexError_, match="corrupt"):
        idx.get_state("a")


def test_optimize_keeps_results(tmp_path: Path) -> None:
    with EdgeIndex(tmp_path) as idx:
        idx.ensure(DIM)
        idx.upsert([pt(n) for n in range(300)])
        q = pt(7).dense
        before = [h.id for h in idx.search_dense(q, SearchFilter(), 3)]
        idx.optimize()
        assert idx.search_dense(q, SearchFilter(), 3)[0].id == before[0]
        idx.flush()
        assert idx.count() == 300


def test_collections_share_a_dir_but_not_data(tmp_path: Path) -> None:
    with EdgeIndex(tmp_path, collection="a") as a:
        a.ensure(DIM)
        a.upsert([pt(1)])
        a.set_state("k", {"from": "a"})
    with EdgeIndex(tmp_path, collection="b") as b:
        b.ensure(DIM)
        assert b.count() == 0
        assert b.get_state("k") is None


def test_warm_candidate_cache_serves_searches_without_reads(tmp_path: Path) -> None:
    """After the warm-up a server runs at start, a search's candidate fields come from memory:
    no payload read per search (the cold cache cost a 100k-point search most of its time)."""
    idx = EdgeIndex(tmp_path)
    idx.ensure(DIM)
    idx.scroll_page_size = 7  # several pages
    idx.upsert([pt(n, path=f"f{n % 5}.py") for n in range(60)])
    assert idx.warm_candidate_cache(page_size=16) == 60
    assert idx.warm_candidate_cache(page_size=16) == 0  # already there: nothing re-read

    reads: list[int] = []
    real = idx._p_retrieve

    def counting(ids: list[str], fields: list[str] | None = None) -> dict:
        reads.append(len(ids))
        return real(ids, fields)

    idx._p_retrieve = counting  # type: ignore[method-assign]
    hits = idx.search_dense(pt(3).dense, SearchFilter(), 20, ["repo", "path"])
    assert len(hits) == 20 and reads == []
    assert all(h.payload["path"].startswith("f") and h.payload["repo"] == "g/app" for h in hits)

    # a write drops what it changed: the next search reads the new value, not the warm one
    idx.upsert([pt(3, path="moved.py")])
    hits = idx.search_dense(pt(3).dense, SearchFilter(), 1, ["path"])
    assert hits[0].payload["path"] == "moved.py" and reads == [1]
    idx.close()


def test_warm_candidate_cache_stops_at_capacity_and_on_request(tmp_path: Path) -> None:
    idx = EdgeIndex(tmp_path)
    idx.ensure(DIM)
    idx.upsert([pt(n) for n in range(40)])
    idx.candidate_cache_size = 25  # instance override of the class default
    assert idx.warm_candidate_cache(page_size=10) == 25
    stop = threading.Event()
    stop.set()
    idx2 = EdgeIndex(tmp_path / "other")
    idx2.ensure(DIM)
    idx2.upsert([pt(n) for n in range(10)])
    assert idx2.warm_candidate_cache(stop) == 0
    idx.close()
    idx2.close()
    assert idx.warm_candidate_cache() == 0  # closed: nothing to warm, and no error
