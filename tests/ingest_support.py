"""Test-only helpers of the ingest tests: a "GitLab-side" git repository to push to, recorded
webhook payloads addressed to it, and index snapshots to compare runs with a fresh index."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from coderag.index import SearchFilter, VectorIndex

__all__ = ["FIXTURES", "NULL_SHA", "Remote", "payload", "snapshot"]

FIXTURES = Path(__file__).parent / "fixtures" / "gitlab"
NULL_SHA = "0" * 40

_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(cwd), *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **_ENV},
    )
    return proc.stdout.strip()


class Remote:
    """A working clone and the bare repository it pushes to (what GitLab would host).

    ``bare`` is the project's clone URL in the tests: ``mirror_from`` accepts local paths.
    """

    def __init__(self, root: Path) -> None:
        self.work = root / "work"
        self.bare = root / "remote.git"
        self.work.mkdir(parents=True)
        _git(self.work, "init", "-q", "-b", "main")
        _git(root, "init", "-q", "--bare", "-b", "main", str(self.bare))
        _git(self.work, "remote", "add", "origin", str(self.bare))

    def commit(self, files: dict[str, str | None], msg: str = "change") -> str:
        """Write (``None``: delete) files, commit on the current branch, return the sha."""
        for rel, text in files.items():
            p = self.work / rel
            if text is None:
                p.unlink()
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        _git(self.work, "add", "-A")
        _git(self.work, "commit", "-qm", msg)
        return _git(self.work, "rev-parse", "HEAD")

    def checkout(self, branch: str, *, create: bool = False) -> None:
        _git(self.work, "checkout", "-q", *(["-b"] if create else []), branch)

    def push(self, branch: str) -> str:
        """``git push`` the current HEAD to ``branch``; returns the pushed sha."""
        _git(self.work, "push", "-q", "-f", "origin", f"HEAD:refs/heads/{branch}")
        return _git(self.work, "rev-parse", "HEAD")

    def set_ref(self, branch: str, sha: str) -> None:
        """The remote's branch moves to ``sha`` (a push of an already pushed object: fast)."""
        _git(self.bare, "update-ref", f"refs/heads/{branch}", sha)

    def delete_branch(self, branch: str) -> None:
        _git(self.bare, "update-ref", "-d", f"refs/heads/{branch}")

    def upload(self) -> None:
        """Copy the work repo's commits into the remote without moving any branch (then
        :meth:`set_ref` makes each one a "push" in a few milliseconds)."""
        _git(self.work, "push", "-q", "-f", "origin", "HEAD:refs/uploads/head")


def payload(
    name: str,
    *,
    repo: str,
    clone_url: str,
    before: str | None = None,
    after: str | None = None,
    ref: str | None = None,
) -> dict[str, Any]:
    """A recorded-shape GitLab payload (``tests/fixtures/gitlab/<name>.json``) for ``repo``."""
    data = copy.deepcopy(json.loads((FIXTURES / f"{name}.json").read_text()))
    project = data.get("project")
    if isinstance(project, dict):
        project.update(path_with_namespace=repo, git_http_url=clone_url, http_url=clone_url)
    if before is not None:
        data["before"] = before
    if after is not None:
        data["after"] = after
        if data.get("checkout_sha") is not None or after != NULL_SHA:
            data["checkout_sha"] = None if after == NULL_SHA else after
        for c in data.get("commits", []):
            c["id"] = after
    if ref is not None:
        data["ref"] = ref
    return data


def snapshot(index: VectorIndex, repo: str) -> dict[str, dict[str, Any]]:
    """Every point of ``repo``: id -> payload, branches sorted, first-seen commit dropped."""
    out = {}
    for pid, p in index.scroll(SearchFilter(repos=[repo])):
        q = dict(p)
        q["branches"] = sorted(q.get("branches") or [])
        q.pop("commit", None)
        out[pid] = q
    return out
