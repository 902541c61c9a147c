"""A benchmark built from a repository's own history: commit message -> files it changed.

Every team has this data and no public benchmark covers their code, so this is how an
operator checks retrieval on *their* repositories. Each kept commit becomes one
:class:`~evals.swebench.Instance`: the query is the commit message (subject and body, trailer
lines such as ``Signed-off-by:`` removed), the gold is the set of code files the commit
modified, deleted or renamed (they existed at the parent, which is what gets indexed; added
files are left out because nothing could retrieve them there), and the repository is indexed
at the first parent. The instances then run through the same runner as SWE-bench.

Left out, because their message does not describe a code location or they are not a
developer's search: merges and root commits, reverts (``Revert "..."`` or "This reverts
commit"), bot commits (author name or email containing ``bot``, which covers
``dependabot`` and ``[bot]`` accounts, or ``renovate``), commits touching more than
:data:`MAX_FILES` files (refactors, releases), and commits that changed no existing code file.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from coderag.errors import GitError, InputError
from evals._git import require_repo
from evals.harness import ProgressFn
from evals.swebench import Instance, run_instances

if TYPE_CHECKING:
    from coderag.runtime import Runtime

__all__ = [
    "BOT_MARKERS",
    "CODE_EXTENSIONS",
    "MAX_FILES",
    "HistoryBenchmark",
    "build_history",
    "clean_message",
    "is_bot",
    "is_revert",
    "run_history",
]

MAX_FILES = 5
BOT_MARKERS = ("bot", "renovate")
"""Substrings of an author's name or email (case-insensitive) that mark an automated commit.
``bot`` alone also catches ``dependabot[bot]``, ``github-actions[bot]`` and ``*-bot``."""

CODE_EXTENSIONS = frozenset(
    {
        ".py", ".pyi", ".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".java", ".kt", ".kts",
        ".scala", ".go", ".rs", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cs",
        ".rb", ".php", ".swift", ".m", ".mm", ".lua", ".r", ".pl", ".pm", ".sh", ".bash",
        ".sql", ".dart", ".ex", ".exs", ".erl", ".hs", ".ml", ".clj", ".groovy", ".vue",
        ".svelte", ".zig", ".jl",
    }
)  # fmt: skip
"""What counts as code for the gold set: documentation and config changes are not what a
code search is asked to find."""

_TRAILER = re.compile(r"^[A-Za-z][A-Za-z-]*(?:-by|-Id|-id|-Reference)\s*:\s", re.M)
_SEP, _END = "\x1f", "\x1e"


@dataclass
class HistoryBenchmark:
    """The instances, and how many commits each rule left out (printed, not scored)."""

    repo: str
    instances: list[Instance]
    excluded: dict[str, int] = field(default_factory=dict)


def is_bot(author: str, email: str) -> bool:
    who = f"{author}\n{email}".lower()
    return any(marker in who for marker in BOT_MARKERS)


def is_revert(subject: str, body: str) -> bool:
    return subject.lower().startswith("revert") or "this reverts commit" in body.lower()


def clean_message(subject: str, body: str) -> str:
    """Subject and body without trailer lines (sign-offs carry names, not intent)."""
    lines = [ln for ln in body.splitlines() if not _TRAILER.match(ln)]
    body = "\n".join(lines).strip()
    return f"{subject.strip()}\n\n{body}" if body else subject.strip()


def _is_code(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in CODE_EXTENSIONS


def _log_records(gitdir: Path, rev_range: str) -> Iterator[list[str]]:
    """``git log`` records (sha, parents, author, email, subject, body, name-status block),
    newest first, streamed so that ``--max`` on a long history stops early."""
    fmt = _END + _SEP.join(["%H", "%P", "%an", "%ae", "%s", "%b"]) + _SEP
    cmd = [
        "git", "-c", "core.quotePath=false", "-C", str(gitdir), "log", f"--format={fmt}",
        "--name-status", "-M", "--no-color", rev_range, "--",
    ]  # fmt: skip
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    buf = ""
    finished = False
    try:
        while chunk := proc.stdout.read(1 << 16):
            buf += chunk.decode("utf-8", "replace")
            *records, buf = buf.split(_END)
            for rec in records:
                if rec.strip():
                    yield rec.split(_SEP)
        if buf.strip():
            yield buf.split(_SEP)
        finished = True
    finally:
        if not finished:
            proc.kill()
        proc.stdout.close()
        stderr = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        rc = proc.wait()
    if rc != 0:
        raise GitError(f"git log {rev_range} failed in {gitdir.name}: {stderr.strip()[:300]}")


def _changes(block: str) -> list[tuple[str, str]]:
    """(status letter, path that existed before) per changed file; added files have no
    "before" and are returned with status A and their new path."""
    out = []
    for line in block.splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0]:
            continue
        code = parts[0][0]
        out.append((code, parts[1]))  # R/C: parts[1] is the old path
    return out


def build_history(
    gitdir: Path | str,
    *,
    since: str | None = None,
    rev: str = "HEAD",
    max_n: int | None = None,
    name: str | None = None,
) -> HistoryBenchmark:
    """The newest ``max_n`` eligible commits of ``since..rev`` (all of ``rev`` without
    ``since``) as instances against repo ``name`` (default: the directory name)."""
    path = require_repo(Path(gitdir).expanduser(), "history")
    if max_n is not None and max_n < 1:
        raise InputError("max must be at least 1")
    repo = name or path.resolve().name.removesuffix(".git") or "repo"
    excluded: Counter[str] = Counter()
    instances: list[Instance] = []
    for rec in _log_records(path, f"{since}..{rev}" if since else rev):
        if max_n is not None and len(instances) >= max_n:
            break
        sha, parents, author, email, subject, body, block = (rec + [""] * 7)[:7]
        sha = sha.strip()
        parent_list = parents.split()
        reason = None
        changes = _changes(block)
        gold = sorted({p for code, p in changes if code in "MDTR" and _is_code(p)})
        if not parent_list:
            reason = "root"
        elif len(parent_list) > 1:
            reason = "merge"
        elif is_bot(author, email):
            reason = "bot"
        elif is_revert(subject, body):
            reason = "revert"
        elif len(changes) > MAX_FILES:
            reason = "too_many_files"
        elif not gold:
            reason = "no_code_file_changed"
        elif not subject.strip():
            reason = "empty_message"
        if reason:
            excluded[reason] += 1
            continue
        instances.append(
            Instance(
                instance_id=sha[:12],
                repo=repo,
                base_commit=parent_list[0],
                query=clean_message(subject, body),
                gold_files=tuple(gold),
            )
        )
    return HistoryBenchmark(repo, instances, dict(sorted(excluded.items())))


def run_history(
    runtime: Runtime,
    bench: HistoryBenchmark,
    gitdir: Path | str,
    *,
    mode: str = "hybrid",
    per_query: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run a built benchmark with the SWE-bench runner. File level only: commits carry no
    function-level gold, so that sub-dict is dropped rather than reported empty."""
    report = run_instances(
        runtime,
        bench.instances,
        {bench.repo: Path(gitdir).expanduser()},
        dataset=f"history/{bench.repo}",
        mode=mode,
        per_query=per_query,
        progress=progress,
    )
    report.pop("function_level", None)
    return report
