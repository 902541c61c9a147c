"""``coderag index``, ``search``, ``status`` and ``warmup``: the local index from the shell.

``index``, ``search`` and ``status`` build a runtime (settings, embedder, index) for the one
operation. In embedded mode the Edge index has one owner process, so they need the data dir
to themselves: stop a running ``coderag serve`` first, or use the HTTP API.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from coderag.cli.options import DataDir, err, load_settings
from coderag.settings import Settings

__all__ = ["index", "search", "status", "warmup"]


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<6}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal and os.environ.get("CODERAG_PROGRESS") != "1",
    )


def _progress_fn(progress: Progress):  # type: ignore[no-untyped-def]
    tasks: dict[str, Any] = {}

    def fn(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total)
        progress.update(tasks[stage], completed=done, total=max(total, done))

    return fn


def index(
    source: Annotated[str, typer.Argument(help="Local path (git repo or folder) or git URL.")],
    repo: Annotated[str | None, typer.Option(help="Repo name (default: folder name).")] = None,
    branch: Annotated[str | None, typer.Option(help="Branch (default: the repo's HEAD).")] = None,
    commit: Annotated[
        str | None, typer.Option(help="Index this commit instead of the head.")
    ] = None,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Index a repository (full the first time, incremental after)."""
    from coderag.runtime import build_runtime
    from indexer.git import GitRepo
    from indexer.mirrors import mirror_for_url

    settings = load_settings(data_dir)
    path, name = _resolve_source(source, settings, mirror_for_url)
    git = GitRepo(path)
    br = branch or (git.head_branch() if git.is_repo() else None) or "main"
    with build_runtime(settings) as rt, _progress() as progress:
        report = rt.indexer.index(path, repo or name, br, commit, _progress_fn(progress))
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    t = Table(title=f"indexed {report.repo}@{report.branch} ({report.mode})", show_header=False)
    t.add_row("commit", report.commit[:12])
    t.add_row("files", f"{report.files_indexed} indexed / {report.files_seen} seen")
    t.add_row(
        "chunks",
        f"{report.chunks_total} chunked, {report.chunks_embedded} embedded, "
        f"{report.chunks_written} written, {report.chunks_removed} removed",
    )
    skipped = ", ".join(f"{k}: {v}" for k, v in report.skipped_by_reason().items()) or "none"
    t.add_row("skipped", skipped)
    t.add_row("fallbacks", str(report.fallbacks))
    found = ", ".join(f"{k}: {v}" for k, v in sorted(report.secrets_redacted.items()))
    t.add_row("secrets redacted", found or "none")
    if report.secrets_redacted_files:
        t.add_row("  in files", Text(_files_cell(report.secrets_redacted_files)))
    if report.secrets_allowed:
        kept = ", ".join(f"{k}: {v}" for k, v in sorted(report.secrets_allowed.items()))
        t.add_row("secrets allowed", f"{kept} (kept by the allow-list)")
        t.add_row("  in files", Text(_files_cell(report.secrets_allowed_files)))
    if report.redact_allow_errors:
        t.add_row("allow-list refused", Text("\n".join(report.redact_allow_errors)))
    t.add_row("seconds", f"{report.seconds:.2f}")
    err.print(t)


_FILES_SHOWN = 10


def _files_cell(files: dict[str, dict[str, int]]) -> str:
    """The files with the most findings, one a line with their kinds (``--json`` has more):
    what an operator reads to rotate a real secret or confirm a fake is one."""
    from indexer.service import files_by_findings

    top = files_by_findings(files)
    lines = [
        f"{path} ({', '.join(f'{k}: {n}' for k, n in kinds.items())})"
        for path, kinds in top[:_FILES_SHOWN]
    ]
    more = len(top) - _FILES_SHOWN
    if more > 0:
        lines.append(f"... and {more} more file{'s' if more > 1 else ''} (see --json)")
    return "\n".join(lines)


def _resolve_source(source: str, settings: Settings, mirror_for_url):  # type: ignore[no-untyped-def]
    if "://" in source or source.startswith("git@"):
        path = mirror_for_url(source, settings)
        name = source.rstrip("/").removesuffix(".git").split(":")[-1]
        name = "/".join(name.split("/")[-2:])
        return path, name
    path = Path(source).expanduser().resolve()
    if not path.exists():
        err.print(f"[red]no such path:[/red] {source}")
        raise typer.Exit(2)
    return path, path.name


def search(
    query: Annotated[str, typer.Argument(help="What to look for (prose, identifiers, paths).")],
    repo: Annotated[list[str] | None, typer.Option(help="Restrict to repo(s).")] = None,
    branch: Annotated[str | None, typer.Option()] = None,
    path: Annotated[list[str] | None, typer.Option("--path", help="Path glob(s).")] = None,
    language: Annotated[list[str] | None, typer.Option()] = None,
    mode: Annotated[str, typer.Option(help="hybrid | dense | lexical")] = "hybrid",
    k: Annotated[int, typer.Option("-k", help="Number of results.")] = 10,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Search the index."""
    from coderag.runtime import build_runtime

    settings = load_settings(data_dir)
    with build_runtime(settings) as rt:
        t0 = time.perf_counter()
        hits = rt.retriever.search(
            query,
            repos=repo,
            branch=branch,
            path_globs=path,
            languages=language,
            k=k,
            mode=mode,  # type: ignore[arg-type]
        )
        ms = (time.perf_counter() - t0) * 1000
    if as_json:
        print(json.dumps([_hit_json(h) for h in hits], indent=2))
        return
    for i, h in enumerate(hits, 1):
        err.print(
            f"[bold]{i}. {h.repo}:{h.path}:{h.start_line}-{h.end_line}[/bold] "
            f"[dim]{h.symbol} ({h.kind}) score {h.score:.3f}[/dim]"
        )
        snippet = "\n".join(h.text.splitlines()[:8])
        err.print(snippet, markup=False, highlight=False)
        err.print()
    err.print(f"[dim]{len(hits)} results in {ms:.0f} ms[/dim]")


def _hit_json(h: Any) -> dict[str, Any]:
    return {
        "repo": h.repo,
        "path": h.path,
        "start_line": h.start_line,
        "end_line": h.end_line,
        "symbol": h.symbol,
        "kind": h.kind,
        "language": h.language,
        "score": round(h.score, 5),
        "branches": list(h.branches),
        "commit": h.commit,
        "text": h.text,
    }


def status(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """What is indexed, and how fresh: per branch the indexed commit, GitLab's head, lag in
    seconds and commits, the last reconciliation; per repository the hook's health."""
    from coderag.index import SearchFilter, branch_state_prefix
    from coderag.repos import RepoRegistry
    from coderag.runtime import build_runtime
    from coderag.status import repo_status

    settings = load_settings(data_dir)
    coordinator = _coordinator(settings)
    with build_runtime(settings) as rt:
        rt.warm_up()
        states = rt.index.list_state(branch_state_prefix())
        registry = RepoRegistry(rt.index)
        names = {str(st["repo"]) for st in states.values()} | {r.id for r in registry.list()}
        repos = [
            st
            for st in (repo_status(rt.index, registry, coordinator, n) for n in sorted(names))
            if st is not None
        ]
        fresh = {(r["repo"], b["branch"]): b for r in repos for b in r["branches"]}
        rows = []
        for st in states.values():
            n = rt.index.count(SearchFilter(repos=[st["repo"]], branch=st["branch"]))
            b = fresh.get((st["repo"], st["branch"])) or {}
            rows.append({**st, "chunks": n, **{k: b.get(k) for k in _FRESHNESS}})
        total = rt.index.count()
    out = {
        "backend": settings.resolved_backend,
        "data_dir": str(settings.data_dir),
        "chunks": total,
        "branches": rows,
        "repos": [_repo_summary(r) for r in repos],
    }
    if as_json:
        print(json.dumps(out, indent=2, default=str))
        return
    t = Table(title=f"coderag index ({out['backend']}, {total} chunks)")
    for col in ("repo", "branch", "commit", "gitlab head", "behind", "lag s", "chunks"):
        t.add_column(col)
    for col in ("indexed", "reconciled"):
        t.add_column(col)
    for r in repos:
        for b in r["branches"]:
            behind = b["lag_commits"]
            t.add_row(
                r["repo"],
                b["branch"],
                (b["commit"] or "-")[:12],
                (b["gitlab_head"] or "-")[:12],
                "?" if behind is None and b["gitlab_head"] else str(behind or 0),
                f"{b['lag_seconds']:.0f}",
                str(b["chunks"]),
                _when(b["indexed_at"]),
                _when(b["last_reconciled_at"]),
            )
    err.print(t)
    hooks = [r for r in out["repos"] if r["hook"] or r["reconcile_error"]]
    if hooks:
        h = Table(title="GitLab hooks and reconciliation")
        for col in ("repo", "hook", "disabled until", "last reconciled", "error"):
            h.add_column(col)
        for r in hooks:
            hook = r["hook"] or {}
            h.add_row(
                r["repo"],
                str(hook.get("alert_status") or "-")
                + (" (re-enabled)" if hook.get("reenabled") else ""),
                str(hook.get("disabled_until") or "-"),
                _when(r["last_reconciled_at"]),
                str(r["reconcile_error"] or hook.get("error") or ""),
            )
        err.print(h)


_FRESHNESS = ("gitlab_head", "lag_commits", "lag_seconds", "last_reconciled_at")
"""The per-branch freshness fields that ``coderag status`` adds to each indexed branch."""


def _repo_summary(st: dict[str, Any]) -> dict[str, Any]:
    """A repository in ``coderag status --json``: its freshness, hook health, branches."""
    keys = ("repo", "registered", "lag_seconds", "last_reconciled_at", "reconcile_error")
    return {**{k: st.get(k) for k in keys}, "hook": st.get("hook"), "branches": st["branches"]}


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _coordinator(settings: Settings) -> Any | None:
    """The pending pushes of the distributed mode (Redis); embedded mode keeps them in the
    serving process, so a separate ``coderag status`` sees none."""
    if not settings.distributed:
        return None
    import redis

    from indexer.queue.coordination import RedisCoordinator

    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=1.0, socket_timeout=2.0
    )
    return RedisCoordinator(client)


def warmup(data_dir: DataDir = None) -> None:
    """Load (and on first use export) the embedding model, so the first request is fast."""
    from embeddings import Embedder

    settings = load_settings(data_dir)
    emb = Embedder.from_settings(settings)
    emb.warm_up()
    err.print(
        f"model {emb.model_id} ready: backend {emb.backend}, device {emb.device}, dim {emb.dim}"
    )
