"""The VectorIndex contract, run against every backend (Haystack ``testing/document_store``).

No mocks: Edge is a real shard on disk in ``tmp_path``; the server backend runs against
qdrant-client's local mode on disk (the stand-in for a Qdrant server). A behaviour that
only one backend has belongs in ``test_index_edge.py`` / ``test_index_server.py``.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

from coderag.errors import CoderagError, ConfigError, IndexError_, InputError
from coderag.index import (
    EdgeIndex,
    IndexPoint,
    SearchFilter,
    ServerIndex,
    SparseVec,
    VectorIndex,
    _shared,
    ancestor_dirs,
    glob_match,
)

pytestmark = pytest.mark.integration

DIM = 8


# --- harness ----------------------------------------------------------------------------------


class Harness:
    """Opens (and re-opens) one backend on one piece of storage under ``tmp_path``."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        self._open: list[VectorIndex] = []
        self._clients: list[QdrantClient] = []

    def open(self) -> VectorIndex:
        idx: VectorIndex
        if self.kind == "edge":
            idx = EdgeIndex(self.root / "index")
        else:
            client = QdrantClient(path=str(self.root / "qdrant"))
            self._clients.append(client)
            idx = ServerIndex(client=client)
        self._open.append(idx)
        return idx

    def reopen(self, idx: VectorIndex) -> VectorIndex:
        """Close ``idx`` (and its client) and open a fresh instance on the same storage."""
        idx.close()
        for c in self._clients:
            c.close()
        self._clients.clear()
        return self.open()

    def close_all(self) -> None:
        for idx in self._open:
            idx.close()
        for c in self._clients:
            c.close()


@pytest.fixture(params=["edge", "server"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(request.param, tmp_path)
    yield h
    h.close_all()


@pytest.fixture
def index(harness: Harness) -> VectorIndex:
    idx = harness.open()
    idx.ensure(DIM)
    return idx


@pytest.fixture(scope="module", params=["edge", "server"])
def corpus_index(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VectorIndex]:
    """One index per backend holding :func:`corpus`, shared by the read-only tests (each
    shard costs a few fsyncs, which dominate the suite's time on a busy disk)."""
    h = Harness(request.param, tmp_path_factory.mktemp(f"corpus-{request.param}"))
    idx = h.open()
    idx.ensure(DIM)
    idx.upsert(corpus())
    yield idx
    h.close_all()


# --- data -------------------------------------------------------------------------------------


def pid(n: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"point-{n}"))


def unit(vec: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


def axis(i: int, noise: float = 0.0, rng: random.Random | None = None) -> list[float]:
    """Unit vector near axis ``i``."""
    rng = rng or random.Random(i)
    return unit([(1.0 if k == i else 0.0) + noise * rng.uniform(-1, 1) for k in range(DIM)])


def point(
    n: int,
    path: str,
    *,
    repo: str = "g/app",
    branches: tuple[str, ...] = ("main",),
    language: str = "python",
    symbol: str | None = None,
    dense: list[float] | None = None,
    sparse: SparseVec | None = None,
    **extra: Any,
) -> IndexPoint:
    rng = random.Random(n)
    return IndexPoint(
        id=pid(n),
        dense=dense or unit([rng.uniform(-1, 1) for _ in range(DIM)]),
        sparse=sparse or SparseVec([1, 100 + n], [1.0, 0.5]),
        payload={
            "repo": repo,
            "branches": list(branches),
            "path": path,
            "dirs": ancestor_dirs(path),
            "language": language,
            "symbol": symbol or f"sym{n}",
            "kind": "function",
            "start_line": 1,
            "end_line": 10,
            "hash": f"h{n}",
            "commit": "c0ffee",
            "text": f"def sym{n}(): pass",
            **extra,
        },
    )


CORPUS_SPEC: list[tuple[str, str, tuple[str, ...], str, str]] = [
    # (repo, path, branches, language, symbol)
    ("g/app", "README.md", ("main",), "markdown", "readme"),
    ("g/app", "setup.py", ("main", "dev"), "python", "setup"),
    ("g/app", "src/app.py", ("main",), "python", "main"),
    ("g/app", "src/util.py", ("dev",), "python", "helper"),
    ("g/app", "src/core/engine.py", ("main", "dev"), "python", "Engine"),
    ("g/app", "src/core/deep/x.py", ("main",), "python", "x"),
    ("g/app", "src/core/notes.md", ("main",), "markdown", "notes"),
    ("g/app", "src2/other.py", ("main",), "python", "other"),
    ("g/app", "tests/test_app.py", ("main",), "python", "test_main"),
    ("g/app", "tests/unit/test_util.py", ("main", "dev"), "python", "test_helper"),
    ("g/app", "docs/guide.md", ("dev",), "markdown", "guide"),
    ("g/lib", "README.md", ("main",), "markdown", "readme"),
    ("g/lib", "src/lib.rs", ("main", "feature/x"), "rust", "main"),
    ("g/lib", "src/core/engine.rs", ("main",), "rust", "Engine"),
    ("g/lib", "tests/it.rs", ("feature/x",), "rust", "it"),
    ("other/svc", "src/app.py", ("main",), "python", "main"),
    ("other/svc", "main.go", ("main",), "go", "main"),
]


def corpus() -> list[IndexPoint]:
    return [
        point(n, path, repo=repo, branches=br, language=lang, symbol=sym)
        for n, (repo, path, br, lang, sym) in enumerate(CORPUS_SPEC)
    ]


def expected(points: list[IndexPoint], flt: SearchFilter) -> set[str]:
    """Reference semantics of SearchFilter, written independently of the backends."""

    def ok(p: IndexPoint) -> bool:
        pl = p.payload
        return (
            (not flt.repos or pl["repo"] in flt.repos)
            and (not flt.branch or flt.branch in pl["branches"])
            and (not flt.paths or pl["path"] in flt.paths)
            and (not flt.path_globs or any(glob_match(g, pl["path"]) for g in flt.path_globs))
            and (not flt.languages or pl["language"] in flt.languages)
            and (not flt.symbols or pl["symbol"] in flt.symbols)
            and p.id not in flt.exclude_ids
        )

    return {p.id for p in points if ok(p)}


FILTER_CASES: dict[str, SearchFilter] = {
    "none": SearchFilter(),
    "repos-one": SearchFilter(repos=["g/lib"]),
    "repos-any": SearchFilter(repos=["g/lib", "other/svc"]),
    "repos-unknown": SearchFilter(repos=["nobody/none"]),
    "branch": SearchFilter(branch="dev"),
    "branch-slash": SearchFilter(branch="feature/x"),
    "paths": SearchFilter(paths=["README.md", "src/app.py"]),
    "languages": SearchFilter(languages=["rust", "go"]),
    "symbols": SearchFilter(symbols=["Engine", "main"]),
    "exclude-ids": SearchFilter(exclude_ids=[pid(0), pid(2), pid(12)]),
    "glob-recursive": SearchFilter(path_globs=["src/**/*.py"]),
    "glob-root-only": SearchFilter(path_globs=["*.md"]),
    "glob-one-level": SearchFilter(path_globs=["tests/*"]),
    "glob-any-depth": SearchFilter(path_globs=["**/*.md"]),
    "glob-literal": SearchFilter(path_globs=["src/core/engine.py"]),
    "glob-several": SearchFilter(path_globs=["tests/**", "*.py"]),
    "glob-class": SearchFilter(path_globs=["src/[au]*.py"]),
    "combined": SearchFilter(
        repos=["g/app", "g/lib"],
        branch="main",
        languages=["python", "rust"],
        path_globs=["src/**"],
        exclude_ids=[pid(5)],
    ),
    "combined-paths-symbols": SearchFilter(
        repos=["g/app", "other/svc"], paths=["src/app.py", "main.go"], symbols=["main"]
    ),
}


# --- lifecycle --------------------------------------------------------------------------------


def test_backend_satisfies_protocol(index: VectorIndex) -> None:
    assert isinstance(index, VectorIndex)


def test_ensure_is_idempotent_and_keeps_points(index: VectorIndex) -> None:
    index.ensure(DIM)
    index.upsert(corpus())
    index.ensure(DIM)
    assert index.count() == len(CORPUS_SPEC)


def test_ensure_refuses_another_dimension(harness: Harness, index: VectorIndex) -> None:
    with pytest.raises(ConfigError, match="dim"):
        index.ensure(DIM * 2)
    reopened = harness.reopen(index)
    with pytest.raises(ConfigError, match=f"{DIM}-dim"):
        reopened.ensure(DIM * 2)
    reopened.ensure(DIM)  # the right dimension still opens it


def test_points_survive_close_and_reopen(harness: Harness, index: VectorIndex) -> None:
    index.upsert(corpus())
    reopened = harness.reopen(index)
    reopened.ensure(DIM)
    assert reopened.count() == len(CORPUS_SPEC)
    assert reopened.retrieve([pid(3)])[pid(3)]["path"] == "src/util.py"


def test_closed_index_raises_coderag_error(index: VectorIndex) -> None:
    index.close()
    index.close()  # idempotent
    with pytest.raises(IndexError_):
        index.count()


# --- writes and reads -------------------------------------------------------------------------


def test_upsert_retrieve_round_trip(index: VectorIndex) -> None:
    p = point(1, "src/a/b.py", nested={"k": [1, 2.5, None, "x"]}, score=0.25, empty=[])
    index.upsert([p])
    got = index.retrieve([p.id, pid(999)])
    assert set(got) == {p.id}
    assert got[p.id] == p.payload


def test_upsert_fills_dirs_and_normalises_ids(index: VectorIndex) -> None:
    p = point(1, "a/b/c.py")
    payload = {k: v for k, v in p.payload.items() if k != "dirs"}
    index.upsert([IndexPoint(p.id.upper(), p.dense, p.sparse, payload)])
    got = index.retrieve([p.id.upper()])
    assert list(got) == [p.id]
    assert got[p.id]["dirs"] == ["a", "a/b"]


def test_upsert_replaces_existing_point(index: VectorIndex) -> None:
    index.upsert([point(1, "a.py", symbol="old")])
    index.upsert([point(1, "a.py", symbol="new")])
    assert index.count() == 1
    assert index.retrieve([pid(1)])[pid(1)]["symbol"] == "new"


def test_upsert_many_batches(index: VectorIndex) -> None:
    index.upsert_batch_size = 16  # type: ignore[attr-defined]
    index.upsert([point(n, f"f{n}.py") for n in range(50)])
    assert index.count() == 50


def test_bad_ids_are_input_errors(index: VectorIndex) -> None:
    with pytest.raises(InputError):
        index.retrieve(["not-a-uuid"])
    with pytest.raises(InputError):
        index.delete(["nope"])


def test_scroll_pages_through_everything(index: VectorIndex) -> None:
    index.scroll_page_size = 7  # type: ignore[attr-defined]
    points = [point(n, f"d{n % 3}/f{n}.py") for n in range(30)]
    index.upsert(points)
    got = dict(index.scroll(SearchFilter()))
    assert set(got) == {p.id for p in points}
    assert got[pid(4)] == points[4].payload


def test_scroll_fields_restrict_payload(index: VectorIndex) -> None:
    index.scroll_page_size = 5  # type: ignore[attr-defined]
    index.upsert(corpus())
    rows = list(index.scroll(SearchFilter(repos=["g/app"]), fields=["path", "repo"]))
    assert len(rows) == sum(1 for s in CORPUS_SPEC if s[0] == "g/app")
    assert all(set(pl) == {"path", "repo"} for _, pl in rows)
    ids_only = list(index.scroll(SearchFilter(), fields=()))
    assert len(ids_only) == len(CORPUS_SPEC)
    assert all(pl == {} for _, pl in ids_only)
    # a glob needs 'path' internally, but only the asked-for fields come back
    globbed = list(index.scroll(SearchFilter(path_globs=["src/**"]), fields=["symbol"]))
    assert globbed and all(set(pl) == {"symbol"} for _, pl in globbed)


@pytest.mark.parametrize("case", list(FILTER_CASES))
def test_every_filter_agrees_with_reference(corpus_index: VectorIndex, case: str) -> None:
    """Each filter field alone and combined, through scroll, count and all three searches."""
    index = corpus_index
    flt = FILTER_CASES[case]
    points = corpus()
    want = expected(points, flt)

    assert {i for i, _ in index.scroll(flt, fields=())} == want
    assert index.count(flt) == len(want)
    q = axis(0)
    big = len(points) + 5
    assert {r.id for r in index.search_dense(q, flt, big)} == want
    # every corpus point carries sparse term 1, so sparse search reaches all of them
    assert {r.id for r in index.search_sparse(SparseVec([1], [1.0]), flt, big)} == want
    assert {r.id for r in index.search_hybrid(q, SparseVec([1], [1.0]), flt, big)} == want


def test_count_without_filter(index: VectorIndex) -> None:
    assert index.count() == 0
    index.upsert(corpus())
    assert index.count() == len(CORPUS_SPEC)
    assert index.count(None) == len(CORPUS_SPEC)


# --- ranking ----------------------------------------------------------------------------------


def test_search_dense_ranks_planted_nearest_first(index: VectorIndex) -> None:
    rng = random.Random(7)
    noise = [point(n, f"n{n}.py", dense=axis(n % DIM, 0.9, rng)) for n in range(40)]
    target = point(100, "target.py", dense=axis(3, 0.01, rng))
    index.upsert([*noise, target])
    hits = index.search_dense(axis(3), SearchFilter(), 5)
    assert hits[0].id == target.id
    assert hits[0].payload == target.payload
    assert all(isinstance(h.score, float) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)


def test_search_sparse_uses_idf(index: VectorIndex) -> None:
    """Term 0 is in every document, term 99 in one: the rare match must win even though
    the raw dot product favours the documents that only share the common term."""
    common = [point(n, f"c{n}.py", sparse=SparseVec([0, 10 + n], [1.5, 1.0])) for n in range(20)]
    rare = point(50, "rare.py", sparse=SparseVec([0, 99], [0.1, 1.0]))
    index.upsert([*common, rare])
    hits = index.search_sparse(SparseVec([0, 99], [1.0, 1.0]), SearchFilter(), 5)
    assert hits[0].id == rare.id
    assert hits[0].score > 5 * hits[1].score  # IDF shrinks the common term to almost nothing
    assert isinstance(hits[0].score, float)
    assert index.search_sparse(SparseVec([], []), SearchFilter(), 5) == []
    assert index.search_sparse(SparseVec([12345], [1.0]), SearchFilter(), 5) == []


def test_search_hybrid_fuses_both_lists(index: VectorIndex) -> None:
    rng = random.Random(3)
    filler = [
        point(n, f"f{n}.py", dense=axis(n % 4 + 4, 0.5, rng), sparse=SparseVec([200 + n], [1.0]))
        for n in range(20)
    ]
    dense_only = point(100, "dense.py", dense=axis(0, 0.01, rng), sparse=SparseVec([300], [1.0]))
    sparse_only = point(101, "sparse.py", dense=axis(6, 0.01, rng), sparse=SparseVec([7], [1.0]))
    both = point(102, "both.py", dense=axis(0, 0.2, rng), sparse=SparseVec([7], [0.8]))
    index.upsert([*filler, dense_only, sparse_only, both])
    hits = index.search_hybrid(axis(0), SparseVec([7], [1.0]), SearchFilter(), 3, prefetch=10)
    ids = [h.id for h in hits]
    assert ids[0] == both.id  # high in both lists
    assert set(ids) == {both.id, dense_only.id, sparse_only.id}
    assert all(isinstance(h.score, float) for h in hits)
    assert hits[0].score > hits[1].score
    assert hits[0].payload == both.payload
    # exclusion and an empty sparse vector still work
    flt = SearchFilter(exclude_ids=[both.id])
    assert both.id not in [h.id for h in index.search_hybrid(axis(0), SparseVec([7], [1]), flt, 3)]
    assert index.search_hybrid(axis(0), SparseVec([], []), SearchFilter(), 1)[0].id in {
        dense_only.id,
        both.id,
    }


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
@pytest.mark.parametrize("exact_route", [False, True], ids=["overfetch", "exact"])
def test_glob_search_returns_limit_results_when_they_exist(
    index: VectorIndex, monkeypatch: pytest.MonkeyPatch, mode: str, exact_route: bool
) -> None:
    """150 non-matching points rank above the 8 matching ones inside the prefilter
    (``src``): the backend must keep fetching (32, 128, 512 candidates) until ``limit``
    matches come back; with the cap lowered to 32 it must take the exact route instead."""
    if exact_route:
        monkeypatch.setattr(_shared, "MAX_OVERFETCH", 32)
    rng = random.Random(11)
    decoys = [
        point(n, f"src/d{n % 5}/f{n}.txt", dense=axis(0, 0.1, rng), sparse=SparseVec([5], [2.0]))
        for n in range(150)
    ]
    wanted = [
        point(1000 + n, f"src/m{n}/w{n}.py", dense=axis(0, 0.6, rng), sparse=SparseVec([5], [1.0]))
        for n in range(8)
    ]
    outside = [point(2000 + n, f"lib/w{n}.py", dense=axis(0, 0.0, rng)) for n in range(5)]
    index.upsert([*decoys, *wanted, *outside])
    flt = SearchFilter(path_globs=["src/**/*.py"])
    q, sq = axis(0), SparseVec([5], [1.0])
    if mode == "dense":
        hits = index.search_dense(q, flt, 5)
    elif mode == "sparse":
        hits = index.search_sparse(sq, flt, 5)
    else:
        hits = index.search_hybrid(q, sq, flt, 5, prefetch=10)
    assert len(hits) == 5
    assert {h.id for h in hits} <= {p.id for p in wanted}
    if mode == "dense":  # and they are the best 5 of the matching ones
        best = sorted(wanted, key=lambda p: -sum(a * b for a, b in zip(p.dense, q, strict=True)))
        assert [h.id for h in hits] == [p.id for p in best[:5]]
    assert len(index.search_dense(q, flt, 50)) == len(wanted)


def test_search_limit_zero_is_empty(index: VectorIndex) -> None:
    index.upsert(corpus())
    assert index.search_dense(axis(0), SearchFilter(), 0) == []


# --- branch bookkeeping and deletion ----------------------------------------------------------


def test_set_branches_then_branch_filter(index: VectorIndex) -> None:
    points = [point(n, f"f{n}.py", branches=("main",)) for n in range(12)]
    index.upsert(points)
    update = {p.id: ["main", "dev"] for p in points[:5]}
    update |= {p.id: ["dev"] for p in points[5:7]}
    update[pid(500)] = ["dev"]  # not in the index: skipped, not an error
    index.set_branches(update)
    dev = {i for i, _ in index.scroll(SearchFilter(branch="dev"), fields=())}
    main = {i for i, _ in index.scroll(SearchFilter(branch="main"), fields=())}
    assert dev == {p.id for p in points[:7]}
    assert main == {p.id for p in points[:5]} | {p.id for p in points[7:]}
    assert index.retrieve([pid(0)])[pid(0)]["branches"] == ["dev", "main"]
    assert index.retrieve([pid(0)])[pid(0)]["path"] == "f0.py"  # other payload untouched
    assert pid(500) not in index.retrieve([pid(500)])
    index.set_branches({pid(6): []})
    assert index.retrieve([pid(6)])[pid(6)]["branches"] == []


def test_delete_by_ids(index: VectorIndex) -> None:
    points = corpus()
    index.upsert(points)
    gone = [p.id for p in points[:4]]
    index.delete([*gone, pid(999)])
    assert index.retrieve(gone) == {}
    assert index.count() == len(points) - 4
    index.delete([p.id for p in points])
    assert index.count() == 0
    assert list(index.scroll(SearchFilter())) == []


@pytest.mark.parametrize(
    "flt",
    [
        SearchFilter(repos=["g/app"]),
        SearchFilter(repos=["g/lib"], branch="main"),
        SearchFilter(path_globs=["src/**/*.py"]),
        SearchFilter(repos=["g/app"], path_globs=["*.md", "docs/*"]),
    ],
    ids=["repo", "repo-branch", "glob", "repo-globs"],
)
def test_delete_where_leaves_no_matching_points(index: VectorIndex, flt: SearchFilter) -> None:
    points = corpus()
    index.upsert(points)
    doomed = expected(points, flt)
    assert doomed
    index.delete_where(flt)
    assert index.count(flt) == 0
    assert index.retrieve(sorted(doomed)) == {}
    assert index.count() == len(points) - len(doomed)


def test_delete_where_everything_then_nothing_left(index: VectorIndex) -> None:
    index.upsert(corpus())
    index.delete_where(SearchFilter(repos=["g/app", "g/lib", "other/svc"]))
    assert index.count() == 0
    assert index.search_dense(axis(0), SearchFilter(), 10) == []


def test_delete_where_refuses_an_empty_filter(index: VectorIndex) -> None:
    index.upsert(corpus())
    with pytest.raises(InputError):
        index.delete_where(SearchFilter())
    assert index.count() == len(CORPUS_SPEC)


# --- state ------------------------------------------------------------------------------------


def test_state_round_trip_and_durability(harness: Harness, index: VectorIndex) -> None:
    assert index.get_state("commit:g/app:main") is None
    index.set_state("commit:g/app:main", {"commit": "a" * 40, "chunks": 12})
    index.set_state("commit:g/app:dev", {"commit": "b" * 40})
    index.set_state("repo:g/app", {"enabled": True, "branches": ["main", "dev"]})
    index.set_state("commit:g/app:dev", {"commit": "c" * 40})  # overwrite
    index.set_state("gone", {"x": 1})
    index.set_state("gone", None)  # delete
    index.set_state("never-there", None)  # deleting a missing key is fine

    reopened = harness.reopen(index)
    assert reopened.get_state("commit:g/app:main") == {"commit": "a" * 40, "chunks": 12}
    assert reopened.get_state("commit:g/app:dev") == {"commit": "c" * 40}
    assert reopened.get_state("gone") is None
    assert reopened.list_state("commit:") == {
        "commit:g/app:main": {"commit": "a" * 40, "chunks": 12},
        "commit:g/app:dev": {"commit": "c" * 40},
    }
    assert set(reopened.list_state()) == {"commit:g/app:main", "commit:g/app:dev", "repo:g/app"}


def test_state_values_must_be_objects(index: VectorIndex) -> None:
    with pytest.raises(InputError):
        index.set_state("k", ["not", "a", "dict"])  # type: ignore[arg-type]


def test_state_is_not_shared_with_points(index: VectorIndex) -> None:
    index.set_state("repo:g/app", {"enabled": True})
    assert index.count() == 0
    assert list(index.scroll(SearchFilter())) == []


@pytest.mark.parametrize(
    "call",
    [
        lambda i: i.scroll(SearchFilter(repos="g/app")).__next__(),
        lambda i: i.count(SearchFilter(path_globs=[""])),
    ],
    ids=["repos-as-string", "empty-glob"],
)
def test_bad_filters_are_input_errors(index: VectorIndex, call: Callable[[Any], Any]) -> None:
    with pytest.raises(InputError):
        call(index)


def test_errors_are_coderag_errors(index: VectorIndex) -> None:
    """A library failure (wrong vector size) surfaces as IndexError_, never raw."""
    bad = IndexPoint(pid(1), [1.0, 0.0], SparseVec([], []), {"path": "a.py"})
    with pytest.raises(IndexError_) as info:
        index.upsert([bad])
    assert isinstance(info.value, CoderagError)
    assert info.value.__cause__ is not None
