"""Indexing a real git repository, built by the test, into a real on-disk index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coderag.index import SearchFilter, branch_state_key
from coderag.runtime import Runtime, build_runtime
from coderag.settings import Settings
from tests.conftest import git

pytestmark = pytest.mark.integration

SESSION_PY = '''"""HTTP sessions."""

import os


class Session:
    """Keeps cookies and connection pools across requests."""

    def __init__(self):
        self.cookies = {}

    def request(self, method, url):
        """Send one HTTP request and return the response."""
        return (method, url)


def merge_settings(a, b):
    """Merge two settings dicts, b wins."""
    out = dict(a)
    out.update(b)
    return out
'''

UTILS_PY = '''def parse_header_links(value):
    """Parse a Link header into a list of dicts with url and rel."""
    links = []
    for part in value.split(","):
        url, _, params = part.partition(";")
        links.append({"url": url.strip("<> "), "rel": params})
    return links


def levenshtein_distance(a, b):
    """Edit distance between two strings, by dynamic programming."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]
'''

README_MD = "# Demo\n\nA tiny demo repository.\n\n## Usage\n\nImport the session module.\n"


def _commit(repo: Path, msg: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", msg)
    return git(repo, "rev-parse", "HEAD")


def _write(repo: Path, rel: str, text: str | bytes) -> None:
    p = repo / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)


@pytest.fixture
def demo_repo(git_repo: Path) -> Path:
    _write(git_repo, "src/demo/sessions.py", SESSION_PY)
    _write(git_repo, "src/demo/utils.py", UTILS_PY)
    _write(git_repo, "README.md", README_MD)
    _write(git_repo, "node_modules/lib/index.js", "module.exports = 1;\n")
    _write(git_repo, "package-lock.json", "{}\n")
    _write(git_repo, "logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00binary")
    _commit(git_repo, "initial")
    return git_repo


def _runtime(tmp_path: Path, embedder: Any, name: str = "data") -> Runtime:
    settings = Settings(data_dir=tmp_path / name, index_backend="edge")
    rt = build_runtime(settings)
    rt.embedder = embedder  # share the session's warmed model
    rt.indexer.embedder = embedder
    rt.retriever.embedder = embedder
    return rt


def _snapshot(rt: Runtime, repo: str) -> dict[str, dict[str, Any]]:
    """Every point of ``repo``: id -> payload (branches sorted). What 'equal index' means."""
    out = {}
    for pid, payload in rt.index.scroll(SearchFilter(repos=[repo])):
        p = dict(payload)
        p["branches"] = sorted(p.get("branches") or [])
        p.pop("commit", None)  # first-seen commit depends on history, not on content
        out[pid] = p
    return out


def assert_equals_fresh(rt: Runtime, tmp_path: Path, embedder: Any, repo: Path, commit: str):
    """``rt``'s grp/demo holds exactly what a fresh index of ``commit`` holds."""
    fresh = _runtime(tmp_path, embedder, "fresh")
    try:
        fresh.indexer.index(repo, "grp/demo", "main", commit)
        assert _snapshot(fresh, "grp/demo") == _snapshot(rt, "grp/demo")
    finally:
        fresh.close()


@pytest.fixture
def rt(tmp_path: Path, embedder: Any):  # type: ignore[no-untyped-def]
    runtime = _runtime(tmp_path, embedder)
    yield runtime
    runtime.close()


def test_full_index_and_search_by_description_identifier_and_path(rt: Runtime, demo_repo: Path):
    from prometheus_client import REGISTRY

    embedded_before = REGISTRY.get_sample_value("coderag_chunks_embedded_total") or 0.0
    report = rt.indexer.index(demo_repo, "grp/demo", "main")
    embedded_after = REGISTRY.get_sample_value("coderag_chunks_embedded_total") or 0.0
    assert embedded_after - embedded_before == report.chunks_embedded
    assert report.mode == "full"
    assert report.files_indexed == 3  # two .py and README.md
    reasons = report.skipped_by_reason()
    assert reasons.get("vendored", 0) >= 1
    assert reasons.get("lockfile", 0) == 1
    assert reasons.get("binary", 0) == 1
    assert report.chunks_embedded == report.chunks_written > 0

    by_desc = rt.retriever.search("edit distance between two strings", repos=["grp/demo"], k=3)
    assert by_desc[0].symbol == "levenshtein_distance"
    by_ident = rt.retriever.search("parse_header_links", repos=["grp/demo"], k=3)
    assert by_ident[0].symbol == "parse_header_links"
    by_path = rt.retriever.search("src/demo/sessions.py", repos=["grp/demo"], k=3)
    assert by_path[0].path == "src/demo/sessions.py"
    # a small class stays whole (cAST merges small siblings), so the method is in it
    method = rt.retriever.search("send one http request", repos=["grp/demo"], k=1)[0]
    assert method.symbol in ("Session", "Session.request")
    assert method.start_line <= 12 and method.end_line >= 14


def test_rerun_is_noop(rt: Runtime, demo_repo: Path):
    rt.indexer.index(demo_repo, "grp/demo", "main")
    again = rt.indexer.index(demo_repo, "grp/demo", "main")
    assert again.mode == "noop"
    assert again.chunks_embedded == 0


def test_incremental_add_modify_delete_rename(
    rt: Runtime, demo_repo: Path, tmp_path: Path, embedder: Any
):
    rt.indexer.index(demo_repo, "grp/demo", "main")
    # modify one function, add a file, delete a file, rename a file
    _write(
        demo_repo,
        "src/demo/utils.py",
        UTILS_PY.replace("Edit distance", "Levenshtein edit distance"),
    )
    _write(demo_repo, "src/demo/new.py", "def brand_new_helper():\n    return 42\n")
    git(demo_repo, "rm", "-q", "README.md")
    git(demo_repo, "mv", "src/demo/sessions.py", "src/demo/session.py")
    head = _commit(demo_repo, "change things")

    report = rt.indexer.index(demo_repo, "grp/demo", "main")
    assert report.mode == "incremental"
    # only the changed function, the new file and the renamed file's chunks are embedded
    # (a rename changes the embedded header, so its chunks are embedded again)
    session_chunks = len([1 for _ in rt.index.scroll(SearchFilter(paths=["src/demo/session.py"]))])
    assert 0 < report.chunks_embedded <= 1 + 1 + session_chunks
    paths = {p["path"] for p in _snapshot(rt, "grp/demo").values()}
    assert "README.md" not in paths and "src/demo/sessions.py" not in paths
    assert {"src/demo/session.py", "src/demo/new.py", "src/demo/utils.py"} <= paths
    assert all(p["commit"] for _, p in rt.index.scroll(SearchFilter(repos=["grp/demo"])))

    # the incremental result equals a fresh full index of the same commit
    assert_equals_fresh(rt, tmp_path, embedder, demo_repo, head)


def test_branches_share_chunks_and_branch_delete(rt: Runtime, demo_repo: Path):
    rt.indexer.index(demo_repo, "grp/demo", "main")
    n_main = rt.index.count(SearchFilter(repos=["grp/demo"]))
    git(demo_repo, "checkout", "-q", "-b", "feature")
    _write(
        demo_repo,
        "src/demo/feature.py",
        "def feature_flag_enabled(name):\n    return name in FLAGS\n",
    )
    _commit(demo_repo, "feature")

    report = rt.indexer.index(demo_repo, "grp/demo", "feature")
    assert report.chunks_embedded == 1  # only the new file's chunk; the rest is linked
    assert report.chunks_linked == n_main
    assert rt.index.count(SearchFilter(repos=["grp/demo"])) == n_main + 1

    only_main = rt.retriever.search("feature_flag_enabled", repos=["grp/demo"], branch="main", k=5)
    assert all(h.path != "src/demo/feature.py" for h in only_main)
    on_feature = rt.retriever.search(
        "feature_flag_enabled", repos=["grp/demo"], branch="feature", k=5
    )
    assert on_feature[0].path == "src/demo/feature.py"

    removed = rt.indexer.delete_branch("grp/demo", "feature")
    assert removed == 1
    assert rt.index.count(SearchFilter(repos=["grp/demo"])) == n_main
    assert rt.index.count(SearchFilter(repos=["grp/demo"], branch="feature")) == 0
    assert rt.index.count(SearchFilter(repos=["grp/demo"], branch="main")) == n_main


def test_interrupted_run_converges(rt: Runtime, demo_repo: Path, tmp_path: Path, embedder: Any):
    rt.indexer.index(demo_repo, "grp/demo", "main")
    _write(
        demo_repo,
        "src/demo/more.py",
        "".join(
            f"def helper_{i}(x):\n    '''Helper number {i}.'''\n    return x * {i}\n\n\n"
            for i in range(40)
        ),
    )
    git(demo_repo, "rm", "-q", "src/demo/utils.py")
    head = _commit(demo_repo, "more")

    real_upsert = rt.index.upsert
    calls = {"n": 0}

    def failing_upsert(points):  # a crash after the first batch reached the index
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("simulated crash")
        real_upsert(points)

    rt.indexer.write_batch = 8
    rt.index.upsert = failing_upsert  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        rt.indexer.index(demo_repo, "grp/demo", "main")
    rt.index.upsert = real_upsert  # type: ignore[method-assign]
    assert rt.indexer.indexed_commit("grp/demo", "main") != head

    report = rt.indexer.index(demo_repo, "grp/demo", "main")
    assert report.mode == "incremental"
    assert_equals_fresh(rt, tmp_path, embedder, demo_repo, head)


def _run_that_dies(rt: Runtime, *args: Any) -> None:
    """Index, dying once the chunks are written and before the state is: what a SIGKILL
    between the upserts and the state write leaves behind."""

    def crash(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("simulated crash")

    rt.indexer._unlink = crash  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            rt.indexer.index(*args)
    finally:
        del rt.indexer._unlink  # the class's method again


def test_a_run_that_died_is_cleaned_up_by_the_next_run_to_any_commit(
    rt: Runtime, demo_repo: Path, tmp_path: Path, embedder: Any
):
    """A run killed after writing leaves points of a commit the branch never reached. The
    next run may go elsewhere (a rewind, a force-push, a push that reverts the change, an
    eval walking base commits): the paths the dead run had in scope are reconciled too, so
    the index ends as a fresh index of that commit. (Seen before this: an interrupted eval
    left such points, and later rankings differed from a fresh run's.)"""
    base = rt.indexer.index(demo_repo, "grp/demo", "main").commit
    _write(demo_repo, "src/demo/ghost.py", "def ghost_feature(x):\n    return x + 1\n")
    _write(demo_repo, "src/demo/utils.py", UTILS_PY + "\n\ndef only_in_c1():\n    return 1\n")
    c1 = _commit(demo_repo, "c1")
    _run_that_dies(rt, demo_repo, "grp/demo", "main", c1)
    assert rt.indexer.indexed_commit("grp/demo", "main") == base

    # Back to the commit the state holds: not a no-op any more, the dead run's points go.
    report = rt.indexer.index(demo_repo, "grp/demo", "main", base)
    assert report.mode == "incremental"
    paths = {p["path"] for _, p in rt.index.scroll(SearchFilter(repos=["grp/demo"]))}
    assert "src/demo/ghost.py" not in paths
    assert_equals_fresh(rt, tmp_path, embedder, demo_repo, base)
    assert "pending" not in rt.index.get_state(branch_state_key("grp/demo", "main"))
    assert rt.indexer.index(demo_repo, "grp/demo", "main", base).mode == "noop"


def test_a_full_run_that_died_makes_the_next_run_full(
    rt: Runtime, demo_repo: Path, tmp_path: Path, embedder: Any
):
    first = git(demo_repo, "rev-parse", "HEAD")
    _run_that_dies(rt, demo_repo, "grp/demo", "main")  # a first run: full
    state = rt.index.get_state(branch_state_key("grp/demo", "main"))
    assert state["pending"]["paths"] is None and "commit" not in state
    assert rt.indexer.indexed_commit("grp/demo", "main") is None
    report = rt.indexer.index(demo_repo, "grp/demo", "main", first)
    assert report.mode == "full"
    assert_equals_fresh(rt, tmp_path, embedder, demo_repo, first)


def test_plain_directory_and_server_backend(tmp_path: Path, embedder: Any):
    """The server backend (qdrant-client local mode as the stand-in) runs the same path."""
    from qdrant_client import QdrantClient

    from coderag.index.server import ServerIndex

    folder = tmp_path / "plain"
    _write(folder, "pkg/utils.py", UTILS_PY)
    settings = Settings(data_dir=tmp_path / "srv")
    index = ServerIndex(client=QdrantClient(path=str(tmp_path / "qdrant-local")), collection="t")
    rt = build_runtime(settings, index=index)
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    try:
        report = rt.indexer.index(folder, "local/plain", "main")
        assert report.mode == "full" and report.chunks_written >= 2
        assert rt.indexer.index(folder, "local/plain", "main").mode == "noop"
        hits = rt.retriever.search("edit distance of strings", repos=["local/plain"], k=2)
        assert hits[0].symbol == "levenshtein_distance"
        assert rt.indexer.delete_repo("local/plain") >= 2
        assert rt.index.count(SearchFilter(repos=["local/plain"])) == 0
    finally:
        rt.close()


def test_bad_source_is_a_clear_error(rt: Runtime, tmp_path: Path):
    from coderag.errors import InputError, NotFoundError

    with pytest.raises(InputError, match="does not exist"):
        rt.indexer.index(tmp_path / "nope", "x/y")
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    _write(repo, "a.py", "x = 1\n")
    _commit(repo, "one")
    with pytest.raises(NotFoundError):
        rt.indexer.index(repo, "x/y", "main", commit="deadbeef" * 5)
