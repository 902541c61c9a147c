"""``coderag repo ...``: repositories with indexing on (GitLab hooks).

The ``repo`` commands act on the configured backend directly (the local data dir in embedded
mode, Qdrant + the broker in distributed mode): in embedded mode they run the indexing in the
foreground, in distributed mode they enqueue it for the workers. In embedded mode a running
``coderag serve`` owns the index; stop it, or use the HTTP API (``POST /v1/repos``), which
does the same.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from coderag.cli.options import AsJson, DataDir, err, load_settings
from coderag.errors import ConfigError
from coderag.settings import Settings

if TYPE_CHECKING:
    from coderag.runtime import Runtime

__all__ = ["repo_app"]

repo_app = typer.Typer(help="Repositories with indexing on (GitLab hooks).", no_args_is_help=True)


class _Session:
    """What a repo command needs: registry, dispatcher and (embedded) the runtime."""

    def __init__(self, settings: Settings, *, need_runtime: bool) -> None:
        from coderag.index.factory import open_index
        from coderag.repos import RepoRegistry

        self.settings = settings
        self.runtime: Runtime | None = None
        self.dispatcher: Any = None
        if need_runtime and not settings.distributed:
            from coderag.runtime import build_runtime
            from indexer.queue import EmbeddedDispatcher

            self.runtime = build_runtime(settings)
            self.runtime.warm_up()
            self.index = self.runtime.index
            self.dispatcher = EmbeddedDispatcher(self.runtime, debounce=0.0)
        else:
            self.index = open_index(settings)
            if settings.distributed:
                from indexer.queue import CeleryDispatcher

                self.dispatcher = CeleryDispatcher(settings)
        self.registry = RepoRegistry(self.index)

    def wait(self) -> None:
        """Embedded mode: run what was submitted, in the foreground."""
        if self.runtime is not None:
            with err.status("indexing..."):
                self.dispatcher.wait_idle(timeout=7 * 24 * 3600)

    def close(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.close()
        if self.runtime is not None:
            self.runtime.close()
        else:
            self.index.close()

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _print_runs(session: _Session, repo_id: str) -> None:
    runs = session.registry.branch_runs(repo_id)
    if not runs:
        return
    t = Table(title=f"{repo_id}: last run per branch")
    for col in ("branch", "commit", "mode", "seconds", "error"):
        t.add_column(col)
    for run in sorted(runs.values(), key=lambda r: str(r.get("branch"))):
        t.add_row(
            str(run.get("branch")),
            str(run.get("commit") or "")[:12],
            str(run.get("mode")),
            str(run.get("seconds", "")),
            str(run.get("error") or ""),
        )
    err.print(t)


@repo_app.command("add")
def repo_add(
    url: Annotated[
        str,
        typer.Argument(
            help="https://GITLAB/group/project (or a git path/URL "
            "with --id, without a GitLab token)"
        ),
    ],
    branches: Annotated[str, typer.Option(help="Comma-separated fnmatch patterns.")] = "main",
    repo_id: Annotated[str | None, typer.Option("--id", help="Repo id (manual mode).")] = None,
    signed: Annotated[
        bool,
        typer.Option(
            "--signed",
            help="Give the hook a signing token too (needs CODERAG_SECRET_KEY): unsigned "
            "deliveries are then refused.",
        ),
    ] = False,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Turn indexing on: create the project hook, store the repo, run its first full index.
    The webhook secret is printed once."""
    from webhooks.gitlab_hooks import register_repo

    settings = load_settings(data_dir)
    patterns = [b.strip() for b in branches.split(",") if b.strip()]
    with _Session(settings, need_runtime=True) as s:
        reg = register_repo(
            settings, s.registry, s.dispatcher, url, patterns, repo_id=repo_id, signed=signed
        )
        s.wait()
        if as_json:
            print(json.dumps(reg.as_dict(), indent=2))
        else:
            err.print(
                f"registered [bold]{reg.record.id}[/bold] ({', '.join(patterns)}), "
                f"hook {reg.record.hook_id or 'manual'}"
            )
            err.print(f"webhook secret (shown once): [bold]{reg.secret}[/bold]")
            if reg.signing_token:
                err.print(f"signing token (shown once): [bold]{reg.signing_token}[/bold]")
            elif reg.record.signed:
                err.print("signed deliveries: the signing token went to GitLab's hook")
            if reg.warning:
                err.print(f"[yellow]{reg.warning}[/yellow]")
            _print_runs(s, reg.record.id)


@repo_app.command("list")
def repo_list(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Registered repositories."""
    settings = load_settings(data_dir)
    with _Session(settings, need_runtime=False) as s:
        recs = [r.public() for r in s.registry.list()]
    if as_json:
        print(json.dumps(recs, indent=2))
        return
    t = Table(title=f"{len(recs)} repositories")
    for col in ("repo", "branches", "hook", "last run", "last error"):
        t.add_column(col)
    for r in recs:
        last = r.get("last_run") or {}
        when = last.get("indexed_at") or last.get("failed_at")
        t.add_row(
            r["id"],
            ", ".join(r["branches"]),
            str(r.get("hook_id") or "manual"),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(when)) if when else "-",
            r.get("last_error") or "",
        )
    err.print(t)


@repo_app.command("status")
def repo_status(
    repo_id: Annotated[str, typer.Argument(help="group/project")],
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Per branch: indexed commit, chunks, last run, lag and error."""
    from coderag.status import repo_status as compute

    settings = load_settings(data_dir)
    with _Session(settings, need_runtime=False) as s:
        coord = getattr(s.dispatcher, "coordinator", None)
        st = compute(s.index, s.registry, coord, repo_id)
    if st is None:
        err.print(f"[red]unknown repository:[/red] {repo_id}")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(st, indent=2, default=str))
        return
    t = Table(title=f"{repo_id}: {st['chunks']} chunks")
    for col in ("branch", "commit", "chunks", "pending", "lag s", "last error"):
        t.add_column(col)
    for b in st["branches"]:
        t.add_row(
            b["branch"],
            str(b["commit"] or "")[:12],
            str(b["chunks"]),
            str(b["pending_commit"] or "")[:12],
            str(b["lag_seconds"]),
            str(b["last_error"] or ""),
        )
    err.print(t)


@repo_app.command("reindex")
def repo_reindex(
    repo_id: Annotated[str, typer.Argument(help="group/project")],
    full: Annotated[bool, typer.Option(help="Scan whole trees (else catch up to heads).")] = True,
    data_dir: DataDir = None,
) -> None:
    """Re-index every selected branch (embedded: now; distributed: by the workers)."""
    settings = load_settings(data_dir)
    with _Session(settings, need_runtime=True) as s:
        rec = s.registry.require(repo_id)
        task_id = s.dispatcher.submit_reindex(rec.id, full=full)
        s.wait()
        err.print(f"reindex of {rec.id}: task {task_id}")
        _print_runs(s, rec.id)


@repo_app.command("remove")
def repo_remove(
    repo_id: Annotated[str, typer.Argument(help="group/project")],
    data_dir: DataDir = None,
) -> None:
    """Delete the project hook and every point of the repository."""
    from webhooks.gitlab_hooks import remove_repo

    settings = load_settings(data_dir)
    with _Session(settings, need_runtime=True) as s:
        if s.dispatcher is None:  # pragma: no cover - both modes build one
            raise ConfigError("no dispatcher")
        task_id = remove_repo(settings, s.registry, s.dispatcher, repo_id)
        s.wait()
    err.print(f"removed {repo_id} (task {task_id})")
