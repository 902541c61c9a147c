"""``coderag models ...``: bring a better embedding model in without stopping the service.

``add`` checks a model directory offline and registers it; ``build`` re-embeds every served
branch into that model's own index (in the background of the running service: this command
never touches what is served); ``switch`` makes it serve, refusing an incomplete index;
``rollback`` goes back. ``list`` shows the models and how complete each index is. The steps
and their guarantees are in docs/MODELS.md and :mod:`coderag.model_switch`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from coderag.cli.options import AsJson, DataDir, err, load_settings

__all__ = ["models_app"]

models_app = typer.Typer(
    help="Embedding models: add one, build its index, switch to it, roll back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@models_app.command("add")
def add(
    path: Annotated[Path, typer.Argument(help="Local sentence-transformers model directory.")],
    name: Annotated[
        str | None, typer.Option(help="Registry name (default: from the directory name).")
    ] = None,
    query_prefix: Annotated[
        str, typer.Option(help="Text put before every query (e.g. an instruction).")
    ] = "",
    document_prefix: Annotated[str, typer.Option(help="Text put before every chunk.")] = "",
    pooling: Annotated[
        str | None, typer.Option(help="Override the pooling: mean | cls | lasttoken | max.")
    ] = None,
    max_seq_length: Annotated[
        int | None, typer.Option(help="Override the tokens read per text.")
    ] = None,
    precision: Annotated[
        str, typer.Option(help="auto | fp32 | bf16 | int8 (CPU, OpenVINO) | fp16 (CUDA).")
    ] = "auto",
    trust_remote_code: Annotated[
        bool,
        typer.Option(help="Run the modeling code shipped in the directory (CodeRankEmbed)."),
    ] = False,
    replace: Annotated[bool, typer.Option(help="Overwrite a model of that name.")] = False,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Check a model offline (load from local files, embed a probe) and register it."""
    from coderag.model_switch import add_model
    from embeddings.options import ModelOptions

    settings = load_settings(data_dir)
    options = ModelOptions(
        query_prefix=query_prefix,
        document_prefix=document_prefix,
        pooling=pooling,
        max_seq_length=max_seq_length,
        precision=precision,
        trust_remote_code=trust_remote_code,
    )
    spec = add_model(settings, path, name=name, options=options, replace=replace)
    if as_json:
        print(json.dumps({"name": spec.name, **spec.to_json()}, indent=2))
        return
    err.print(
        f"added model [bold]{spec.name}[/bold]: {spec.dim} dims, {spec.fingerprint}; "
        f"next: coderag models build {spec.name}"
    )


@models_app.command("list")
def list_models(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """The models, which one serves, and how complete each one's index is."""
    from coderag.index.factory import DEFAULT_MODEL
    from coderag.model_switch import check_shadow
    from coderag.models_registry import ModelRegistry

    settings = load_settings(data_dir)
    registry = ModelRegistry.of(settings)
    data = registry.read()
    rows: list[dict[str, Any]] = []
    for name in [DEFAULT_MODEL, *sorted(data.models)]:
        spec = registry.spec(name, settings, data)
        try:
            check = check_shadow(settings, name)
            state = "serving" if check.active == name else _state(check)
            active = check.active
        except Exception as exc:  # one unreadable index must not hide the others
            state, active = f"unknown ({getattr(exc, 'detail', exc)})", None
        rows.append(
            {
                "name": name,
                **spec.to_json(),
                "active": name == active,
                "previous": name == data.previous,
                "index": state,
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title="embedding models")
    for col in ("name", "dim", "query prefix", "doc prefix", "pooling", "max len", "index"):
        t.add_column(col)
    for r in rows:
        mark = " (previous)" if r["previous"] else ""
        t.add_row(
            f"[bold]{r['name']}[/bold]{mark}" if r["active"] else r["name"] + mark,
            str(r["dim"] or "-"),
            repr(r["query_prefix"]) if r["query_prefix"] else "-",
            repr(r["document_prefix"]) if r["document_prefix"] else "-",
            r["pooling"] or "-",
            str(r["max_seq_length"] or "-"),
            r["index"],
        )
    err.print(t)


def _state(check: Any) -> str:
    if check.complete:
        return f"complete ({check.branches} branches): ready to switch"
    extra = f", {len(check.extra)} no longer served" if check.extra else ""
    return f"incomplete: {len(check.problems)} of {check.branches} branches{extra}"


def _sources(values: list[str] | None) -> dict[str, Path]:
    out = {}
    for v in values or []:
        repo, sep, path = v.partition("=")
        if not sep or not repo or not path:
            err.print(f"[red]--source wants REPO=PATH, got {v!r}[/red]")
            raise typer.Exit(2)
        out[repo] = Path(path).expanduser().resolve()
    return out


@models_app.command("build")
def build(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            help="REPO=PATH for a repo indexed from a local path (repeatable); registered "
            "repos are read from their mirrors.",
        ),
    ] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Re-embed every served branch into NAME's own index, at the commit it is served at.
    Safe beside a running service; run again to resume or catch up."""
    from coderag.cli.index import _progress, _progress_fn
    from coderag.model_switch import build_shadow, check_shadow

    settings = load_settings(data_dir)
    with _progress() as progress:
        overall = progress.add_task("branch", total=None)

        def on_branch(t: Any, i: int, n: int) -> None:
            progress.update(overall, completed=i, total=n, description="branch")
            err.print(f"[dim]{t.label} at {t.commit[:12] or '-'}[/dim]")

        results = build_shadow(
            settings,
            name,
            sources=_sources(source),
            progress=_progress_fn(progress),
            on_branch=on_branch,
        )
        progress.update(overall, completed=len(results))
    check = check_shadow(settings, name)
    failed = [r for r in results if r.get("error")]
    if as_json:
        print(json.dumps({"results": results, "complete": check.complete}, indent=2))
    else:
        for r in results:
            what = r.get("error") or (
                f"removed ({r['removed']} chunks)" if "removed" in r else r.get("mode")
            )
            err.print(f"{r['repo']}@{r['branch']}: {what}")
        err.print(f"index of {name}: {_state(check)}")
    if failed:
        raise typer.Exit(1)


@models_app.command("switch")
def switch_cmd(
    name: Annotated[str, typer.Argument(help="Model to serve.")],
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Serve NAME (atomically), if its index is complete for every served branch."""
    from coderag.model_switch import switch

    out = switch(load_settings(data_dir), name)
    _done(out, as_json)


@models_app.command("rollback")
def rollback_cmd(
    force: Annotated[
        bool, typer.Option(help="Also when it holds branches no longer served.")
    ] = False,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Serve the previous model again (an index that lags is caught up by the next push or
    reconciliation pass)."""
    from coderag.model_switch import rollback

    out = rollback(load_settings(data_dir), force=force)
    _done(out, as_json)


def _done(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(out, indent=2))
        return
    if not out["switched"]:
        err.print(f"{out['model']} is already serving")
        return
    err.print(f"serving [bold]{out['model']}[/bold] (was {out['previous']})")
    for line in out.get("behind") or []:
        err.print(f"[yellow]behind:[/yellow] {line} (the next push or reconcile catches up)")
