"""``coderag worker``: a Celery worker of the distributed mode.

It checks what cannot work before starting (no broker, an Edge index that workers cannot
share, unknown queue names), then runs Celery with the Prometheus exporter in the parent
process.
"""

from __future__ import annotations

import os
import signal
import threading
from enum import StrEnum
from typing import Annotated

import typer

from coderag.cli.options import DataDir, err, load_settings

__all__ = ["Pool", "worker"]


class Pool(StrEnum):
    """Celery execution pools (``--pool``)."""

    prefork = "prefork"
    solo = "solo"
    threads = "threads"


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues: git, index, embed (GPU workers).")
    ] = "git,index",
    concurrency: Annotated[
        int | None, typer.Option(help="Processes/threads (default: CPU count; solo: 1).")
    ] = None,
    pool: Annotated[
        Pool, typer.Option(help="prefork (CPU), solo or threads (GPU: never fork after CUDA).")
    ] = Pool.prefork,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    metrics_port: Annotated[
        int,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Prometheus exporter port (/metrics; the container health check). 0: off.",
        ),
    ] = 9808,
    metrics_host: Annotated[
        str,
        typer.Option(
            "--metrics-host",
            help="Exporter bind address (all interfaces: Prometheus scrapes from elsewhere).",
        ),
    ] = "0.0.0.0",
    data_dir: DataDir = None,
) -> None:
    """Run a Celery worker (distributed mode).

    The model and the index load once per worker process, after the fork. The Prometheus
    exporter runs in the parent process and exports the metrics of every worker process
    (prometheus_client's multiprocess mode). GPU workers:
    --queues embed --pool solo (never fork after CUDA init).
    """
    import indexer.queue.worker  # noqa: F401 - installs the job context and the worker signals
    from indexer.queue import QUEUES, create_celery

    settings = load_settings(data_dir)
    if not settings.distributed:
        err.print(
            "[red]no broker:[/red] set CODERAG_CELERY_BROKER_URL (embedded mode runs the "
            "tasks inside `coderag serve`)"
        )
        raise typer.Exit(2)
    if settings.resolved_backend == "edge":
        err.print(
            "[red]an Edge index has one owner process:[/red] workers need a Qdrant "
            "server (CODERAG_QDRANT_URL)"
        )
        raise typer.Exit(2)
    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = sorted(set(wanted) - set(QUEUES))
    if not wanted or unknown:
        err.print(
            f"[red]unknown queue(s):[/red] {', '.join(unknown) or '(none)'}; "
            f"known: {', '.join(QUEUES)}"
        )
        raise typer.Exit(2)
    argv = [
        "worker",
        f"--queues={','.join(wanted)}",
        f"--pool={pool.value}",
        f"--loglevel={loglevel}",
    ]
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    multiproc_dir = None
    if metrics_port:
        # Before anything imports prometheus_client: each worker process, prefork children
        # included, writes its metrics there, and the exporter reads them all.
        from indexer.worker_metrics import prepare_multiprocess_dir

        multiproc_dir = prepare_multiprocess_dir()
        if threading.current_thread() is threading.main_thread():
            # A stop before Celery installs its warm-shutdown handler still unwinds (exit
            # handlers remove the metrics dir) instead of dying on the default action.
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
    celery_app = create_celery(settings)
    exporter = None
    if metrics_port:
        from indexer.queue import CeleryDispatcher
        from indexer.worker_metrics import start_exporter

        depths = CeleryDispatcher(settings, app=celery_app).queue_depths
        try:
            exporter = start_exporter(
                metrics_port, metrics_host, depths=depths, multiproc_dir=multiproc_dir
            )
        except OSError as exc:
            err.print(
                f"[red]cannot serve metrics on {metrics_host}:{metrics_port}:[/red] {exc} "
                "(--metrics-port: another port, or 0 to turn the exporter off)"
            )
            raise typer.Exit(2) from exc
        err.print(f"metrics on {exporter.url}")
    try:
        celery_app.worker_main(argv)
    finally:
        if exporter is not None:
            exporter.close()
