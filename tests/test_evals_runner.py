"""Dataset loaders, the history builder, the runners' bookkeeping, compare and the CLI.

The runners are exercised here on a *fake* runtime (a word-overlap retriever over what the
fake indexer read), so skipping, ordering, id mapping and the report are checked in
milliseconds; tests/test_evals_pipeline.py runs them on the real pipeline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from coderag.errors import InputError
from coderag.index import SearchFilter
from coderag.models import Hit
from evals import cli as eval_cli
from evals.beir import load_beir, materialise, run_beir
from evals.compare import compare
from evals.harness import eval_settings
from evals.history import build_history, clean_message, is_bot, is_revert, run_history
from evals.metrics import METRIC_NAMES
from evals.swebench import (
    EVAL_BRANCH,
    Instance,
    dataset_name,
    function_gold,
    load_instances,
    parse_repo_map,
    rank_files,
    rank_functions,
    run_instances,
    run_instances_modes,
    symbol_matches,
)
from tests.conftest import DATA

COSQA = DATA / "cosqa-dev-slice"
SWEBENCH = DATA / "swebench-dev" / "instances.jsonl"


# ------------------------------------------------------------------------------ git helpers
def git(
    repo: Path, *args: str, when: int = 1_700_000_000, author: str = "Dev <dev@example.com>"
) -> str:
    name, _, email = author.partition(" <")
    stamp = f"@{when} +0000"
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email.rstrip(">"),
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email.rstrip(">"),
        "GIT_AUTHOR_DATE": stamp,
        "GIT_COMMITTER_DATE": stamp,
    }
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    )
    return proc.stdout.strip()


def commit(repo: Path, files: dict[str, str | None], msg: str, when: int, **kw: Any) -> str:
    """Write (or, for None, delete) files and commit them all; returns the sha."""
    for rel, text in files.items():
        p = repo / rel
        if text is None:
            p.unlink()
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", msg, when=when, **kw)
    return git(repo, "rev-parse", "HEAD")


def new_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    return path


# ------------------------------------------------------------------------------ fake runtime
_WORD = re.compile(r"[a-z]+")
_DEF = re.compile(r"^(?:class|def)\s+(\w+)")


def _chunks(text: str) -> list[tuple[str, int, int, str]]:
    """(symbol, start, end, text): one chunk per top-level def/class, one for the lines
    before the first (symbol '')."""
    lines = text.splitlines()
    heads = [(i, m.group(1)) for i, ln in enumerate(lines) if (m := _DEF.match(ln))]
    if not heads or heads[0][0] > 0:
        heads.insert(0, (0, ""))
    out = []
    for n, (start, sym) in enumerate(heads):
        end = heads[n + 1][0] if n + 1 < len(heads) else len(lines)
        body = "\n".join(lines[start:end])
        if body.strip():
            out.append((sym, start + 1, end, body))
    return out


@dataclass
class FakeIndex:
    chunks: dict[str, list[Hit]] = field(default_factory=dict)  # repo -> chunks

    def count(self, flt: SearchFilter | None = None) -> int:
        repos = (flt.repos if flt and flt.repos else None) or list(self.chunks)
        return sum(len(self.chunks.get(r, [])) for r in repos)

    def scroll(self, flt: SearchFilter, fields: Any = None) -> Iterator[tuple[str, dict[str, Any]]]:
        for repo in flt.repos or list(self.chunks):
            for h in self.chunks.get(repo, []):
                if flt.paths is None or h.path in flt.paths:
                    yield h.id, {"path": h.path, "symbol": h.symbol}


@dataclass
class FakeIndexer:
    index_: FakeIndex
    calls: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    state: dict[tuple[str, str], str] = field(default_factory=dict)

    def index(
        self,
        source: Path | str,
        repo: str,
        branch: str = "main",
        commit: str | None = None,
        progress: Any = None,
    ) -> Any:
        path = Path(source)
        files: dict[str, str] = {}
        if (path / ".git").exists():
            rev = commit or "HEAD"
            for rel in git(path, "ls-tree", "-r", "--name-only", rev).splitlines():
                files[rel] = git(path, "show", f"{rev}:{rel}")
        else:
            for p in sorted(path.rglob("*")):
                if p.is_file():
                    files[p.relative_to(path).as_posix()] = p.read_text()
        mode = "incremental" if (repo, branch) in self.state else "full"
        self.state[(repo, branch)] = commit or ""
        self.calls.append((repo, branch, commit, mode))
        self.index_.chunks[repo] = [
            Hit(f"{rel}:{a}", 0.0, repo, rel, "python", a, b, body, symbol=sym)
            for rel, text in files.items()
            for sym, a, b, body in _chunks(text)
        ]
        if progress:
            progress("read", len(files), len(files))
        return SimpleNamespace(seconds=0.5, mode=mode)


@dataclass
class FakeRetriever:
    index_: FakeIndex
    searches: list[dict[str, Any]] = field(default_factory=list)

    def search(
        self,
        query: str,
        *,
        repos: list[str],
        k: int = 10,
        mode: str = "hybrid",
        max_per_file: int | None = None,
        branch: str | None = None,
    ) -> list[Hit]:
        self.searches.append(
            {"repos": repos, "k": k, "mode": mode, "branch": branch, "max_per_file": max_per_file}
        )
        words = set(_WORD.findall(query.lower()))
        scored = []
        for repo in repos:
            for h in self.index_.chunks.get(repo, []):
                s = len(words & set(_WORD.findall(h.text.lower())))
                if s:
                    scored.append(
                        Hit(
                            h.id,
                            float(s),
                            h.repo,
                            h.path,
                            h.language,
                            h.start_line,
                            h.end_line,
                            h.text,
                            symbol=h.symbol,
                        )
                    )
        scored.sort(key=lambda h: -h.score)
        per: dict[str, int] = {}
        out = []
        for h in scored:
            if per.get(h.path, 0) < (max_per_file or 2):
                per[h.path] = per.get(h.path, 0) + 1
                out.append(h)
        return out[:k]


def fake_runtime() -> Any:
    idx = FakeIndex()
    # model / embedder.model_id: what the CLI writes into each report's "model" block
    return SimpleNamespace(
        index=idx,
        indexer=FakeIndexer(idx),
        retriever=FakeRetriever(idx),
        model="default",
        embedder=SimpleNamespace(model_id="fake@0"),
    )


# ------------------------------------------------------------------------------ BEIR
def write_beir(
    d: Path, corpus: dict[str, str], queries: dict[str, str], qrels: list[tuple[str, str, int]]
) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in corpus.items())
    )
    (d / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items())
    )
    (d / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{c}\t{s}\n" for q, c, s in qrels)
    )
    return d


TOY_CORPUS = {
    "c0": "def read_json(path):\n    return json.load(open(path))\n",
    "c1": "def reverse_list(xs):\n    return xs[::-1]\n",
    "c2": "def sum_squares(xs):\n    return sum(x * x for x in xs)\n",
    "c3": "def read_csv_rows(path):\n    return list(csv.reader(open(path)))\n",
}
TOY_QUERIES = {
    "q0": "how to read json from a path",
    "q1": "python reverse a list",
    "q2": "no judgement for this one",
    "q3": "sum of squares of xs",
    "q4": "points at a missing document",
}
TOY_QRELS = [("q0", "c0", 1), ("q1", "c1", 1), ("q2", "c2", 0), ("q3", "c2", 1), ("q4", "c99", 1)]


def test_load_beir(tmp_path: Path) -> None:
    ds = load_beir(write_beir(tmp_path / "toy", TOY_CORPUS, TOY_QUERIES, TOY_QRELS))
    assert ds.name == "toy"
    assert ds.corpus["c1"].startswith("def reverse_list")
    assert [q for q, _ in ds.queries] == ["q0", "q1", "q2", "q3", "q4"]
    assert ds.qrels == {"q0": {"c0"}, "q1": {"c1"}, "q3": {"c2"}, "q4": {"c99"}}  # score 0 dropped
    (tmp_path / "toy" / "qrels.tsv").unlink()
    with pytest.raises(InputError, match=r"qrels\.tsv"):
        load_beir(tmp_path / "toy")


def test_materialise_maps_paths_back_to_ids(tmp_path: Path) -> None:
    paths = materialise({"c1": "x = 1\n", "a/b": "y = 2\n", "../evil": "z\n"}, tmp_path, "py")
    assert paths["c1.py"] == "c1"
    assert sorted(paths.values()) == ["../evil", "a/b", "c1"]
    assert all((tmp_path / p).is_file() and "/" not in p for p in paths)
    assert not (tmp_path.parent / "evil.py").exists()


def test_run_beir_on_fake_runtime(tmp_path: Path) -> None:
    ds = load_beir(write_beir(tmp_path / "toy", TOY_CORPUS, TOY_QUERIES, TOY_QRELS))
    rt = fake_runtime()
    report = run_beir(rt, ds, mode="lexical", per_query=True)
    assert report["dataset"] == "toy" and report["mode"] == "lexical"
    assert report["n_queries"] == 3
    assert [s["id"] for s in report["skipped"]] == ["q2", "q4"]
    assert report["metrics"]["acc@1"] == 100.0
    assert report["index"]["chunks"] == 4
    assert [q["top"][0] for q in report["per_query"]] == ["c0", "c1", "c2"]
    # indexed as a plain directory of id-named files, searched for 100 distinct files
    repo, branch, _, _ = rt.indexer.calls[0]
    assert (repo, branch) == ("beir/toy", "main")
    assert rt.retriever.searches[0] == {
        "repos": ["beir/toy"], "k": 100, "mode": "lexical", "branch": None, "max_per_file": 1,
    }  # fmt: skip


def test_beir_limit_cuts_queries_never_the_corpus(tmp_path: Path) -> None:
    ds = load_beir(write_beir(tmp_path / "toy", TOY_CORPUS, TOY_QUERIES, TOY_QRELS))
    rt = fake_runtime()
    report = run_beir(rt, ds, mode="dense", limit=2)
    assert report["n_queries"] == 2
    assert report["index"]["chunks"] == len(TOY_CORPUS)
    with pytest.raises(InputError):
        run_beir(rt, ds, limit=0)
    with pytest.raises(InputError):
        run_beir(rt, ds, mode="bm25")


def test_load_cosqa_dev() -> None:
    """The committed slice of CoSQA-dev (its first 120 queries, the first 1,000 snippets of
    the 6,267 and the 88 other gold snippets) loads in the BEIR layout."""
    ds = load_beir(COSQA)
    assert len(ds.corpus) == 1088
    assert len(ds.queries) == 120
    assert all(len(ds.qrels[q]) == 1 and ds.qrels[q] <= ds.corpus.keys() for q, _ in ds.queries)


# ------------------------------------------------------------------------------ SWE-bench
def test_load_swebench_dev() -> None:
    instances = load_instances(SWEBENCH)
    assert len(instances) == 23
    assert dataset_name(SWEBENCH) == "swebench-dev"
    by_id = {i.instance_id: i for i in instances}
    flask = by_id["pallets__flask-4045"]
    assert flask.repo == "pallets/flask" and flask.gold_files == ("src/flask/blueprints.py",)
    assert function_gold(flask) == [
        "src/flask/blueprints.py::Blueprint", "src/flask/blueprints.py::Blueprint.add_url_rule",
    ]  # fmt: skip
    # module-level spans are not symbols
    assert function_gold(by_id["psf__requests-2674"]) == ["requests/adapters.py::HTTPAdapter.send"]
    assert function_gold(by_id["mwaskom__seaborn-2848"]) == []


def test_load_instances_rejects_bad_lines(tmp_path: Path) -> None:
    p = tmp_path / "instances.jsonl"
    p.write_text('{"instance_id": "x"}\n')
    with pytest.raises(InputError, match="line 1"):
        load_instances(p)


def test_parse_repo_map(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    assert parse_repo_map([f"o/n={repo}"]) == {"o/n": repo}
    with pytest.raises(InputError, match="owner/name=GITDIR"):
        parse_repo_map(["o/n"])
    with pytest.raises(InputError, match="not a git repository"):
        parse_repo_map([f"o/n={tmp_path / 'missing'}"])


@pytest.mark.parametrize(
    ("hit", "gold", "expected"),
    [
        ("Session.request", "Session.request", True),
        ("request", "Session.request", True),  # chunk named without its class
        ("Session", "Session.request", True),  # one chunk holds the whole class
        ("Session.request", "Session", False),  # a method is not the class-level span
        ("Session.requests", "Session.request", False),
        ("SessionMixin", "Session.request", False),
        ("", "Session.request", False),
        ("Session.close, Session.request", "Session.request", True),  # merged small methods
        ("Session.close, Session.mount", "Session.request", False),
    ],
)
def test_symbol_matches(hit: str, gold: str, expected: bool) -> None:
    assert symbol_matches(hit, gold) is expected


def test_enclosing_rule_can_be_turned_off() -> None:
    assert symbol_matches("Session", "Session.request", enclosing=False) is False
    assert symbol_matches("request", "Session.request", enclosing=False) is True


def _hit(path: str, score: float, symbol: str = "", line: int = 1) -> Hit:
    return Hit(f"{path}:{line}", score, "r", path, "python", line, line + 5, "", symbol=symbol)


def test_rank_files_by_best_chunk() -> None:
    hits = [_hit("a.py", 0.9), _hit("b.py", 0.8), _hit("a.py", 0.7), _hit("c.py", 0.95)]
    assert rank_files(hits) == ["c.py", "a.py", "b.py"]
    assert rank_files([]) == []


def test_rank_functions() -> None:
    gold = ["m.py::Session.request", "m.py::merge"]
    hits = [
        _hit("u.py", 0.9, "helper"),
        _hit("m.py", 0.8, "request", 10),
        _hit("m.py", 0.7, "Session.request", 12),  # same gold item again: one rank
        _hit("m.py", 0.6, "", 1),
        _hit("x.py", 0.5, "merge"),  # right name, wrong file
        _hit("m.py", 0.4, "merge", 40),
    ]
    assert rank_functions(hits, gold) == [
        "u.py::helper", "m.py::Session.request", "m.py#L1", "x.py::merge", "m.py::merge",
    ]  # fmt: skip


def test_rank_functions_enclosing_only_when_the_gold_has_no_chunk_of_its_own() -> None:
    gold = ["m.py::Session.request"]
    hits = [_hit("m.py", 0.9, "Session", 1), _hit("m.py", 0.8, "Session.request", 20)]
    assert rank_functions(hits, gold)[0] == "m.py::Session.request"
    own = {"m.py": {"Session", "Session.request"}}
    assert rank_functions(hits, gold, own) == ["m.py::Session", "m.py::Session.request"]
    merged = {"m.py": {"Session"}}  # the method lives inside the class chunk
    assert rank_functions(hits, gold, merged)[0] == "m.py::Session.request"


SESSIONS_V1 = '''class Session:
    def request(self, method, url):
        """Send an http request with cookies."""
        return method, url


def merge_setting(request_setting, session_setting):
    """Merge a request setting with the session setting."""
    return request_setting or session_setting
'''
AUTH_V1 = '''def basic_auth_header(username, password):
    """Build a basic authorization header from username and password."""
    return username + password
'''
UTILS_V1 = '''def parse_url(url):
    """Split a url into scheme, host and path."""
    return url.split("/")


def guess_encoding(content):
    """Guess the text encoding of response content bytes."""
    return "utf-8"
'''


@pytest.fixture
def toy_repo(tmp_path: Path) -> tuple[Path, list[str]]:
    """Three commits a day apart; returns the repo and the shas, oldest first."""
    repo = new_repo(tmp_path / "toy")
    day = 86_400
    c1 = commit(
        repo, {"pkg/sessions.py": SESSIONS_V1, "pkg/auth.py": AUTH_V1}, "init", 1_700_000_000
    )
    c2 = commit(repo, {"pkg/utils.py": UTILS_V1}, "add utils", 1_700_000_000 + day)
    c3 = commit(
        repo,
        {"pkg/auth.py": AUTH_V1 + "\n\ndef digest_auth(nonce):\n    return nonce\n"},
        "digest",
        1_700_000_000 + 2 * day,
    )
    return repo, [c1, c2, c3]


def test_run_instances_orders_by_commit_date_and_skips(toy_repo: tuple[Path, list[str]]) -> None:
    repo, (c1, c2, c3) = toy_repo
    instances = [  # newest first in the file: the runner must go forward in time
        Instance(
            "i3",
            "o/toy",
            c3,
            "guess encoding of response content",
            ("pkg/utils.py",),
            {"pkg/utils.py": ("guess_encoding",)},
        ),
        Instance(
            "i1",
            "o/toy",
            c1,
            "merge request setting with session setting",
            ("pkg/sessions.py",),
            {"pkg/sessions.py": ("imports", "merge_setting")},
        ),
        Instance(
            "i2", "o/toy", c2, "basic authorization header username password", ("pkg/auth.py",), {}
        ),
        Instance("gone", "o/other", c1, "anything", ("a.py",), {}),
        Instance("nocommit", "o/toy", "0" * 40, "anything", ("a.py",), {}),
        Instance("nogold", "o/toy", c1, "anything", (), {}),
    ]
    rt = fake_runtime()
    report = run_instances(
        rt, instances, {"o/toy": repo}, dataset="toy", mode="hybrid", per_query=True
    )
    assert [c[2] for c in rt.indexer.calls] == [c1, c2, c3]
    assert [c[3] for c in rt.indexer.calls] == ["full", "incremental", "incremental"]
    assert {c[1] for c in rt.indexer.calls} == {EVAL_BRANCH}
    assert all(
        s["branch"] == EVAL_BRANCH and s["repos"] == ["o/toy"] for s in rt.retriever.searches
    )
    assert report["n_queries"] == 3
    skipped = {s["id"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"gone", "nocommit", "nogold"}
    assert "o/other not given" in skipped["gone"]
    assert report["metrics"]["acc@1"] == 100.0
    assert report["function_level"]["n_queries"] == 2  # i2 has no symbol span
    assert report["function_level"]["metrics"]["mrr"] == 100.0
    assert report["index"] == {"chunks": rt.index.count(), "seconds": 1.5}
    assert [q["id"] for q in report["per_query"]] == ["i1", "i2", "i3"]
    assert report["per_query"][0]["index_mode"] == "full"


def test_several_modes_share_one_indexing_pass(toy_repo: tuple[Path, list[str]]) -> None:
    repo, (c1, c2, _c3) = toy_repo
    instances = [
        Instance("i1", "o/toy", c1, "merge request setting", ("pkg/sessions.py",), {}),
        Instance("i2", "o/toy", c2, "basic authorization header", ("pkg/auth.py",), {}),
    ]
    rt = fake_runtime()
    reports = run_instances_modes(
        rt, instances, {"o/toy": repo}, dataset="toy", modes=["hybrid", "lexical", "hybrid"]
    )
    assert list(reports) == ["hybrid", "lexical"]  # a repeated mode runs once
    assert [c[2] for c in rt.indexer.calls] == [c1, c2]  # each commit indexed once
    assert [s["mode"] for s in rt.retriever.searches] == ["hybrid", "lexical"] * 2
    for mode, report in reports.items():
        assert report["mode"] == mode and report["n_queries"] == 2
        assert report["index"]["seconds"] == 1.0  # the shared indexing time, in each
    with pytest.raises(InputError, match="mode"):
        run_instances_modes(rt, instances, {"o/toy": repo}, dataset="toy", modes=["fuzzy"])


# ------------------------------------------------------------------------------ history
def test_message_rules() -> None:
    assert is_bot("dependabot[bot]", "49699333+dependabot[bot]@users.noreply.github.com")
    assert is_bot("Renovate", "renovate@whitesourcesoftware.com")
    assert is_bot("ci", "ci-bot@example.com")
    assert not is_bot("Ada Lovelace", "ada@example.com")
    assert is_revert('Revert "Add cache"', "")
    assert is_revert("Undo cache", "This reverts commit abc.")
    assert not is_revert("Fix reverted flag handling", "")
    msg = clean_message("Fix digest auth", "Use the nonce count.\n\nSigned-off-by: A <a@x>\n")
    assert msg == "Fix digest auth\n\nUse the nonce count."


@pytest.fixture
def history_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A history with one commit of every kind the builder keeps or leaves out."""
    repo = new_repo(tmp_path / "hist")
    t = iter(range(1_700_000_000, 1_800_000_000, 3600))
    sha: dict[str, str] = {}
    sha["root"] = commit(
        repo,
        {"pkg/sessions.py": SESSIONS_V1, "pkg/auth.py": AUTH_V1, "README.md": "# toy\n"},
        "initial import",
        next(t),
    )
    sha["modify"] = commit(
        repo,
        {"pkg/auth.py": AUTH_V1.replace("password", "secret")},
        "Fix basic auth header\n\nThe password was logged.\n\nSigned-off-by: Dev <dev@example.com>",
        next(t),
    )
    sha["add_only"] = commit(repo, {"pkg/utils.py": UTILS_V1}, "Add url helpers", next(t))
    sha["mixed"] = commit(
        repo,
        {"pkg/utils.py": UTILS_V1 + "\n# more\n", "pkg/new.py": "x = 1\n"},
        "Tweak url helpers and add new module",
        next(t),
    )
    sha["docs"] = commit(repo, {"README.md": "# toy\n\nmore\n"}, "Document usage", next(t))
    sha["bot"] = commit(
        repo,
        {"pkg/auth.py": AUTH_V1},
        "Bump deps",
        next(t),
        author="dependabot[bot] <support@github.com>",
    )
    sha["revert"] = commit(repo, {"pkg/auth.py": AUTH_V1 + "\n"}, 'Revert "Bump deps"', next(t))
    sha["big"] = commit(
        repo, {f"pkg/m{i}.py": f"v = {i}\n" for i in range(6)}, "Many files", next(t)
    )
    sha["delete"] = commit(
        repo, {"pkg/m0.py": None, "pkg/m1.py": "v = 11\n"}, "Drop m0 and bump m1", next(t)
    )
    git(repo, "mv", "pkg/m2.py", "pkg/moved.py")
    sha["rename"] = commit(repo, {}, "Move m2", next(t))
    git(repo, "checkout", "-q", "-b", "side", sha["modify"])
    sha["side"] = commit(
        repo, {"pkg/sessions.py": SESSIONS_V1 + "\n# side\n"}, "side change", next(t)
    )
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", "-m", "Merge side", "side", when=next(t))
    sha["merge"] = git(repo, "rev-parse", "HEAD")
    return repo, sha


def test_build_history(history_repo: tuple[Path, dict[str, str]]) -> None:
    repo, sha = history_repo
    bench = build_history(repo, name="o/hist")
    by_id = {i.instance_id: i for i in bench.instances}
    # newest first, as in git log; the side-branch commit is reachable from HEAD (not a merge)
    kept = ["side", "rename", "delete", "mixed", "modify"]
    assert list(by_id) == [sha[k][:12] for k in kept]
    mod = by_id[sha["modify"][:12]]
    assert mod.repo == "o/hist"
    assert mod.base_commit == sha["root"]
    assert mod.query == "Fix basic auth header\n\nThe password was logged."
    assert mod.gold_files == ("pkg/auth.py",)
    assert by_id[sha["mixed"][:12]].gold_files == ("pkg/utils.py",)  # the added file is not gold
    assert by_id[sha["delete"][:12]].gold_files == ("pkg/m0.py", "pkg/m1.py")
    assert by_id[sha["rename"][:12]].gold_files == ("pkg/m2.py",)  # the path at the parent
    assert bench.excluded == {
        "bot": 1, "merge": 1, "no_code_file_changed": 2, "revert": 1, "root": 1,
        "too_many_files": 1,
    }  # fmt: skip

    assert len(build_history(repo, max_n=2).instances) == 2
    since = build_history(repo, since=sha["big"])
    # big..HEAD: everything reachable from HEAD but not from big (the side commit too)
    expected = [sha[k][:12] for k in ("side", "rename", "delete")]
    assert [i.instance_id for i in since.instances] == expected
    assert build_history(repo).repo == "hist"
    with pytest.raises(InputError):
        build_history(repo, max_n=0)


def test_run_history_on_fake_runtime(history_repo: tuple[Path, dict[str, str]]) -> None:
    repo, _ = history_repo
    bench = build_history(repo, name="o/hist")
    rt = fake_runtime()
    report = run_history(rt, bench, repo, mode="dense")
    assert report["dataset"] == "history/o/hist"
    assert report["n_queries"] == len(bench.instances) == 5
    assert "function_level" not in report
    modes = [c[3] for c in rt.indexer.calls]
    assert modes[0] == "full" and set(modes[1:]) == {"incremental"}


# ------------------------------------------------------------------------------ compare, CLI
def _report(mode: str, mrr: float) -> dict[str, Any]:
    return {
        "dataset": "toy", "mode": mode, "n_queries": 3, "skipped": [],
        "metrics": {m: mrr for m in METRIC_NAMES}, "latency_ms": {"p50": 1.0, "p95": 2.0},
        "index": {"chunks": 10, "seconds": 0.5},
    }  # fmt: skip


def test_compare_table_and_chart(tmp_path: Path) -> None:
    a, b = tmp_path / "dense.json", tmp_path / "lexical.json"
    a.write_text(json.dumps(_report("dense", 54.1)))
    b.write_text(
        json.dumps(
            {
                **_report("lexical", 32.9),
                "function_level": {"n_queries": 2, "metrics": dict.fromkeys(METRIC_NAMES, 10.0)},
            }
        )
    )
    png = tmp_path / "out" / "chart.png"
    table = compare([a, b], png)
    lines = table.splitlines()
    assert lines[0].startswith("| run | n | skipped | mrr | ndcg@10 |")
    assert "| toy / dense (dense) | 3 | 0 | 54.10 |" in lines[2]
    assert "| toy / lexical (lexical) | 3 | 0 | 32.90 |" in lines[3]
    assert "Function level:" in table
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(InputError):
        compare([bad])


@contextmanager
def _fake_eval_runtime(*_: Any, **__: Any) -> Iterator[Any]:
    yield fake_runtime()


def test_cli_beir_prints_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = write_beir(tmp_path / "toy", TOY_CORPUS, TOY_QUERIES, TOY_QRELS)
    monkeypatch.setattr(eval_cli, "eval_runtime", _fake_eval_runtime)
    out = tmp_path / "r" / "toy.json"
    res = CliRunner().invoke(
        eval_cli.eval_app, ["beir", str(d), "--mode", "lexical", "--limit", "2", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["n_queries"] == 2 and report["mode"] == "lexical"
    assert json.loads(out.read_text()) == report
    res = CliRunner().invoke(eval_cli.eval_app, ["compare", str(out)])
    assert res.exit_code == 0, res.output
    assert "| toy / lexical (toy) |" in res.stdout
    assert (out.parent / "compare.png").exists()


def test_cli_swebench_and_history(
    toy_repo: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, (c1, _, _) = toy_repo
    monkeypatch.setattr(eval_cli, "eval_runtime", _fake_eval_runtime)
    inst = tmp_path / "bench" / "instances.jsonl"
    inst.parent.mkdir()
    inst.write_text(
        json.dumps(
            {
                "instance_id": "t-1",
                "repo": "o/toy",
                "base_commit": c1,
                "problem_statement": "basic authorization header",
                "gold_files": ["pkg/auth.py"],
                "gold_spans": {"pkg/auth.py": ["basic_auth_header"]},
                "splits": ["lite"],
            }
        )
        + "\n"
    )
    res = CliRunner().invoke(
        eval_cli.eval_app, ["swebench", str(inst), "--repo", f"o/toy={repo}", "--per-query"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["dataset"] == "bench" and report["n_queries"] == 1
    assert report["function_level"]["metrics"]["acc@1"] == 100.0
    assert len(report["per_query"]) == 1

    args = ["swebench", str(inst), "--repo", f"o/toy={repo}", "--mode", "dense"]
    res = CliRunner().invoke(eval_cli.eval_app, [*args, "--mode", "lexical"])
    assert res.exit_code == 0, res.output
    both = json.loads(res.stdout)
    assert set(both["modes"]) == {"dense", "lexical"} and both["dataset"] == "bench"
    assert both["modes"]["lexical"]["n_queries"] == 1 and "model" in both

    res = CliRunner().invoke(eval_cli.eval_app, ["history", str(repo), "--max", "5"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_queries"] == 1  # root and add-only commits left out

    res = CliRunner().invoke(eval_cli.eval_app, ["beir", str(tmp_path), "--mode", "bm25"])
    assert res.exit_code != 0


def test_cli_json_holds_the_report_so_far(tmp_path: Path) -> None:
    """``--json`` gets each checkpoint atomically (a stopped eval keeps what it measured)."""
    assert eval_cli._checkpointer(None) is None
    out = tmp_path / "deep" / "r.json"
    write = eval_cli._checkpointer(out)
    assert write is not None
    write({"n_queries": 1, "partial": {"done": 1, "of": 3}})
    write({"n_queries": 2, "partial": {"done": 2, "of": 3}})
    assert json.loads(out.read_text()) == {"n_queries": 2, "partial": {"done": 2, "of": 3}}
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temp file left


def test_eval_settings_keep_cache_and_models_outside_the_temp_dir(tmp_path: Path) -> None:
    from coderag.settings import Settings

    base = Settings(data_dir=tmp_path / "home", qdrant_url="http://qdrant:6333")
    s = eval_settings(tmp_path / "tmp", base)
    assert s.data_dir == tmp_path / "tmp"
    assert s.resolved_backend == "edge"
    assert s.cache_dir == tmp_path / "home" / "cache"
    assert s.models_dir == tmp_path / "home" / "models"


def test_public_names_are_pinned() -> None:
    import evals

    assert sorted(evals.__all__) == [
        "BeirDataset", "HistoryBenchmark", "Instance", "QueryResult", "Skipped", "aggregate",
        "build_history", "build_report", "compare", "eval_runtime", "eval_settings",
        "latency_summary", "load_beir", "load_instances", "run_beir", "run_history",
        "run_instances", "run_swebench", "score_query",
    ]  # fmt: skip
    assert all(hasattr(evals, name) for name in evals.__all__)
