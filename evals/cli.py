"""``coderag eval ...``: every benchmark figure comes from one of these commands.

The report JSON goes to stdout (and to ``--json OUT`` when given); progress bars and
summaries go to stderr, so ``coderag eval beir ... | jq .metrics`` works.

``--model NAME`` runs a benchmark with a registered embedding model (``coderag models
list``) instead of the serving one, on its own temporary index: the way to compare a
candidate model with the current one on the site's own history before switching::

    coderag eval history REPO --model default --json a.json
    coderag eval history REPO --model coderank --json b.json
    coderag eval compare a.json b.json

Every report says which model made it (``"model": {"name", "id"}``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from evals.harness import MODES, ProgressFn, check_mode, eval_runtime

__all__ = ["eval_app"]

eval_app = typer.Typer(
    help="Retrieval benchmarks on a temporary index; each prints a JSON report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
_err = Console(stderr=True)

Mode = Annotated[str, typer.Option("--mode", help=f"Search mode: {' | '.join(MODES)}.")]
_MODES_HELP = (
    f"Search mode: {' | '.join(MODES)} (default hybrid). Repeat it to run several modes on "
    'one index in one pass: the report is then {"modes": {MODE: report}}.'
)
JsonOut = Annotated[Path | None, typer.Option("--json", help="Also write the report to this file.")]
PerQuery = Annotated[
    bool, typer.Option("--per-query", help="Add each query's ranking and scores to the report.")
]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Keep the eval index here instead of a temp dir."),
]
ModelName = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Registered embedding model to evaluate (coderag models list); default: the "
        "one serving.",
    ),
]


@contextmanager
def _progress() -> Iterator[ProgressFn]:
    """Rich bars on stderr, one per stage; silent when stderr is not a terminal."""
    progress = Progress(
        TextColumn("[bold]{task.description:<6}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_err,
        disable=not _err.is_terminal and os.environ.get("CODERAG_PROGRESS") != "1",
    )
    tasks: dict[str, Any] = {}

    def fn(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total)
        progress.update(tasks[stage], completed=done, total=max(total, done))

    with progress:
        yield fn


def _emit(report: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(report, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    print(text)


def _checkpointer(out: Path | None) -> Callable[[dict[str, Any]], None] | None:
    """With ``--json``: the report so far is written there (atomically) after every
    instance, marked ``"partial"``, and the final report replaces it."""
    if out is None:
        return None
    from coderag.atomic import atomic_write

    out.parent.mkdir(parents=True, exist_ok=True)

    def write(report: dict[str, Any]) -> None:
        atomic_write(out, json.dumps(report, indent=2) + "\n")

    return write


def _run(
    job: Callable[[Any, ProgressFn], dict[str, Any]],
    data_dir: Path | None,
    model: str | None = None,
) -> dict[str, Any]:
    with _runtime(data_dir, model) as runtime, _progress() as progress:
        report = job(runtime, progress)
        report["model"] = {"name": runtime.model, "id": runtime.embedder.model_id}
        return report


@contextmanager
def _runtime(data_dir: Path | None, model: str | None) -> Iterator[Any]:
    """The eval runtime (:func:`evals.harness.eval_runtime`: a temporary Edge index, the
    shared embedding cache and exports) with ``model``, or the serving model, as its model."""
    from coderag.index.factory import DEFAULT_MODEL
    from coderag.models_registry import ModelRegistry
    from coderag.settings import Settings

    base = Settings()
    registry = ModelRegistry.of(base)
    if model is None and not registry.exists():
        with eval_runtime(base, data_dir=data_dir) as runtime:
            yield runtime
        return
    from coderag.model_active import active_model

    name = model or active_model(base)
    spec = registry.spec(name, base)
    with eval_runtime(base, data_dir=data_dir, model=None if name == DEFAULT_MODEL else spec) as rt:
        yield rt


@eval_app.command("beir")
def beir_cmd(
    directory: Annotated[
        Path, typer.Argument(help="BEIR dir: corpus.jsonl, queries.jsonl, qrels.tsv.")
    ],
    mode: Mode = "hybrid",
    limit: Annotated[
        int | None, typer.Option(help="First N scorable queries (corpus stays whole).")
    ] = None,
    ext: Annotated[str, typer.Option(help="Extension of the materialised documents.")] = ".py",
    json_out: JsonOut = None,
    per_query: PerQuery = False,
    data_dir: DataDir = None,
    model: ModelName = None,
) -> None:
    """Query -> document retrieval over the full corpus (e.g. CoSQA dev)."""
    from evals.beir import load_beir, run_beir

    check_mode(mode)
    dataset = load_beir(directory)
    report = _run(
        lambda rt, pg: run_beir(
            rt, dataset, mode=mode, limit=limit, ext=ext, per_query=per_query, progress=pg
        ),
        data_dir,
        model,
    )
    _emit(report, json_out)


@eval_app.command("swebench")
def swebench_cmd(
    instances: Annotated[Path, typer.Argument(help="instances.jsonl (SWE-bench layout).")],
    repo: Annotated[
        list[str] | None,
        typer.Option("--repo", help="owner/name=GITDIR, once per repository (repeatable)."),
    ] = None,
    mode: Annotated[
        list[str] | None,
        typer.Option(
            "--mode",
            help=_MODES_HELP,
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="First N instances of the file.")] = None,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Also write the report to this file; it holds the report so far (marked "
            "partial) after every instance, so a stopped eval keeps what it measured.",
        ),
    ] = None,
    per_query: PerQuery = False,
    data_dir: DataDir = None,
    model: ModelName = None,
) -> None:
    """Issue -> files (and functions) to change, each repository indexed at base_commit."""
    from evals.swebench import parse_repo_map, run_swebench

    modes = [check_mode(m) for m in (mode or ["hybrid"])]
    repo_dirs = parse_repo_map(repo or [])
    if not repo_dirs:
        _err.print("[yellow]no --repo given: every instance will be skipped[/yellow]")
    report = _run(
        lambda rt, pg: run_swebench(
            rt,
            instances,
            repo_dirs,
            mode=modes[0],
            modes=modes if len(modes) > 1 else None,
            limit=limit,
            per_query=per_query,
            progress=pg,
            checkpoint=_checkpointer(json_out),
        ),
        data_dir,
        model,
    )
    _emit(report, json_out)


@eval_app.command("history")
def history_cmd(
    gitdir: Annotated[Path, typer.Argument(help="A local git repository (bare or not).")],
    since: Annotated[str | None, typer.Option(help="Only commits after REV (REV..HEAD).")] = None,
    rev: Annotated[str, typer.Option(help="Newest commit to consider.")] = "HEAD",
    max_n: Annotated[
        int | None, typer.Option("--max", help="Newest N eligible commits (default 100).")
    ] = 100,
    name: Annotated[str | None, typer.Option(help="Repo name in the report.")] = None,
    mode: Mode = "hybrid",
    json_out: JsonOut = None,
    per_query: PerQuery = False,
    data_dir: DataDir = None,
    model: ModelName = None,
) -> None:
    """Commit message -> files it changed, from the repository's own history."""
    from evals.history import build_history, run_history

    check_mode(mode)
    bench = build_history(gitdir, since=since, rev=rev, max_n=max_n, name=name)
    left_out = ", ".join(f"{k}: {v}" for k, v in bench.excluded.items()) or "none"
    _err.print(f"history: {len(bench.instances)} commits kept; left out {left_out}")
    report = _run(
        lambda rt, pg: run_history(rt, bench, gitdir, mode=mode, per_query=per_query, progress=pg),
        data_dir,
        model,
    )
    _emit(report, json_out)


@eval_app.command("compare")
def compare_cmd(
    reports: Annotated[list[Path], typer.Argument(help="Report JSON files.")],
    png: Annotated[
        Path | None,
        typer.Option(help="Bar chart to write (default: compare.png next to the first report)."),
    ] = None,
) -> None:
    """Markdown table of several reports on stdout, and a PNG bar chart."""
    from evals.compare import compare

    out = png if png is not None else reports[0].parent / "compare.png"
    print(compare(reports, out))
    _err.print(f"chart: {out}")
