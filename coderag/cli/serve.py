"""``coderag serve``: the API under uvicorn, one process.

In the embedded default that one process owns the Edge shard, answers searches, and runs the
indexing that webhooks enqueue in a background thread (the dispatcher's embedded executor),
so there is nothing else to start.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from coderag.cli.options import DataDir, load_settings

__all__ = ["serve"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default CODERAG_API_HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default CODERAG_API_PORT).")] = None,
    data_dir: DataDir = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING...")] = None,
) -> None:
    """Serve the API (search, Continue, webhooks, metrics); embedded mode also indexes here."""
    import uvicorn

    from coderag.api.app import create_app
    from coderag.logging import configure_logging

    settings = load_settings(data_dir, log_level=log_level)
    configure_logging(settings.log_level, json_lines=settings.log_json)
    bind = host or settings.api_host
    if not settings.api_tokens and bind not in _LOOPBACK:
        logging.getLogger(__name__).warning(
            "auth is disabled (CODERAG_API_TOKENS is empty) on a non-loopback address: "
            "anyone who can reach %s can read every indexed repository",
            bind,
        )
    uvicorn.run(
        create_app(settings),
        host=bind,
        port=port or settings.api_port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
