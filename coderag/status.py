"""What is known about one repository's indexing: read-only, from the index, the registry and
the dispatcher's coordinator.

* The index's state is the truth for *what is searchable*: ``branch/<repo>/<branch>`` holds
  the indexed commit and when it was written (written last by every indexing run).
* The repo registry (:class:`coderag.repos.RepoRegistry`) knows whether the repo is enabled,
  its last run and error, and the last run of each branch (``run/<repo>/<branch>``).
* The coordinator behind the dispatcher knows the newest push *not yet indexed* per branch.
* The last reconciliation pass (:mod:`coderag.freshness`) left ``reconcile/<repo>``: GitLab's
  head of every tracked branch, when it last listed them, what it scheduled, and the project
  hook's health. Any process may have written it (the API in embedded mode, a worker in
  distributed mode); every process reads it here.

Lag comes in two measures. ``lag_seconds`` is "oldest push still waiting" to now: 0 when
nothing is pending, so a quiet branch is never "lagging" however old its index; a push that
no webhook announced counts from the reconciliation pass that found it (the pass schedules
it as a push received then). ``lag_commits`` is how many commits GitLab's head is ahead of
the indexed commit, counted in the local mirror (``null`` when the mirror lacks one of the
two commits, e.g. before the run that fetches them). The ``GET /v1/repos/{id}/status``
route, ``coderag status`` and the scrape-time gauges all use these functions so they always
agree.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from coderag.index import SearchFilter, VectorIndex, branch_state_prefix

__all__ = [
    "RECONCILE_STATE_PREFIX",
    "branch_lag_commits",
    "branch_lag_seconds",
    "branch_states",
    "commits_behind",
    "hook_disabled_level",
    "pending_push",
    "reconcile_state_key",
    "reconcile_states",
    "repo_status",
]

RECONCILE_STATE_PREFIX = "reconcile/"
_GIT_TIMEOUT_S = 10.0


def reconcile_state_key(repo: str) -> str:
    """State key of the last reconciliation pass of ``repo`` (heads, outcome, hook health)."""
    return f"{RECONCILE_STATE_PREFIX}{repo.strip('/')}"


def reconcile_states(index: VectorIndex, repo: str | None = None) -> dict[str, dict[str, Any]]:
    """repo -> its last reconciliation record; for exactly ``repo`` when given (the record's
    own ``repo`` field decides, as for :func:`branch_states`)."""
    prefix = reconcile_state_key(repo) if repo else RECONCILE_STATE_PREFIX
    out: dict[str, dict[str, Any]] = {}
    for st in index.list_state(prefix).values():
        r = st.get("repo")
        if r and (repo is None or r == repo):
            out[str(r)] = dict(st)
    return out


def commits_behind(mirror: str | os.PathLike[str] | None, indexed: str, head: str) -> int | None:
    """``git rev-list --count indexed..head`` in ``mirror``: the commits of ``head`` that the
    indexed commit lacks; ``None`` when the mirror is missing or lacks either commit."""
    if not mirror or not os.path.isdir(mirror):
        return None
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    cmd = ["git", "-C", os.fspath(mirror), "rev-list", "--count", f"{indexed}..{head}", "--"]
    try:
        proc = subprocess.run(cmd, capture_output=True, env=env, timeout=_GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = proc.stdout.decode().strip()
    return int(out) if proc.returncode == 0 and out.isdigit() else None


def branch_lag_commits(
    commit: str | None, head: str | None, mirror: str | os.PathLike[str] | None
) -> int | None:
    """Commits the indexed ``commit`` is behind GitLab's ``head``: 0 when they are equal,
    ``None`` when either is unknown or the mirror cannot count them."""
    if head is None or commit is None:
        return None
    if commit == head:
        return 0
    return commits_behind(mirror, commit, head)


def hook_disabled_level(alert_status: str | None) -> float | None:
    """The ``coderag_hook_disabled`` value of a hook's ``alert_status``: 0 executable, 0.5
    temporarily disabled (GitLab retries it after a back-off), 1 permanently disabled (no
    delivery until someone re-enables it); ``None`` when unknown."""
    return {"executable": 0.0, "temporarily_disabled": 0.5, "disabled": 1.0}.get(
        alert_status or ""
    )


def branch_states(index: VectorIndex, repo: str | None = None) -> dict[tuple[str, str], dict]:
    """(repo, branch) -> the index's state record; for exactly ``repo`` when given.

    Prefix listing alone is ambiguous (``branch/a/b/c`` is repo ``a/b`` branch ``c`` or repo
    ``a`` branch ``b/c``), so the record's own ``repo`` field decides.
    """
    out: dict[tuple[str, str], dict] = {}
    for st in index.list_state(branch_state_prefix(repo)).values():
        r, b = st.get("repo"), st.get("branch")
        if r and b and (repo is None or r == repo):
            out[(str(r), str(b))] = dict(st)
    return out


def _coordinator(dispatcher: Any) -> Any:
    if dispatcher is None:
        return None
    if hasattr(dispatcher, "pending"):
        return dispatcher
    return getattr(dispatcher, "coordinator", None)


def pending_push(dispatcher: Any, repo: str, branch: str) -> Any | None:
    """The newest not-yet-indexed push of (repo, branch) (``sha``, ``received_at``,
    ``first_received_at``, ``pushes``), or None. Best effort: a coordinator that cannot be
    reached (Redis down) reads as "nothing known", and readyz reports the outage."""
    coord = _coordinator(dispatcher)
    if coord is None:
        return None
    try:
        return coord.pending(repo, branch)
    except Exception:  # lag is diagnostic; never fail status or a scrape on it
        return None


def branch_lag_seconds(pending: Any | None, now: float | None = None) -> float:
    """Seconds since the oldest push still waiting to be indexed (0 when none waits)."""
    if pending is None:
        return 0.0
    first = getattr(pending, "first_received_at", None) or getattr(pending, "received_at", None)
    if not isinstance(first, int | float):
        return 0.0
    return max(0.0, (time.time() if now is None else now) - float(first))


def _record_dict(rec: Any) -> dict[str, Any] | None:
    if rec is None:
        return None
    if hasattr(rec, "public"):
        return dict(rec.public())
    if hasattr(rec, "model_dump"):
        return dict(rec.model_dump())
    return dict(rec) if isinstance(rec, Mapping) else None


def repo_status(
    index: VectorIndex,
    registry: Any,
    dispatcher: Any,
    repo: str,
    now: float | None = None,
) -> dict[str, Any] | None:
    """Status of ``repo`` (see :class:`coderag.api.repos.RepoStatus` for the fields), or None when
    neither the index nor the registry knows it."""
    now = time.time() if now is None else now
    rec = _record_dict(registry.get(repo)) if registry is not None else None
    states = branch_states(index, repo)
    runs: dict[str, dict[str, Any]] = {}
    if registry is not None and hasattr(registry, "branch_runs"):
        for run in registry.branch_runs(repo).values():
            if run.get("repo") == repo and run.get("branch"):
                runs[str(run["branch"])] = dict(run)
    if not states and rec is None:
        return None
    recon = reconcile_states(index, repo).get(repo) or {}
    heads = recon.get("heads") if isinstance(recon.get("heads"), Mapping) else {}
    reconciled_at = _num(recon.get("ok_at"))
    names = sorted({b for _, b in states} | set(runs) | set(heads))
    branches = []
    for name in names:
        st = states.get((repo, name), {})
        pending = pending_push(dispatcher, repo, name)
        run = runs.get(name) or {}
        commit = st.get("commit") or None
        head = heads.get(name)
        branches.append(
            {
                "branch": name,
                "commit": commit,
                "gitlab_head": head,
                "lag_commits": branch_lag_commits(commit, head, recon.get("mirror")),
                "last_reconciled_at": reconciled_at,
                "indexed_at": _num(st.get("indexed_at")),
                "chunks": index.count(SearchFilter(repos=[repo], branch=name)) if st else 0,
                "pending_commit": getattr(pending, "sha", None),
                "pending_pushes": int(getattr(pending, "pushes", 0) or 0),
                "lag_seconds": round(branch_lag_seconds(pending, now), 3),
                "last_run_at": _num(run.get("indexed_at") or run.get("failed_at")),
                "last_run_seconds": _num(run.get("seconds")),
                "last_push_to_indexed_seconds": _num(run.get("lag_seconds")),
                "last_error": run.get("error"),
            }
        )
    rec = rec or {}
    last_run = rec.get("last_run")
    return {
        "repo": repo,
        "registered": bool(rec),
        "branch_patterns": list(rec.get("branches") or []),
        "chunks": index.count(SearchFilter(repos=[repo])),
        "branches": branches,
        "last_run": _jsonable(last_run) if isinstance(last_run, Mapping) else None,
        "last_error": rec.get("last_error"),
        "lag_seconds": max((b["lag_seconds"] for b in branches), default=0.0),
        "last_reconciled_at": reconciled_at,
        "reconcile_error": recon.get("error"),
        "hook": _jsonable(recon["hook"]) if isinstance(recon.get("hook"), Mapping) else None,
    }


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, str | int | float | bool):
        return v
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return str(v)
