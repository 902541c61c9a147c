"""The source/test/docs/meta prior of hybrid ranking: classification, and its effect end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coderag.runtime import build_runtime
from coderag.settings import Settings
from retriever.query import parse_query
from retriever.roles import file_role, query_roles
from retriever.search import FusionConfig
from tests.conftest import git


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("src/flask/cli.py", "source"),
        ("tests/test_cli.py", "test"),
        ("pkg/retry/backoff_test.go", "test"),
        ("web/src/__tests__/App.jsx", "test"),
        ("web/src/api.spec.ts", "test"),
        ("spec/models/user_spec.rb", "test"),
        ("core/src/main/java/RetryPolicyTest.java", "test"),
        ("core/src/main/java/Contest.java", "source"),  # "test" inside a word is not a test
        ("src/latest.py", "source"),
        ("conftest.py", "test"),
        ("docs/conf.py", "docs"),
        ("doc/usage.ipynb", "docs"),
        ("examples/upload.py", "docs"),
        ("README.md", "docs"),
        ("src/contest/scoring.py", "source"),
        # about the project: issue templates and changelogs (a file named like one is code)
        (".github/ISSUE_TEMPLATE/bug-report.yml", "meta"),
        (".gitlab/issue_templates/Bug.md", "meta"),
        ("CHANGES", "meta"),
        ("CHANGELOG.md", "meta"),
        ("docs/changelog.rst", "meta"),
        ("AUTHORS", "meta"),
        ("CONTRIBUTING.rst", "meta"),
        ("sphinx/changes.py", "source"),
        ("src/history.py", "source"),
        (".github/workflows/ci.yml", "source"),
        ("src/README.md", "docs"),
    ],
)
def test_file_role(path: str, role: str) -> None:
    assert file_role(path) == role


def test_query_roles_waive_the_prior_only_when_asked() -> None:
    assert query_roles("where is the unit test for upload retries") == {"test"}
    assert query_roles("is this documented in the README?") == {"docs"}
    assert query_roles("why do uploads retry forever after a timeout") == frozenset()
    assert query_roles("what does the changelog say about 2.0") == {"meta"}


UPLOADER = '''"""Uploads of build artifacts to the object store."""


def upload_with_retries(client, path, attempts=5):
    """Upload one artifact, retrying transient failures with exponential backoff."""
    for attempt in range(attempts):
        try:
            return client.put(path)
        except TimeoutError:
            client.sleep(2**attempt)
    raise RuntimeError(f"upload of {path} failed after {attempts} attempts")
'''

UPLOADER_TEST = '''"""Tests of artifact uploads with retries."""

from uploader import upload_with_retries


def test_upload_with_retries_retries_transient_failures(fake_client):
    """Uploads retry transient failures with exponential backoff, then succeed."""
    fake_client.fail_times(2, TimeoutError)
    assert upload_with_retries(fake_client, "artifact.tar") == "ok"
    assert fake_client.sleeps == [1, 2]
'''


@pytest.fixture
def rt(tmp_path: Path, embedder: Any):  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "uploader.py").write_text(UPLOADER)
    (repo / "tests").mkdir()
    (repo / "tests" / "test_uploader.py").write_text(UPLOADER_TEST)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "uploader")
    runtime = build_runtime(Settings(data_dir=tmp_path / "data", index_backend="edge"))
    runtime.embedder = runtime.indexer.embedder = runtime.retriever.embedder = embedder
    runtime.indexer.index(repo, repo="acme/uploader")
    yield runtime
    runtime.close()


def _first_path(runtime: Any, query: str, **kw: Any) -> str:
    hits = runtime.retriever.search(query, repos=["acme/uploader"], k=5, **kw)
    assert hits, query
    return hits[0].path


def test_source_outranks_its_tests_unless_tests_are_asked_for(rt: Any) -> None:
    question = "uploads retry transient failures with exponential backoff"
    assert _first_path(rt, question) == "uploader.py"
    assert _first_path(rt, "the test of " + question) == "tests/test_uploader.py"


def test_the_prior_costs_tests_exactly_the_penalty_and_leaves_the_parts_alone(rt: Any) -> None:
    """Hybrid chunks of test files lose ``secondary_penalty``, source chunks nothing; dense
    and lexical are the parts the fusion is judged against, so they keep raw scores."""
    question = "uploads retry transient failures with exponential backoff"
    hits = rt.retriever.search(question, repos=["acme/uploader"], k=5, max_per_file=1)
    by_path = {h.path: h.score for h in hits}
    rt.retriever.fusion = FusionConfig(secondary_penalty=0.0)
    raw = {
        h.path: h.score
        for h in rt.retriever.search(question, repos=["acme/uploader"], k=5, max_per_file=1)
    }
    assert raw["tests/test_uploader.py"] - by_path["tests/test_uploader.py"] == pytest.approx(
        0.05, abs=1e-6
    )
    assert raw["uploader.py"] == pytest.approx(by_path["uploader.py"], abs=1e-6)
    dense = rt.retriever.search(question, repos=["acme/uploader"], k=5, mode="dense")
    assert {h.path for h in dense} == {"uploader.py", "tests/test_uploader.py"}


def test_long_texts_mention_tests_in_passing_without_asking_for_them() -> None:
    report = (
        "Uploads hang forever when the object store times out. I tested this with a local "
        "minio and the retry loop never gives up; the unit tests only cover the happy path. "
        "Expected: after five attempts the upload should fail with a clear error message."
    )
    assert query_roles(report) == frozenset()


def test_long_reports_weigh_the_prior_more_and_meta_files_most(rt: Any) -> None:
    """A bug report pays the tests' penalty plus ``secondary_penalty_long`` in proportion to
    its length; a changelog or issue template pays ``meta_penalty``, more than either."""
    report = (
        "Uploads of build artifacts hang when the object store times out: the upload with "
        "retries loop should retry transient failures with exponential backoff and then give "
        "up after five attempts with a clear error, but it keeps sleeping. Seen with a local "
        "object store that drops every second request; the artifact never arrives and the "
        "build waits until its own timeout kills it."
    )
    f = FusionConfig()
    long = rt.retriever._long_query(parse_query(report))
    assert 0.5 < long <= 1.0

    def scores() -> dict[str, float]:
        hits = rt.retriever.search(report, repos=["acme/uploader"], k=5, max_per_file=1)
        return {h.path: h.score for h in hits}

    priced = scores()
    rt.retriever.fusion = FusionConfig(secondary_penalty=0.0, secondary_penalty_long=0.0)
    raw = scores()
    gap = raw["tests/test_uploader.py"] - priced["tests/test_uploader.py"]
    assert gap == pytest.approx(f.secondary_penalty + f.secondary_penalty_long * long, abs=1e-6)
    assert raw["uploader.py"] == pytest.approx(priced["uploader.py"], abs=1e-6)
    assert f.meta_penalty > f.secondary_penalty + f.secondary_penalty_long
