"""The ``coderag`` command line (typer + rich): the composition root of every command.

Progress and human summaries go to stderr; ``--json`` output goes to stdout, so every command
can be piped into ``jq`` or a benchmark report. The commands live in their own modules:
:mod:`~coderag.cli.index` (index, search, status, warmup), :mod:`~coderag.cli.serve`,
:mod:`~coderag.cli.worker`, :mod:`~coderag.cli.repo` (the ``repo`` group),
:mod:`~coderag.cli.models` (the ``models`` group: add, build, switch, rollback), and the ``eval``
and ``bench`` groups from :mod:`evals.cli` and :mod:`bench.cli`.
"""

from __future__ import annotations

import os
import sys

# Before any model library is imported: models are exported or bundled, never downloaded.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer

from bench.cli import bench_app as _bench_app
from coderag.cli import index as _index
from coderag.cli import models as _models
from coderag.cli import repo as _repo
from coderag.cli import serve as _serve
from coderag.cli import worker as _worker
from evals.cli import eval_app as _eval_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="coderag",
    help="Self-hosted code retrieval: index repositories, search them, serve context.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
for _command in (_index.index, _index.search, _index.status, _index.warmup):
    app.command()(_command)
app.command("serve")(_serve.serve)
app.command("worker")(_worker.worker)
app.add_typer(_repo.repo_app, name="repo")
app.add_typer(_models.models_app, name="models")
app.add_typer(_eval_app, name="eval", help="Retrieval benchmarks (JSON reports).")
app.add_typer(_bench_app, name="bench")


def main() -> None:
    """The ``coderag`` entry point: logging from the environment, then the app; a coderag
    error ends the process with its code and reason (exit 1), not a traceback."""
    from coderag.cli.options import err
    from coderag.errors import CoderagError
    from coderag.logging import configure_logging

    try:
        level = os.environ.get("CODERAG_LOG_LEVEL", "WARNING")
        configure_logging(level, json_lines=os.environ.get("CODERAG_LOG_JSON", "1") != "0")
    except ValueError:
        configure_logging("WARNING")
    try:
        app()
    except CoderagError as exc:
        err.print(f"[red]error ({exc.error_code}):[/red] {exc.detail}")
        sys.exit(1)
