"""``coderag repo ...`` and ``coderag worker`` through the real typer app (embedded mode: the
commands open the data dir and run the indexing in the foreground)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coderag.cli import app
from tests.ingest_support import Remote

pytestmark = pytest.mark.integration

REPO = "grp/cli"


@pytest.fixture
def shared_model(monkeypatch: pytest.MonkeyPatch, embedder: Any) -> None:
    """The commands build their own runtime: hand them the session's warmed model."""
    from embeddings import Embedder

    monkeypatch.setattr(Embedder, "from_settings", classmethod(lambda cls, s: embedder))


def test_repo_commands_embedded(tmp_path: Path, shared_model: None):
    remote = Remote(tmp_path / "git")
    remote.commit({"src/fees.py": "def wire_transfer_fee(amount):\n    return amount * 0.001\n"})
    remote.push("main")
    remote.checkout("release/1", create=True)
    remote.push("release/1")
    data = ["--data-dir", str(tmp_path / "data")]
    run = CliRunner().invoke

    added = run(
        app,
        [
            "repo",
            "add",
            str(remote.bare),
            "--id",
            REPO,
            "--branches",
            "main,release/*",
            "--json",
            *data,
        ],
    )
    assert added.exit_code == 0, added.output
    out = json.loads(added.stdout)
    assert out["repo"]["id"] == REPO and out["secret"] and "secret_hash" not in out["repo"]

    listed = run(app, ["repo", "list", "--json", *data])
    assert [r["id"] for r in json.loads(listed.stdout)] == [REPO]

    status = json.loads(run(app, ["repo", "status", REPO, "--json", *data]).stdout)
    branches = {b["branch"]: b for b in status["branches"]}
    assert set(branches) == {"main", "release/1"}
    assert branches["main"]["commit"] and branches["main"]["chunks"] == 1
    assert status["chunks"] == 1  # one chunk, shared by both branches

    assert run(app, ["repo", "reindex", REPO, *data]).exit_code == 0
    removed = run(app, ["repo", "remove", REPO, *data])
    assert removed.exit_code == 0, removed.output
    assert json.loads(run(app, ["repo", "list", "--json", *data]).stdout) == []
    assert run(app, ["repo", "status", REPO, *data]).exit_code == 1


def test_worker_refuses_what_cannot_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = ["--data-dir", str(tmp_path)]
    no_broker = CliRunner().invoke(app, ["worker", *data])
    assert no_broker.exit_code == 2 and "CELERY_BROKER_URL" in no_broker.output
    monkeypatch.setenv("CODERAG_CELERY_BROKER_URL", "redis://127.0.0.1:6379/14")
    edge = CliRunner().invoke(app, ["worker", *data])
    assert edge.exit_code == 2 and "QDRANT_URL" in edge.output
    monkeypatch.setenv("CODERAG_QDRANT_URL", "http://127.0.0.1:1")
    bad = CliRunner().invoke(app, ["worker", "--queues", "gpu", *data])
    assert bad.exit_code == 2 and "unknown queue" in bad.output
