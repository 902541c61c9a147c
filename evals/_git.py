"""The few read-only git queries the benchmarks need (commit dates, history, diffs).

Kept here rather than borrowed from the indexer: evals must measure the indexer, not share
code paths with it that could hide its bugs, and these calls are small.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

from coderag.errors import GitError, InputError

__all__ = ["commit_times", "git", "is_git_repo", "require_repo"]


def git(repo: Path, *args: str, input: str | None = None) -> str:
    """Run git in ``repo``; stdout as text. Paths are never quoted (``core.quotePath``)."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    cmd = ["git", "-c", "core.quotePath=false", "-C", str(repo), *args]
    try:
        data = input.encode() if input is not None else None
        proc = subprocess.run(cmd, capture_output=True, input=data, env=env, check=False)
    except FileNotFoundError as exc:
        raise GitError("git is not installed or not on PATH") from exc
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip()
        raise GitError(f"git {' '.join(args[:3])} failed in {repo.name}: {msg[:300]}")
    return proc.stdout.decode("utf-8", "replace")


def is_git_repo(path: Path) -> bool:
    if not path.is_dir():
        return False
    try:
        return bool(git(path, "rev-parse", "--git-dir").strip())
    except GitError:
        return False


def commit_times(repo: Path, shas: Iterable[str]) -> dict[str, int]:
    """Committer timestamp of each sha that exists in ``repo`` (missing ones are absent).

    Two git calls whatever the number of commits: ``cat-file --batch-check`` tells which
    exist (``git show`` would fail on the first missing one), then one ``show -s``.
    """
    wanted = list(dict.fromkeys(shas))
    if not wanted:
        return {}
    out = git(repo, "cat-file", "--batch-check", input="\n".join(wanted) + "\n")
    present = [line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["commit"]]
    # batch-check echoes the name it was given; map back in case an abbreviated sha was used
    resolved = dict(zip(wanted, out.splitlines(), strict=False))
    times: dict[str, int] = {}
    if present:
        shown = git(repo, "show", "-s", "--format=%H %ct", *present)
        by_full = dict(line.split() for line in shown.splitlines() if line.strip())
        for name, line in resolved.items():
            full = line.split()[0]
            if full in by_full:
                times[name] = int(by_full[full])
    return times


def require_repo(path: Path, what: str) -> Path:
    """``path`` as a git repository, or an input error naming ``what`` it was meant to be."""
    if not is_git_repo(path):
        raise InputError(f"{what}: {path} is not a git repository")
    return path
