"""Project hook health through python-gitlab, against the fake GitLab REST API
(``tests/gitlab_mock.py``), and the whole freshness story in embedded mode: the app's
reconciliation pass, ``GET /v1/repos/{id}/status``, ``/metrics``, the log, and
``coderag status --json``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from coderag.cli import app as cli_app
from coderag.index.edge import EdgeIndex
from coderag.repos import RepoRecord, RepoRegistry
from coderag.runtime import build_runtime
from coderag.settings import Settings
from tests.gitlab_mock import FakeGitLab
from tests.ingest_support import Remote
from webhooks.gitlab_hooks import register_repo
from webhooks.hook_health import check_hook

TOKEN = "glpat-Hk81kQ2vN7tR4pL0sW9y"
REPO = "banking/ledger-core"
PUBLIC = "https://coderag.bank.internal"
LEDGER_PY = '''def post_ledger_entry(ledger, amount):
    """Append one entry to the ledger."""
    ledger.append(amount)
    return sum(ledger)
'''


class _Quiet:
    """A dispatcher that accepts the first full index and does nothing with it."""

    def submit_reindex(self, repo_id: str, *, full: bool = True) -> str:
        return "task"


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab(TOKEN) as gl:
        gl.add_project(REPO, 15, "https://gitlab.example.com/banking/ledger-core.git")
        yield gl


@pytest.fixture
def hooked(tmp_path: Path, gitlab: FakeGitLab) -> Iterator[tuple[Settings, RepoRecord]]:
    settings = Settings(
        data_dir=tmp_path / "data", gitlab_url=gitlab.url, gitlab_token=TOKEN, public_url=PUBLIC
    )
    index = EdgeIndex(tmp_path / "index")
    reg = register_repo(settings, RepoRegistry(index), _Quiet(), f"{gitlab.url}/{REPO}")
    yield settings, reg.record
    index.close()


def _tests_sent(gl: FakeGitLab, hook_id: int) -> int:
    path = f"/api/v4/projects/15/hooks/{hook_id}/test/push_events"
    return sum(1 for r in gl.requests if r.method == "POST" and r.path == path)


def test_an_executable_hook_is_reported_and_left_alone(
    hooked: tuple[Settings, RepoRecord], gitlab: FakeGitLab
):
    settings, rec = hooked
    health = check_hook(settings, rec)
    assert health.managed and health.hook_id == rec.hook_id
    assert (health.alert_status, health.disabled_until, health.reenabled) == (
        "executable",
        None,
        False,
    )
    assert health.error is None and _tests_sent(gitlab, rec.hook_id or 0) == 0


def test_a_temporarily_disabled_hook_is_re_enabled(
    hooked: tuple[Settings, RepoRecord], gitlab: FakeGitLab, caplog: pytest.LogCaptureFixture
):
    settings, rec = hooked
    assert rec.hook_id is not None
    gitlab.set_hook_state(rec.hook_id, "temporarily_disabled")
    caplog.set_level(logging.WARNING, logger="webhooks.hook_health")

    health = check_hook(settings, rec)
    assert health.reenabled and health.alert_status == "executable"
    assert health.disabled_until is None and health.error is None
    assert _tests_sent(gitlab, rec.hook_id) == 1
    assert gitlab.hooks[rec.hook_id]["alert_status"] == "executable"
    assert any(
        r.levelno == logging.WARNING and "re-enabled" in r.getMessage() for r in caplog.records
    )
    assert TOKEN not in caplog.text


def test_a_refused_re_enable_is_reported(
    hooked: tuple[Settings, RepoRecord], gitlab: FakeGitLab, caplog: pytest.LogCaptureFixture
):
    settings, rec = hooked
    assert rec.hook_id is not None
    hook = gitlab.set_hook_state(rec.hook_id, "temporarily_disabled")
    gitlab.fail_tests_with = 403  # a token without the Maintainer role
    caplog.set_level(logging.WARNING, logger="webhooks.hook_health")

    health = check_hook(settings, rec)
    assert not health.reenabled and health.temporarily_disabled
    assert health.disabled_until == hook["disabled_until"]
    assert health.error and "403" in health.error
    assert any(r.levelno == logging.WARNING for r in caplog.records)

    gitlab.fail_tests_with = None  # and a check that is told not to re-enable does not
    assert not check_hook(settings, rec, reenable=False).reenabled
    assert _tests_sent(gitlab, rec.hook_id) == 1


def test_a_permanently_disabled_hook_is_reported_not_touched(
    hooked: tuple[Settings, RepoRecord], gitlab: FakeGitLab, caplog: pytest.LogCaptureFixture
):
    settings, rec = hooked
    assert rec.hook_id is not None
    gitlab.set_hook_state(rec.hook_id, "disabled")
    caplog.set_level(logging.WARNING, logger="webhooks.hook_health")

    health = check_hook(settings, rec)
    assert health.permanently_disabled and not health.reenabled
    assert _tests_sent(gitlab, rec.hook_id) == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "permanently" in errors[0].getMessage()


def test_gitlab_down_or_no_hook_is_unknown_not_an_exception(
    hooked: tuple[Settings, RepoRecord], gitlab: FakeGitLab
):
    settings, rec = hooked
    gone = settings.model_copy(update={"gitlab_url": "http://127.0.0.1:9"})
    health = check_hook(gone, rec)
    assert health.managed and health.alert_status is None and health.error

    manual = rec.model_copy(update={"hook_id": None})
    unmanaged = check_hook(settings, manual)
    assert not unmanaged.managed and unmanaged.alert_status is None and unmanaged.error is None


# --- the whole story, embedded ------------------------------------------------------------


@pytest.fixture
def shared_model(monkeypatch: pytest.MonkeyPatch, embedder: Any) -> None:
    """``coderag status`` builds its own runtime: hand it the session's warmed model."""
    from embeddings import Embedder

    monkeypatch.setattr(Embedder, "from_settings", classmethod(lambda cls, s: embedder))


def _metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and line.split("}")[0].split("{")[1] == want:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.integration
def test_freshness_in_status_metrics_log_and_cli(
    tmp_path: Path,
    embedder: Any,
    shared_model: None,
    gitlab: FakeGitLab,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):
    from coderag.api import create_app

    remote = Remote(tmp_path / "git")
    remote.commit({"src/ledger.py": LEDGER_PY}, "initial")
    first = remote.push("main")
    gitlab.projects[REPO]["http_url_to_repo"] = str(remote.bare)
    settings = Settings(
        data_dir=tmp_path / "data",
        index_backend="edge",
        gitlab_url=gitlab.url,
        gitlab_token=TOKEN,
        public_url=PUBLIC,
        log_json=False,
        log_level="WARNING",
    )
    rt = build_runtime(settings)
    rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
    status_path = f"/v1/repos/{REPO}/status"
    try:
        with TestClient(create_app(settings, runtime=rt)) as c:
            state = c.app.state
            created = c.post("/v1/repos", json={"url": f"{gitlab.url}/{REPO}"})
            assert created.status_code == 201, created.text
            hook_id = created.json()["repo"]["hook_id"]
            assert state.dispatcher.wait_idle(60)
            assert rt.indexer.indexed_commit(REPO, "main") == first

            # Deliveries failed 40 times: GitLab disabled the hook for good, and the pushes
            # since then never arrived.
            gitlab.set_hook_state(hook_id, "disabled")
            remote.commit({"src/fees.py": "def fee(amount):\n    return amount / 100\n"})
            head = remote.push("main")
            caplog.set_level(logging.WARNING, logger="webhooks.hook_health")
            before = time.time()
            assert state.freshness is not None  # started by the lifespan (embedded mode)
            state.freshness.run_once(force=True)
            assert state.dispatcher.wait_idle(60)
            assert rt.indexer.indexed_commit(REPO, "main") == head

            st = c.get(status_path).json()
            assert st["hook"]["alert_status"] == "disabled" and st["hook"]["managed"]
            assert st["hook"]["hook_id"] == hook_id and not st["hook"]["reenabled"]
            assert st["reconcile_error"] is None and st["last_reconciled_at"] >= before
            main = next(b for b in st["branches"] if b["branch"] == "main")
            assert (main["commit"], main["gitlab_head"], main["lag_commits"]) == (head, head, 0)
            assert main["last_reconciled_at"] == st["last_reconciled_at"]
            assert any(
                r.levelno == logging.ERROR and "permanently" in r.getMessage()
                for r in caplog.records
            )
            metrics = c.get("/metrics").text
            assert _metric(metrics, "coderag_hook_disabled", repo=REPO) == 1.0
            assert _metric(metrics, "coderag_reconcile_scheduled_total", repo=REPO) == 1.0
            assert (
                _metric(metrics, "coderag_branch_behind_commits", repo=REPO, branch="main")
                == 0.0
            )
            ok_at = _metric(metrics, "coderag_reconcile_last_success_timestamp_seconds", repo=REPO)
            assert ok_at is not None and ok_at >= before

            # Someone re-enabled it; it failed again and is disabled temporarily now: the next
            # pass re-enables it with a test delivery.
            gitlab.set_hook_state(hook_id, "temporarily_disabled")
            state.freshness.run_once(force=True)
            st = c.get(status_path).json()
            assert st["hook"]["alert_status"] == "executable" and st["hook"]["reenabled"]
            assert _metric(c.get("/metrics").text, "coderag_hook_disabled", repo=REPO) == 0.0
            gitlab.set_hook_state(hook_id, "temporarily_disabled")
            state.freshness.run_once(force=True)
            gitlab.fail_tests_with = 422  # the test delivery fails: still disabled
            gitlab.set_hook_state(hook_id, "temporarily_disabled")
            state.freshness.run_once(force=True)
            st = c.get(status_path).json()
            assert st["hook"]["alert_status"] == "temporarily_disabled"
            assert st["hook"]["disabled_until"] and "422" in st["hook"]["error"]
            assert _metric(c.get("/metrics").text, "coderag_hook_disabled", repo=REPO) == 0.5
    finally:
        rt.close()

    out = CliRunner().invoke(
        cli_app,
        ["status", "--json", "--data-dir", str(settings.data_dir)],
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    (branch,) = [b for b in report["branches"] if b["repo"] == REPO]
    assert branch["commit"] == head and branch["gitlab_head"] == head
    assert branch["lag_commits"] == 0 and branch["last_reconciled_at"] is not None
    (repo,) = report["repos"]
    assert repo["repo"] == REPO and repo["hook"]["alert_status"] == "temporarily_disabled"
    assert repo["last_reconciled_at"] == branch["last_reconciled_at"]
    from coderag.cli import options

    monkeypatch.setattr(options.err, "width", 240)  # one table line per row
    table = CliRunner().invoke(cli_app, ["status", "--data-dir", str(settings.data_dir)])
    assert table.exit_code == 0, table.output
    assert "temporarily_disabled" in table.output and head[:12] in table.output
