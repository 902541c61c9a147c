"""Hostile repositories: every file of a tree built to hurt is indexed or skipped with a reason,
nothing outside the repository is ever read, and the service stays healthy.

The trees are real git repositories built with the git CLI: binary and oversized blobs,
invalid UTF-8, 10,000-level nesting, symlinks out of the repo (to a file holding a marker, and
to ``/etc/passwd``), names with ``..`` (legal: ``a..b.py``, ``..foo/``), names with control
characters and bytes that are not UTF-8 (``update-index --cacheinfo``), tree entries named
``..``, ``.`` and ``.git`` (``mktree``: git's own porcelain refuses them, its plumbing and its
transport do not), a 100 MB single-line file, an empty repository and one whose HEAD names a
branch that does not exist. They go through the paths the service uses: ``IndexService`` over
a ``GitSource``, the webhook -> embedded task path (mirror, incremental diff), a plain folder
(``DirSource``) and the ``coderag index`` command.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from coderag.errors import NotFoundError
from coderag.index import SearchFilter
from coderag.runtime import Runtime, build_runtime
from coderag.settings import Settings
from indexer.git import GitRepo
from indexer.service import IndexReport
from tests.api_support import running_server
from tests.conftest import git
from tests.ingest_support import Remote, payload

pytestmark = pytest.mark.integration

REPO = "grp/hostile"
OUTSIDE_MARKER = "outside_marker_9f3c1e7a"
"""Planted in a file outside every repository: reachable only by following a symlink."""
NESTING = 10_000


@dataclass(frozen=True, slots=True)
class Expect:
    """What must become of one path: ``indexed`` (and ``marker`` is in its chunks), or
    skipped with ``outcome`` as the reason."""

    path: str
    outcome: str
    marker: str = ""


@dataclass
class Hostile:
    """A built hostile repository: its head commit and what must become of each path."""

    work: Path
    sha: str
    expect: dict[str, Expect] = field(default_factory=dict)

    def add(self, path: str, outcome: str, marker: str = "") -> None:
        assert path not in self.expect, path
        self.expect[path] = Expect(path, outcome, marker)


def _write(root: Path, rel: str, data: bytes) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def _blob(work: Path, data: bytes) -> str:
    return (
        subprocess.run(
            ["git", "-C", str(work), "hash-object", "-w", "--stdin"],
            input=data,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )


def _nested(open_: str, close: str, head: str, tail: str = "") -> bytes:
    """``NESTING`` levels, one bracket per line (a single line would be "minified")."""
    return (head + open_ * NESTING + close * NESTING + tail).encode()


def build_hostile(work: Path, outside: Path) -> Hostile:
    """Commit the hostile tree on ``main`` of the (already initialised) repo ``work``."""
    outside.mkdir(parents=True, exist_ok=True)
    secret = outside / "secret.py"
    secret.write_text(f'TOKEN = "{OUTSIDE_MARKER}"\n')
    h = Hostile(work, "")
    rnd = os.urandom(6000)

    def put(rel: str, data: bytes, outcome: str, marker: str = "") -> None:
        _write(work, rel, data)
        h.add(rel, outcome, marker)

    # Indexed, whatever their names or bytes look like.
    put("src/plain.py", b'def plain_marker():\n    return "plain"\n', "indexed", "plain_marker")
    put("a..b.py", b"def a_dots_b_marker():\n    return 1\n", "indexed", "a_dots_b_marker")
    put("..foo/x.py", b"def dotdot_dir_marker():\n    return 2\n", "indexed", "dotdot_dir_marker")
    put(
        "bad_utf8.py",
        b'def bad_utf8_marker():\n    return "\xff\xfe broken \xc3("\n',
        "indexed",
        "bad_utf8_marker",
    )
    put("latin1.txt", b"caf\xe9 latin1_marker au lait\n", "indexed", "latin1_marker")
    put("deep_list.py", _nested("[\n", "]\n", "deep_list_marker = (\n", ")\n"), "indexed")
    put("deep.js", _nested("if (x) {\n", "}\n", "function deepJsMarker() {\n", "}\n"), "indexed")
    put("deep.c", _nested("{\n", "}\n", "int deep_c_marker(void) {\n", "return 0;}\n"), "indexed")
    put("deep.json", _nested("[\n", "]\n", '{"deep_json_marker":\n', "}\n"), "indexed")
    put(".gitignore", b"ignored_secret.py\n", "indexed", "ignored_secret.py")
    # Skipped, each with its reason.
    put("deep_line.py", _nested("[", "]", "x = "), "minified")
    put("huge.py", b"# big\n" + b"value = 12345\n" * 90_000, "too_large")
    put("assets/logo.png", rnd, "binary")
    put("blob_noext", b"\x00" + rnd, "binary")
    put("controls.txt", bytes(range(1, 8)) * 800, "binary")
    put("utf16.py", "def utf16_marker(): pass\n".encode("utf-16"), "binary")
    put("empty.py", b"", "empty")
    put("blank.py", b"  \n\t\n\n", "empty")
    put("vendor/lib.py", b"def vendored():\n    pass\n", "vendored")
    put("node_modules/left-pad/index.js", b"module.exports = 1;\n", "vendored")
    put("package-lock.json", b'{"lockfileVersion": 3}\n', "lockfile")
    put("app.min.js", b"var a=1;\n", "minified")
    put("api_pb2.py", b"X = 1\n", "generated")
    put(
        "gen_client.py",
        b"# Code generated by protoc-gen-go. DO NOT EDIT.\ndef gen():\n    pass\n",
        "generated",
    )
    put("__pycache__/m.cpython-311.pyc", rnd, "ignored")
    put("ignored_secret.py", b"def ignored_secret():\n    pass\n", "ignored")
    # Symlinks: out of the repo to a file with a marker, to /etc/passwd, to a directory
    # outside, to itself. Their targets are never read.
    for name, target in (
        ("link_out.py", str(secret)),
        ("passwd", "/etc/passwd"),
        ("outside_dir", str(outside)),
        ("loop", "loop"),
        ("up.py", "../../outside/secret.py"),
    ):
        os.symlink(target, work / name)
        h.add(name, "symlink")
    git(work, "add", "-A")
    git(work, "add", "-f", "ignored_secret.py", "__pycache__/m.cpython-311.pyc")

    # Names a working tree cannot (portably) hold: straight into the index.
    odd = _blob(work, b'def odd_name_marker():\n    return "odd"\n')
    for name in (
        "ctl\x01\x1b[31m.py",
        "new\nline.py",
        "tab\tname.py",
        "del\x7f.py",
        "c1\u009b.py",
        "dir\x1b/x.py",
        "caf\udce9.py",  # the byte 0xE9 (latin-1), not UTF-8: git keeps bytes, not text
    ):
        git(work, "update-index", "--add", "--cacheinfo", f"100644,{odd},{name}")
        h.add(name, "unsafe_path")
    # A submodule (a gitlink): never followed.
    git(work, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},sub")
    h.add("sub", "submodule")
    git(work, "commit", "-qm", "hostile")

    # Tree entries no checkout can have: '..', '.' and '.git', grafted with mktree.
    evil = _blob(work, f'def escape():\n    return "{OUTSIDE_MARKER}"\n'.encode())
    sub = git_input(work, ["mktree"], f"100644 blob {evil}\tescape.py\n")
    top = git(work, "ls-tree", "HEAD") + "\n"
    for name in ("..", ".", ".git"):
        top += f"040000 tree {sub}\t{name}\n"
    tree = git_input(work, ["mktree"], top)
    commit = git(work, "commit-tree", tree, "-p", "HEAD", "-m", "dot entries")
    git(work, "update-ref", "refs/heads/main", commit)
    h.add("../escape.py", "unsafe_path")
    h.add("./escape.py", "unsafe_path")
    h.add(".git/escape.py", "ignored")
    h.sha = commit
    return h


def git_input(cwd: Path, args: list[str], text: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], input=text, capture_output=True, text=True, check=True
    ).stdout.strip()


def chunks_by_path(rt: Runtime, repo: str, branch: str | None = None) -> dict[str, str]:
    """path -> all its chunk texts joined, as the index holds them."""
    out: dict[str, list[str]] = {}
    for _pid, p in rt.index.scroll(SearchFilter(repos=[repo], branch=branch)):
        out.setdefault(p["path"], []).append(p["text"])
    return {k: "\n".join(v) for k, v in out.items()}


def assert_outcomes(h: Hostile, report: IndexReport, indexed: dict[str, str]) -> None:
    """Each expected path indexed (with its marker) or skipped with its reason, and every
    path of the tree is one or the other: nothing silently dropped."""
    skipped = {s.path: s for s in report.skipped}
    for e in h.expect.values():
        if e.outcome == "indexed":
            assert e.path in indexed, f"{e.path!a} not indexed (skipped: {skipped.get(e.path)})"
            assert e.marker in indexed[e.path]
            assert e.path not in skipped
        else:
            got = skipped.get(e.path)
            assert got is not None, f"{e.path!a} neither skipped nor reported"
            assert got.reason == e.outcome, (e.path, got)
            assert e.path not in indexed
    tree = {t.path for t in GitRepo(h.work).ls_tree(report.commit)}
    assert tree == set(h.expect), f"tree has unexpected paths: {tree ^ set(h.expect)}"
    assert set(indexed).isdisjoint(skipped)


def assert_safe_index(rt: Runtime, repo: str) -> None:
    """Nothing outside the repo and no unsafe path made it into any point."""
    passwd = Path("/etc/passwd")
    passwd_line = passwd.read_text().splitlines()[0] if passwd.is_file() else "root:x:0:0:"
    for _pid, p in rt.index.scroll(SearchFilter(repos=[repo])):
        assert OUTSIDE_MARKER not in p["text"], p["path"]
        assert passwd_line not in p["text"], p["path"]
        path = p["path"]
        assert path.encode("utf-8")  # storable and servable as JSON
        assert not any(c < " " or "\x7f" <= c <= "\x9f" for c in path), ascii(path)
        assert ".." not in path.split("/") and "." not in path.split("/")


def settings_for(root: Path, model_dir: Path, **kw: Any) -> Settings:
    return Settings(
        data_dir=root,
        index_backend="edge",
        model_export_dir=model_dir,
        log_json=False,
        log_level="WARNING",
        **kw,
    )


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    root = tmp_path_factory.mktemp("hostile")
    work = root / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    return build_hostile(work, root / "outside")


@pytest.fixture(scope="module")
def rt(
    tmp_path_factory: pytest.TempPathFactory, embedder: Any, model_dir: Path
) -> Iterator[Runtime]:
    runtime = build_runtime(settings_for(tmp_path_factory.mktemp("data"), model_dir))
    runtime.embedder = runtime.indexer.embedder = runtime.retriever.embedder = embedder
    runtime.warm_up()
    yield runtime
    runtime.close()


# --- GitSource ---------------------------------------------------------------------------------


def test_every_file_of_a_hostile_tree_is_indexed_or_skipped_with_its_reason(
    hostile: Hostile, rt: Runtime
):
    report = rt.indexer.index(hostile.work, REPO, "main")
    assert report.commit == hostile.sha and report.mode == "full"
    indexed = chunks_by_path(rt, REPO, "main")
    assert_outcomes(hostile, report, indexed)
    assert_safe_index(rt, REPO)
    # Invalid UTF-8 is indexed with replacement characters, never a crash.
    assert "\ufffd" in indexed["bad_utf8.py"]
    # 10,000 levels of nesting: the AST gives up at its depth cap, line windows cover it all.
    assert report.fallbacks >= 3
    for path in ("deep_list.py", "deep.js", "deep.c"):
        data = GitRepo(hostile.work).read_file(report.commit, path)
        result = rt.chunker.chunk(path, data)
        assert result.fallback is not None and "nesting deeper than" in result.fallback
        assert result.chunks[-1].end_line >= 2 * NESTING  # nothing cut off the end
    # Unsafe names carry an escaped, loggable detail.
    unsafe = [s for s in report.skipped if s.reason == "unsafe_path"]
    assert unsafe and all(s.detail.isascii() and "\n" not in s.detail for s in unsafe)
    # Re-running is a no-op, not a second pass over the bad files.
    assert rt.indexer.index(hostile.work, REPO, "main").mode == "noop"


def test_empty_repo_and_dangling_head_are_clear_errors(tmp_path: Path, rt: Runtime):
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    with pytest.raises(NotFoundError, match="has no commits yet"):
        rt.indexer.index(empty, "grp/empty", "main")

    dangling = tmp_path / "dangling"
    dangling.mkdir()
    git(dangling, "init", "-q", "-b", "main")
    (dangling / "a.py").write_text("def a():\n    return 1\n")
    git(dangling, "add", "-A")
    git(dangling, "commit", "-qm", "a")
    git(dangling, "branch", "-q", "release")
    git(dangling, "symbolic-ref", "HEAD", "refs/heads/gone")
    with pytest.raises(NotFoundError, match=r"HEAD points to 'gone'.*main, release"):
        rt.indexer.index(dangling, "grp/dangling", "gone")
    # Its real branches still index.
    assert rt.indexer.index(dangling, "grp/dangling", "main").files_indexed == 1
    # A commit that does not exist is the caller's error too, with the revision named.
    with pytest.raises(NotFoundError, match="deadbeef"):
        rt.indexer.index(dangling, "grp/dangling", "main", "deadbeef")


def test_the_index_command_reports_them_without_a_traceback(
    tmp_path: Path,
    model_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):
    from coderag import cli

    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    dangling = tmp_path / "dangling"
    dangling.mkdir()
    git(dangling, "init", "-q", "-b", "main")
    (dangling / "a.py").write_text("x = 1\n")
    git(dangling, "add", "-A")
    git(dangling, "commit", "-qm", "a")
    git(dangling, "symbolic-ref", "HEAD", "refs/heads/gone")
    monkeypatch.setenv("CODERAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CODERAG_MODEL_EXPORT_DIR", str(model_dir))
    for repo, expected in ((empty, "has no commits yet"), (dangling, "HEAD points to 'gone'")):
        monkeypatch.setattr(sys, "argv", ["coderag", "index", str(repo), "--repo", "grp/x"])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        assert exited.value.code == 1
        stderr = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
        assert "error (not_found)" in stderr and expected in stderr
        assert "Traceback" not in stderr


def test_a_100_mb_single_line_file_is_skipped_unread(
    tmp_path: Path, rt: Runtime, monkeypatch: pytest.MonkeyPatch
):
    work = tmp_path / "big"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    with open(work / "one_line.js", "wb") as fh:
        block = b"var a=1;" * 131_072  # 1 MiB, no newline anywhere
        for _ in range(100):
            fh.write(block)
    (work / "small.py").write_text("def small_marker():\n    return 1\n")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "big")
    (work / "one_line.js").unlink()  # the blob lives on in .git; free the disk copy
    big_sha = git(work, "rev-parse", "HEAD:one_line.js")
    assert int(git(work, "cat-file", "-s", big_sha)) == 100 * 1024 * 1024

    asked: list[str] = []
    real_read = GitRepo.read_blobs

    def spy(self: GitRepo, shas: Any) -> Any:
        asked.extend(shas)
        return real_read(self, shas)

    monkeypatch.setattr(GitRepo, "read_blobs", spy)
    tracemalloc.start()
    try:
        report = rt.indexer.index(work, "grp/big", "main")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    skipped = {s.path: s for s in report.skipped}
    assert skipped["one_line.js"].reason == "too_large"
    assert str(100 * 1024 * 1024) in skipped["one_line.js"].detail
    assert big_sha not in asked  # decided on the tree's blob size, never read
    assert peak < 50 * 1024 * 1024, f"peak Python allocations {peak / 2**20:.0f} MiB"
    assert set(chunks_by_path(rt, "grp/big")) == {"small.py"}
    print(
        f"\nHOSTILE-FIGURE 100mb_single_line seconds={report.seconds:.2f} "
        f"peak_alloc_mib={peak / 2**20:.1f} "
        f"maxrss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
    )


# --- a plain folder ------------------------------------------------------------------------------


def test_a_plain_folder_with_hostile_names_and_links(tmp_path: Path, rt: Runtime):
    root = tmp_path / "folder"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text(f'TOKEN = "{OUTSIDE_MARKER}"\n')
    root.mkdir()
    (root / "ok.py").write_text("def folder_ok_marker():\n    return 1\n")
    for raw in (b"caf\xe9.py", b"new\nline.py", b"esc\x1b[2J.py"):
        with open(os.path.join(os.fsencode(root), raw), "wb") as fh:
            fh.write(b"def odd():\n    return 2\n")
    os.symlink(outside / "secret.py", root / "link.py")
    os.symlink(outside, root / "linked_dir")
    report = rt.indexer.index(root, "grp/folder", "main")
    reasons = {s.path: s.reason for s in report.skipped}
    assert reasons["link.py"] == "symlink" and reasons["linked_dir"] == "symlink"
    assert [r for r in reasons.values() if r == "unsafe_path"] == ["unsafe_path"] * 3
    assert set(chunks_by_path(rt, "grp/folder")) == {"ok.py"}
    assert_safe_index(rt, "grp/folder")


# --- the webhook -> task path, and the API afterwards --------------------------------------------


def test_a_hostile_push_through_the_webhook_leaves_the_service_healthy(
    tmp_path: Path, embedder: Any, model_dir: Path
):
    from coderag.api import create_app

    remote = Remote(tmp_path / "git")
    remote.commit({"src/start.py": "def start_marker():\n    return 0\n"})
    remote.push("main")
    settings = settings_for(tmp_path / "data", model_dir, push_debounce_seconds=0.0)
    runtime = build_runtime(settings)
    runtime.embedder = runtime.indexer.embedder = runtime.retriever.embedder = embedder
    try:
        with (
            running_server(create_app(settings, runtime=runtime)) as url,
            httpx.Client(base_url=url, timeout=30, trust_env=False) as http,
        ):
            created = http.post(
                "/v1/repos", json={"url": str(remote.bare), "id": REPO, "branches": ["main"]}
            )
            assert created.status_code == 201, created.text
            secret = created.json()["secret"]
            first = remote.push("main")
            _wait_indexed(http, first)

            # The push: the whole hostile tree (names, links, '..' entries) in one commit,
            # indexed incrementally from the mirror.
            h = build_hostile(remote.work, tmp_path / "outside")
            h.add("src/start.py", "indexed", "start_marker")
            remote.push("main")
            body = payload(
                "push",
                repo=REPO,
                clone_url=str(remote.bare),
                before=first,
                after=h.sha,
                ref="refs/heads/main",
            )
            resp = http.post(
                "/v1/webhooks/gitlab",
                json=body,
                headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret},
            )
            assert resp.status_code == 202 and resp.json()["status"] == "accepted", resp.text
            status = _wait_indexed(http, h.sha)
            assert status["last_error"] is None
            indexed = chunks_by_path(runtime, REPO, "main")
            for e in h.expect.values():
                assert (e.path in indexed) == (e.outcome == "indexed"), e
                if e.outcome == "indexed":
                    assert e.marker in indexed[e.path]
            assert_safe_index(runtime, REPO)

            # A later push deletes the odd names again: the diff names them, nothing breaks.
            # (``add -A`` also drops the names that only ever lived in the git index.)
            remote.work.joinpath("src/plain.py").unlink()
            git(remote.work, "add", "-A")
            git(remote.work, "commit", "-qm", "clean up")
            after = remote.push("main")
            body = payload(
                "push",
                repo=REPO,
                clone_url=str(remote.bare),
                before=h.sha,
                after=after,
                ref="refs/heads/main",
            )
            headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret}
            assert http.post("/v1/webhooks/gitlab", json=body, headers=headers).status_code == 202
            assert _wait_indexed(http, after)["last_error"] is None
            assert "src/plain.py" not in chunks_by_path(runtime, REPO, "main")

            # Still healthy, and search serves only safe paths of the repository.
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").status_code == 200
            for query in (OUTSIDE_MARKER, "odd_name_marker", "escape", "deep nesting marker"):
                found = http.post("/v1/search", json={"query": query, "k": 50})
                assert found.status_code == 200, found.text
                for r in found.json()["results"]:
                    assert OUTSIDE_MARKER not in r["text"]
                    assert r["path"].isprintable() and ".." not in r["path"].split("/")
            ctx = http.post("/v1/continue/context", json={"fullInput": "deep_list_marker"})
            assert ctx.status_code == 200 and ctx.json()
    finally:
        runtime.close()


def _wait_indexed(http: httpx.Client, sha: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        resp = http.get(f"/v1/repos/{REPO}/status")
        if resp.status_code == 200:
            st = resp.json()
            branch = {b["branch"]: b for b in st["branches"]}.get("main")
            if branch and branch["commit"] == sha:
                return st
            if st.get("last_error"):
                raise AssertionError(f"indexing failed: {st['last_error']}")
        assert time.monotonic() < deadline, f"{sha} not indexed in {timeout}s: {resp.text}"
        time.sleep(0.1)
