"""What is known about one repository's indexing: read-only, from the index, the registry and
the dispatcher's coordinator.

* The index's state is the truth for *what is searchable*: ``branch/<repo>/<branch>`` holds
  the indexed commit and when it was written (written last by every indexing run).
* The repo registry (:class:`coderag.repos.RepoRegistry`) knows whether the repo is enabled,
  its last run and error, and the last run of each branch (``run/<repo>/<branch>``).
* The coordinator behind the dispatcher knows the newest push *not yet indexed* per branch.

Lag is "oldest push still waiting" to now: 0 when nothing is pending, so a quiet branch is
never "lagging" however old its index. The ``GET /v1/repos/{id}/status`` route and the
scrape-time ``coderag_index_lag_seconds`` gauge both use :func:`branch_lag_seconds` so they
always agree.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from coderag.index import SearchFilter, VectorIndex, branch_state_prefix

__all__ = ["branch_lag_seconds", "branch_states", "pending_push", "repo_status"]


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
    names = sorted({b for _, b in states} | set(runs))
    branches = []
    for name in names:
        st = states.get((repo, name), {})
        pending = pending_push(dispatcher, repo, name)
        run = runs.get(name) or {}
        branches.append(
            {
                "branch": name,
                "commit": st.get("commit") or None,
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
