"""What every command shares: the stderr console, settings loading, common options.

Progress and human summaries go to stderr (:data:`err`); ``--json`` output goes to stdout,
so every command can be piped into ``jq`` or a report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from coderag.settings import Settings

__all__ = ["AsJson", "DataDir", "err", "load_settings"]

err = Console(stderr=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data dir (default: CODERAG_DATA_DIR).")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]


def load_settings(data_dir: Path | None = None, **overrides: Any) -> Settings:
    """The settings from the environment, with ``--data-dir`` and any other non-``None``
    override applied; a configuration error exits 2 with its reason instead of a
    traceback."""
    clean = {k: v for k, v in {"data_dir": data_dir, **overrides}.items() if v is not None}
    try:
        return Settings(**clean)
    except Exception as exc:  # pydantic ValidationError: show the reason, not a traceback
        err.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc
