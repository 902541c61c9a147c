"""Reconciliation: compare GitLab's branch heads with the indexed commits, schedule the rest.

Webhooks alone cannot keep the index current, because GitLab

- sends a delivery once: a failure (4xx, 5xx, a timeout after 10 s) is logged and never
  re-sent unless someone presses "Resend request";
- fires no push hook at all for a push that updates more than 3 branches or tags
  (``push_event_hooks_limit``);
- disables a hook that keeps failing (see :mod:`webhooks.hook_health`);

and coderag may simply have been down. :func:`reconcile_repo` closes every such gap the same
way: ``git ls-remote --heads`` on the clone URL (the token in an HTTP header through the
environment, as :mod:`indexer.git` passes it, never on argv), then, for every branch the
record's patterns select whose head is not the indexed commit, a push through the
dispatcher's ``submit_push``, exactly as if its webhook had arrived; and for every indexed
branch whose ref is gone, a deletion (the all-zeros sha). Branches that already have a
pending commit are left alone: a run is coming and it reads the fresh mirror's head.

A listing that fails (GitLab down, a refused token) schedules and deletes nothing: it is the
result's ``error``. So is a listing with no branch at all while branches are indexed: an
answer of nothing is likelier a broken remote than a repository emptied on purpose (remove
such a repository with ``coderag repo remove``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from coderag.errors import CoderagError, GitError
from coderag.index import VectorIndex
from coderag.repos import RepoRecord
from coderag.settings import Settings
from coderag.status import branch_states
from indexer.git import NULL_SHA, GitRepo, redact_url
from indexer.mirrors import mirror_path

__all__ = ["ReconcileResult", "Scheduler", "reconcile_repo", "remote_heads"]

log = logging.getLogger(__name__)

LOW_SPEED_TIME_S = 30
"""``git ls-remote`` gives up when the remote sends (almost) nothing for this long, so a
hung GitLab cannot hold a pass for ever."""


class Scheduler(Protocol):
    """What a pass needs from a dispatcher (both dispatchers have it): ``submit_push``, and
    its ``coordinator`` to see which branches already have a pending commit."""

    def submit_push(
        self, repo_id: str, branch: str, after_sha: str, received_at: float, *, full: bool = False
    ) -> str: ...


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """The outcome of one pass over one repository."""

    repo: str
    at: float
    ok: bool
    """The heads were listed and every run was submitted."""
    heads: dict[str, str] = field(default_factory=dict)
    """GitLab's head of every branch the record's patterns select."""
    scheduled: dict[str, str] = field(default_factory=dict)
    """branch -> head submitted (the branch was behind or never indexed)."""
    removed: list[str] = field(default_factory=list)
    """Indexed branches whose ref is gone: a deletion was submitted."""
    pending: list[str] = field(default_factory=list)
    """Behind, but a pending commit is already known: not submitted again."""
    mirror: str | None = None
    """The local mirror, where :func:`coderag.status.commits_behind` counts lag commits."""
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def remote_heads(url: str, settings: Settings) -> dict[str, str]:
    """branch -> head sha of every branch of the remote (``git ls-remote --heads``).

    Raises :class:`GitError` when the remote cannot be listed.
    """
    token = settings.gitlab_token.get_secret_value() if settings.gitlab_token else None
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # git -C needs a folder to run in
    git = GitRepo(settings.data_dir, token=token)
    out = git.run(
        "-c",
        "http.lowSpeedLimit=1",
        "-c",
        f"http.lowSpeedTime={LOW_SPEED_TIME_S}",
        "ls-remote",
        "--heads",
        url,
    )
    heads: dict[str, str] = {}
    for line in out.decode("utf-8", "surrogateescape").splitlines():
        sha, _, ref = line.partition("\t")
        if ref.startswith("refs/heads/") and len(sha) == 40:
            heads[ref.removeprefix("refs/heads/")] = sha
    return heads


def _pending_of(dispatcher: Any, repo: str, branch: str) -> Any | None:
    coord = getattr(dispatcher, "coordinator", None)
    return coord.pending(repo, branch) if coord is not None else None


def reconcile_repo(
    record: RepoRecord,
    *,
    index: VectorIndex,
    dispatcher: Scheduler,
    settings: Settings,
    now: float | None = None,
) -> ReconcileResult:
    """One pass over ``record`` (see the module docstring). Never raises for a remote or
    broker failure: that is the result's ``error``, and the next pass tries again."""
    now = time.time() if now is None else now
    path = mirror_path(record.url, settings)
    mirror = str(path) if path.is_dir() else None
    try:
        every = remote_heads(record.url, settings)
    except GitError as exc:
        log.warning(
            "reconcile: cannot list the branches",
            extra={"repo": record.id, "url": redact_url(record.url), "error": exc.detail},
        )
        return ReconcileResult(record.id, now, False, mirror=mirror, error=exc.detail)
    heads = {b: sha for b, sha in sorted(every.items()) if record.branch_enabled(b)}
    indexed = {
        b: str(st.get("commit") or "")
        for (_, b), st in branch_states(index, record.id).items()
        if ":" not in b  # a tag label (``tag:v1``): a branch name never holds a ':'
    }
    scheduled: dict[str, str] = {}
    removed: list[str] = []
    waiting: list[str] = []
    error: str | None = None
    if not every and indexed:
        error = "the remote lists no branch at all: nothing scheduled or removed"
        log.warning("reconcile: %s", error, extra={"repo": record.id})
        return ReconcileResult(record.id, now, False, heads, mirror=mirror, error=error)
    work = [(b, sha) for b, sha in heads.items() if indexed.get(b) != sha]
    work += [(b, NULL_SHA) for b in sorted(indexed) if b not in every]
    try:
        for branch, sha in work:
            if _pending_of(dispatcher, record.id, branch) is not None:
                waiting.append(branch)
                continue
            dispatcher.submit_push(record.id, branch, sha, now)
            if sha == NULL_SHA:
                removed.append(branch)
            else:
                scheduled[branch] = sha
    except CoderagError as exc:  # broker or Redis down: the next pass submits the rest
        error = f"{exc.error_code}: {exc.detail}"
        log.warning("reconcile: submitting failed", extra={"repo": record.id, "error": error})
    if scheduled or removed:
        log.info(
            "reconcile: scheduled what the webhooks missed",
            extra={"repo": record.id, "scheduled": sorted(scheduled), "removed": removed},
        )
    return ReconcileResult(
        record.id,
        now,
        error is None,
        heads,
        scheduled,
        removed,
        waiting,
        mirror,
        error,
    )
