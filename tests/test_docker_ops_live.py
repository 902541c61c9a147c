"""The ops scripts in docker/ against coderag itself, running on loopback (no stubs).

One embedded coderag (an Edge index in a data dir, the real app served by uvicorn on
127.0.0.1) over a small git repository with two branches, indexed with ``coderag index``:

* ``health_check_all.sh --only coderag`` passes while the API serves and fails once it is
  stopped;
* ``backup.sh`` of the (stopped, hence quiescent) data dir, the data dir wiped, then
  ``restore.sh``: ``coderag search --json`` returns exactly the same results (paths, lines,
  scores, texts), ``coderag status --json`` the same commit and chunk count per branch, and
  the API served again from the restored dir answers ``/v1/search`` as it did before.

The session's warmed model is shared by the CLI commands and the server (loading it is the
slow part, and what is tested here is the index on disk, not the model).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from coderag.cli import app as cli
from tests.api_support import ALPHA_PAYMENTS
from tests.conftest import git

pytestmark = pytest.mark.integration

DOCKER = Path(__file__).resolve().parents[1] / "docker"
REPO_ID = "ops/payments"
QUERY = "settle a payment on the ledger"
FAST = ["--retries", "2", "--interval", "0.2", "--timeout", "3"]


LEDGER = '''class Ledger:
    """Double-entry ledger of the payments service."""

    def __init__(self):
        self.entries = []

    def book(self, amount, account):
        """Book an amount on an account."""
        self.entries.append((account, amount))
'''

FEES = '''def settlement_fee(payment):
    """Fee charged when a payment is settled early."""
    return round(payment.amount * 0.002, 2)
'''


@pytest.fixture
def shared_model(monkeypatch: pytest.MonkeyPatch, embedder: Any, model_dir: Path) -> None:
    """Embedded mode everywhere, and every runtime (CLI commands, the server's lifespan) on
    the session's warmed model."""
    from embeddings import Embedder

    for var in (
        "CODERAG_QDRANT_URL",
        "CODERAG_CELERY_BROKER_URL",
        "CODERAG_API_TOKENS",
        "CODERAG_DELEGATION_TOKENS",
        "CODERAG_OIDC_ISSUER",
        "CODERAG_INDEX_BACKEND",
        "CODERAG_DATA_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CODERAG_MODEL_EXPORT_DIR", str(model_dir))
    monkeypatch.setattr(Embedder, "from_settings", classmethod(lambda cls, s: embedder))


def make_repo(root: Path) -> Path:
    """main: payments + ledger; release/1: main plus a fees module."""
    repo = root / "payments"
    (repo / "src").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "src" / "payments.py").write_text(ALPHA_PAYMENTS, encoding="utf-8")
    (repo / "src" / "ledger.py").write_text(LEDGER, encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "payments")
    git(repo, "checkout", "-qb", "release/1")
    (repo / "src" / "fees.py").write_text(FEES, encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "fees")
    git(repo, "checkout", "-q", "main")
    return repo


def coderag(*args: str) -> Any:
    """A ``coderag ... --json`` command, in process; its JSON output."""
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a docker/ script with the venv's python3 first on PATH (as the image has it)."""
    base = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
    }
    return subprocess.run(
        ["bash", str(DOCKER / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
    )


def health(url: str) -> subprocess.CompletedProcess:
    return script("health_check_all.sh", "--only", "coderag", *FAST, env={"CODERAG_API_URL": url})


def api_search(url: str) -> list[dict[str, Any]]:
    resp = httpx.post(f"{url}/v1/search", json={"query": QUERY, "k": 10}, trust_env=False)
    assert resp.status_code == 200, resp.text
    return resp.json()["results"]


def served_app(data: Path, model_dir: Path) -> Any:
    """The app as ``coderag serve`` builds it: the lifespan opens the data dir itself."""
    from coderag.api import create_app
    from coderag.settings import Settings

    settings = Settings(
        data_dir=data, model_export_dir=model_dir, index_backend="edge", api_tokens={}
    )
    return create_app(settings)


def test_health_backup_and_restore_against_a_live_coderag(
    tmp_path: Path, shared_model: None, model_dir: Path
) -> None:
    from tests.api_support import running_server

    repo = make_repo(tmp_path / "src")
    data = tmp_path / "data"
    dd = ["--data-dir", str(data)]
    for branch in ("main", "release/1"):
        report = coderag("index", str(repo), "--repo", REPO_ID, "--branch", branch, *dd)
        assert (report["repo"], report["branch"]) == (REPO_ID, branch)

    # --- health: healthy while it serves, unhealthy once stopped ------------------------------
    with running_server(served_app(data, model_dir)) as url:
        ok = health(url)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"ok     coderag      {url}/readyz" in ok.stdout
        assert "all 1 services healthy" in ok.stdout
        live = api_search(url)
    assert live and live[0]["path"] == "src/payments.py"
    down = health(url)
    assert down.returncode == 1, down.stdout + down.stderr
    assert "FAIL   coderag" in down.stdout and "unreachable" in down.stdout
    assert "after 2 attempts" in down.stdout and "unhealthy: coderag" in down.stderr

    # --- backup of the quiescent data dir, wipe, restore ---------------------------------------
    before = coderag("search", QUERY, *dd)
    status_before = coderag("status", *dd)
    assert {b["branch"] for b in status_before["branches"]} == {"main", "release/1"}
    assert any(h["path"] == "src/fees.py" for h in before)  # release/1 is in the index

    backups = tmp_path / "backups"
    made = script("backup.sh", "--out", str(backups), "--name", "live", "--data-dir", str(data))
    assert made.returncode == 0, made.stderr
    bdir = backups / "live"
    assert made.stdout.strip() == str(bdir)
    manifest = json.loads((bdir / "manifest.json").read_text())
    assert set(manifest["parts"]) == {"data"}  # no Qdrant URL: embedded mode only

    shutil.rmtree(data)
    restored = script("restore.sh", str(bdir), "--data-dir", str(data))
    assert restored.returncode == 0, restored.stderr
    assert "restore complete" in restored.stdout

    after = coderag("search", QUERY, *dd)
    assert after == before  # same hits, paths, lines, scores, commits and texts, same order

    def per_branch(status: dict[str, Any]) -> dict[tuple[str, str], tuple[str, int]]:
        return {(b["repo"], b["branch"]): (b["commit"], b["chunks"]) for b in status["branches"]}

    status_after = coderag("status", *dd)
    assert per_branch(status_after) == per_branch(status_before)
    assert status_after["chunks"] == status_before["chunks"]
    commits = per_branch(status_after)
    assert commits[(REPO_ID, "main")][0] == git(repo, "rev-parse", "main")
    assert commits[(REPO_ID, "release/1")][0] == git(repo, "rev-parse", "release/1")

    # --- the restored data dir serves the same answers -----------------------------------------
    with running_server(served_app(data, model_dir)) as url:
        ok = health(url)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert api_search(url) == live
