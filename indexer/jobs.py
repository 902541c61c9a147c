"""The jobs behind every task, shared by Celery workers and the embedded executor.

A job takes ids only (repo id, branch) and reads everything else from the registry and the
coordinator, so a task message can be retried, duplicated or delivered late and still do the
right thing: bring the branch to its newest pending commit, once.

``run_branch`` is the folding loop (see :mod:`indexer.queue.coordination`): holding the
branch lock, clear the "scheduled" flag, read the newest pending commit, fetch the mirror,
index it, drop the pending entry if nothing newer arrived, and go round again while
something newer did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coderag.errors import (
    CoderagError,
    GitError,
    IndexError_,
    NotFoundError,
    TransientError,
    translate,
)
from coderag.repos import RepoRecord, RepoRegistry
from indexer.git import NULL_SHA, GitRepo, redact_url
from indexer.mirrors import mirror_for_url, repair_mirror
from indexer.queue.coordination import Coordinator, Pending

if TYPE_CHECKING:
    from coderag.runtime import Runtime
    from indexer.queue.dispatcher import Dispatcher

__all__ = [
    "RETRYABLE",
    "BranchBusy",
    "JobContext",
    "reindex_repo",
    "remove_repo",
    "run_branch",
]

log = logging.getLogger(__name__)

RETRYABLE: tuple[type[CoderagError], ...] = (TransientError, GitError, IndexError_)
"""Errors worth retrying with backoff: broker/Redis hiccups, a fetch that failed, the index
briefly unavailable. Anything else (a commit that no longer exists, bad config) is recorded
on the repo and not retried."""


class BranchBusy(Exception):  # a signal, not an error
    """Another run holds the branch lock: re-enqueue this task a little later."""


@dataclass
class JobContext:
    """Everything a job touches; built once per worker process (or per embedded app)."""

    runtime: Runtime
    registry: RepoRegistry
    coordinator: Coordinator
    scheduler: Dispatcher
    """Where follow-up runs go: a reindex schedules one push per branch through it."""
    fetch: Callable[[RepoRecord], Any] | None = None
    """Mirror fetcher override (tests); default: :func:`indexer.mirrors.mirror_for_url`."""

    def mirror(self, rec: RepoRecord) -> Any:
        if self.fetch is not None:
            return self.fetch(rec)
        with translate(GitError, f"fetching {redact_url(rec.url)}"):
            return mirror_for_url(rec.url, self.runtime.settings)

    def repair(self, rec: RepoRecord) -> bool:
        """Re-clone the repository's mirror if ``git fsck`` finds it broken (see
        :func:`indexer.mirrors.repair_mirror`); ``False`` with a fetch override (tests)."""
        if self.fetch is not None:
            return False
        with translate(GitError, f"repairing the mirror of {redact_url(rec.url)}"):
            return repair_mirror(rec.url, self.runtime.settings)


# ----------------------------------------------------------------------------- jobs
def run_branch(ctx: JobContext, repo_id: str, branch: str) -> dict[str, Any]:
    """Bring (repo, branch) to its newest pending commit; fold whatever arrives meanwhile.

    Raises :class:`BranchBusy` when another run owns the branch (the caller re-enqueues),
    a :data:`RETRYABLE` error when worth retrying (pending is kept for the retry).
    """
    coord = ctx.coordinator
    runs: list[dict[str, Any]] = []
    with coord.lock(repo_id, branch) as held:
        if not held:
            raise BranchBusy(f"{repo_id}:{branch}")
        while True:
            coord.release_schedule(repo_id, branch)  # before reading: see module docstring
            p = coord.pending(repo_id, branch)
            if p is None:
                break
            rec = ctx.registry.get(repo_id)
            if rec is None:  # removed since the push: nothing to index
                coord.consume(repo_id, branch, p.seq)
                break
            try:
                runs.append(_run_once(ctx, rec, branch, p))
            except RETRYABLE:
                raise  # pending stays: the retry (or the next push) picks it up
            except CoderagError as exc:
                # Permanent for this commit (e.g. force-pushed away): record it, move on.
                coord.consume(repo_id, branch, p.seq)
                ctx.registry.record_run(repo_id, branch, _failed(p, exc))
                log.warning(
                    "index run failed",
                    extra={"repo": repo_id, "branch": branch, "error": exc.detail},
                )
                continue
            coord.consume(repo_id, branch, p.seq)
        if runs and ctx.registry.get(repo_id) is None:
            # Removed while we were writing: make sure no point of it survives us.
            ctx.runtime.indexer.delete_repo(repo_id)
    return {"repo": repo_id, "branch": branch, "runs": runs}


def _run_once(ctx: JobContext, rec: RepoRecord, branch: str, p: Pending) -> dict[str, Any]:
    indexer = ctx.runtime.indexer
    started = time.time()
    if p.sha == NULL_SHA:
        removed = indexer.delete_branch(rec.id, branch)
        outcome: dict[str, Any] = {
            "action": "delete",
            "commit": None,
            "mode": "delete",
            "chunks_removed": removed,
        }
    else:
        mirror = ctx.mirror(rec)
        if p.full:  # forget the indexed commit: scan the whole tree instead of a diff
            from coderag.index import branch_state_key

            ctx.runtime.index.set_state(branch_state_key(rec.id, branch), None)
        try:
            report = indexer.index(mirror, rec.id, branch, _newest(mirror, branch, p.sha))
        except (GitError, NotFoundError):
            # A corrupt mirror fails here even after a clean fetch (a missing or damaged
            # object); a NotFoundError would otherwise drop the push as "commit gone". Repair
            # it and run once more; a sound mirror means the failure was real: re-raise.
            if not ctx.repair(rec):
                raise
            report = indexer.index(mirror, rec.id, branch, _newest(mirror, branch, p.sha))
        outcome = {
            "action": "index",
            "commit": report.commit,
            "mode": report.mode,
            "report": report.as_dict(),
        }
    done = time.time()
    _observe(outcome, done - started)
    run = {
        **outcome,
        "pushes": p.pushes,
        "pushed_at": p.received_at,
        "first_pushed_at": p.first_received_at,
        "started_at": started,
        "indexed_at": done,
        "lag_seconds": round(done - p.received_at, 3),
        "max_lag_seconds": round(done - p.first_received_at, 3),
        "seconds": round(done - started, 3),
        "error": None,
    }
    ctx.registry.record_run(rec.id, branch, run)
    log.info("branch run", extra={"repo": rec.id, "branch": branch, "run": run})
    return run


def _newest(mirror: Any, branch: str, sha: str) -> str:
    """The commit to index for a push of ``sha``: the branch head just fetched when it
    descends from ``sha``, else ``sha``.

    GitLab delivers webhooks concurrently and retries late ones, so the push of an older
    commit can arrive after a newer one and replace it as the branch's pending commit;
    indexing the payload's sha would then move the branch back and leave it there. The
    fresh mirror knows better: its head is what the remote holds now. A ``sha`` that is not
    an ancestor of the head (force-pushed history, a tag label, a commit gone) is indexed as
    asked, with the usual errors.
    """
    try:
        git = GitRepo(Path(mirror))
        head = git.resolve(f"refs/heads/{branch}")
    except CoderagError:
        return sha
    if head == sha:
        return sha
    base = git.run("merge-base", sha, head, check=False).decode().strip()
    return head if base == sha else sha


def _observe(outcome: dict[str, Any], seconds: float) -> None:
    """``coderag_task_duration_seconds{task, stage}``: the run and each of its stages.
    (``coderag_chunks_embedded_total`` is counted by the indexing service itself, so CLI runs
    count too.)"""
    from coderag.metrics import TASK_DURATION

    task = "delete_branch" if outcome["action"] == "delete" else "index_branch"
    TASK_DURATION.labels(task=task, stage="total").observe(seconds)
    report = outcome.get("report") or {}
    for stage, sec in (report.get("stage_seconds") or {}).items():
        TASK_DURATION.labels(task=task, stage=str(stage)).observe(float(sec))


def _failed(p: Pending, exc: CoderagError) -> dict[str, Any]:
    now = time.time()
    return {
        "action": "delete" if p.sha == NULL_SHA else "index",
        "commit": None if p.sha == NULL_SHA else p.sha,
        "mode": "failed",
        "pushes": p.pushes,
        "pushed_at": p.received_at,
        "indexed_at": None,
        "failed_at": now,
        "error": f"{exc.error_code}: {exc.detail}",
    }


def reindex_repo(ctx: JobContext, repo_id: str, *, full: bool = True) -> dict[str, Any]:
    """Fetch the mirror and schedule a run of every branch the patterns select.

    ``full`` forgets each branch's indexed commit, so its run scans the whole tree rather
    than a diff and repairs whatever a diff could miss (unchanged chunks are kept, not
    re-embedded; the runs go through the same per-branch folding as pushes). Without it, a
    branch already indexed just catches up to its head.
    """
    rec = ctx.registry.require(repo_id)
    mirror = ctx.mirror(rec)
    heads = list_branches(GitRepo(mirror))
    now = time.time()
    scheduled = {}
    for branch, sha in sorted(heads.items()):
        if rec.branch_enabled(branch):
            scheduled[branch] = ctx.scheduler.submit_push(repo_id, branch, sha, now, full=full)
    return {"repo": repo_id, "branches": scheduled}


def remove_repo(ctx: JobContext, repo_id: str, requested_at: float | None = None) -> dict[str, Any]:
    """Delete every point and state record of the repository, and forget its pending work.

    ``requested_at`` is when the removal was asked for. The API forgets the record at once and
    this task runs later: if the project was registered again in between, the removal is
    superseded, and deleting now would wipe the new registration and strand its GitLab hook.
    The new registration's full run reconciles whatever the old one left in the index.
    """
    rec = ctx.registry.get(repo_id)
    if requested_at is not None and rec is not None and rec.created_at > requested_at:
        log.info("removal superseded by a new registration", extra={"repo": repo_id})
        return {"repo": repo_id, "chunks_removed": 0, "superseded": True}
    ctx.coordinator.forget_repo(repo_id)
    ctx.registry.delete(repo_id)
    removed = ctx.runtime.indexer.delete_repo(repo_id)
    return {"repo": repo_id, "chunks_removed": removed}


def list_branches(git: GitRepo) -> dict[str, str]:
    """branch name -> head sha of every branch of a (bare) repository."""
    out = git.run("for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/")
    heads: dict[str, str] = {}
    for line in out.decode("utf-8", "surrogateescape").splitlines():
        sha, _, ref = line.partition(" ")
        if ref.startswith("refs/heads/"):
            heads[ref.removeprefix("refs/heads/")] = sha
    return heads
