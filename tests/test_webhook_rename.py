"""A GitLab rename or transfer, seen by coderag: same ``project.id``, a new
``path_with_namespace``.

End to end in embedded mode (``create_app``, the in-process executor, an Edge index on disk,
the real model with its content-addressed cache), registered through ``POST /v1/repos``
against the GitLab API stand-in: the first delivery under the new path moves the record,
the repository becomes searchable under the new path without a single chunk going through
the model again, and the old path answers ``repo_moved`` naming the new one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from coderag.runtime import build_runtime
from coderag.settings import Settings
from tests.gitlab_mock import FakeGitLab
from tests.ingest_support import Remote, payload

pytestmark = pytest.mark.integration

OLD = "grp/ledger"
NEW = "finance/ledger-core"
PROJECT_ID = 77
GL_TOKEN = "glpat-renameTestToken0123456789"
CODE = '''def post_ledger_entry(ledger, amount):
    """Post one entry to the ledger and return the new balance."""
    ledger.entries.append(amount)
    return sum(ledger.entries)


def reverse_ledger_entry(ledger, index):
    """Reverse a posted entry by appending its negation."""
    ledger.entries.append(-ledger.entries[index])
    return sum(ledger.entries)
'''


def _embedded_total() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("coderag_chunks_embedded_total") or 0.0


def wait_for(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def stack(tmp_path: Path, embedder: Any) -> Iterator[tuple[TestClient, Remote, FakeGitLab]]:
    from coderag.api import create_app

    remote = Remote(tmp_path / "git")
    remote.commit({"src/ledger.py": CODE})
    remote.push("main")
    with FakeGitLab(GL_TOKEN) as gitlab:
        gitlab.add_project(OLD, PROJECT_ID, str(remote.bare))
        settings = Settings(
            data_dir=tmp_path / "data",
            index_backend="edge",
            gitlab_url=gitlab.url,
            gitlab_token=GL_TOKEN,
            public_url="http://127.0.0.1:9",
            push_debounce_seconds=0,
            log_json=False,
            log_level="WARNING",
        )
        rt = build_runtime(settings)
        rt.embedder = rt.indexer.embedder = rt.retriever.embedder = embedder
        try:
            with TestClient(create_app(settings, runtime=rt)) as c:
                yield c, remote, gitlab
        finally:
            rt.close()


def _commit(c: TestClient, repo: str) -> str | None:
    resp = c.get(f"/v1/repos/{repo}/status")
    if resp.status_code != 200:
        return None
    main = [b for b in resp.json()["branches"] if b["branch"] == "main"]
    return main[0]["commit"] if main and not main[0]["pending_commit"] else None


def _search(c: TestClient, repo: str) -> Any:
    return c.post("/v1/search", json={"query": "post an entry to the ledger", "repos": [repo]})


def test_rename_moves_the_record_reindexes_for_free_and_points_the_old_path_on(
    stack: tuple[TestClient, Remote, FakeGitLab],
):
    c, remote, gitlab = stack
    created = c.post("/v1/repos", json={"url": f"{gitlab.url}/{OLD}", "branches": ["main"]})
    assert created.status_code == 201, created.text
    assert created.json()["repo"]["gitlab_project_id"] == PROJECT_ID
    secret = created.json()["secret"]
    head = remote.push("main")
    wait_for(lambda: _commit(c, OLD) == head, 60, "the first index")
    old_points = c.get(f"/v1/repos/{OLD}/status").json()["chunks"]
    assert old_points > 0

    # GitLab renames and transfers the project; its next delivery carries the new path.
    embedded_before = _embedded_total()
    body = payload(
        "push", repo=NEW, clone_url=str(remote.bare), before=head, after=head, ref="refs/heads/main"
    )
    body["project"]["id"] = PROJECT_ID
    headers = {
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Token": secret,  # the hook, and so its secret, moved with the project
        "Idempotency-Key": str(uuid.uuid4()),
    }
    resp = c.post("/v1/webhooks/gitlab", json=body, headers=headers)
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "accepted" and resp.json()["repo"] == NEW

    wait_for(lambda: _commit(c, NEW) == head, 60, "the index under the new path")
    wait_for(lambda: _search(c, OLD).status_code == 410, 60, "the old path's points to go")

    # Searchable under the new name, nothing went through the model again.
    hits = _search(c, NEW).json()["results"]
    assert hits and {h["repo"] for h in hits} == {NEW}
    assert any("post_ledger_entry" in h["text"] for h in hits)
    status = c.get(f"/v1/repos/{NEW}/status").json()
    assert status["registered"] and status["chunks"] == old_points
    run = status["last_run"]  # the run under the new path, not the one the record carried
    assert run["repo"] == NEW and run["report"]["chunks_written"] == old_points
    assert run["report"]["chunks_embedded"] == 0
    assert _embedded_total() == embedded_before

    # The old path: a clear pointer, on every read.
    moved = _search(c, OLD)
    assert moved.json()["error_code"] == "repo_moved" and NEW in moved.json()["detail"]
    old_status = c.get(f"/v1/repos/{OLD}/status")
    assert old_status.status_code == 410 and old_status.json()["error_code"] == "repo_moved"
    assert NEW in old_status.json()["detail"]
    reindex_old = c.post(f"/v1/repos/{OLD}/reindex")
    assert reindex_old.status_code == 410

    # One record, at the new path, same hook, secret and project id.
    [rec] = c.get("/v1/repos").json()["repos"]
    assert rec["id"] == NEW and rec["gitlab_project_id"] == PROJECT_ID
    assert rec["previous_ids"] == [OLD] and rec["hook_id"] == created.json()["repo"]["hook_id"]
    registry = c.app.state.registry
    assert registry.get_by_project(PROJECT_ID).id == NEW

    # The next push under the new path is an ordinary one, with the same secret.
    after = remote.commit({"src/fees.py": "def waive_fee(p):\n    return 0\n"})
    remote.push("main")
    body2 = payload(
        "push", repo=NEW, clone_url=str(remote.bare), before=head, after=after, ref="refs/heads/"
    )
    body2["ref"] = "refs/heads/main"
    body2["project"]["id"] = PROJECT_ID
    headers["Idempotency-Key"] = str(uuid.uuid4())
    again = c.post("/v1/webhooks/gitlab", json=body2, headers=headers)
    assert again.status_code == 202 and again.json()["repo"] == NEW, again.text
    wait_for(lambda: _commit(c, NEW) == after, 60, "the push after the rename")

    # Removing the repository forgets the alias too: the old path is simply unknown then.
    assert c.delete(f"/v1/repos/{NEW}").status_code == 202
    wait_for(lambda: c.get(f"/v1/repos/{OLD}/status").status_code == 404, 60, "the alias to go")
