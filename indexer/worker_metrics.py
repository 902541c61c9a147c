"""The Prometheus exporter of ``coderag worker`` (``--metrics-port``, 9808 by default).

Compose and Kubernetes scrape ``coderag-worker:9808/metrics`` and use it as the worker's
health check. A prefork worker is a parent process plus children that run the tasks, and
``prometheus_client`` keeps metrics per process, so the exporter uses the library's
documented multiprocess mode:

* :func:`prepare_multiprocess_dir` sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary dir,
  or the operator's, emptied) *before* ``prometheus_client`` is imported anywhere in the
  worker; every process of the worker, children forked later included, then writes its
  metrics (``coderag_task_duration_seconds``, ``coderag_chunks_embedded_total``, ...) to
  files there;
* :func:`start_exporter` serves, from the parent, a registry holding a
  ``MultiProcessCollector`` over that dir (every process's metrics, those of exited children
  included: counters and histograms stay cumulative) plus ``coderag_queue_depth``, read from
  the broker at scrape time like the API does. The parent never writes metric values itself,
  so no ``prometheus_client`` lock can be held by the exporter thread at the moment Celery
  forks a child.

If ``prometheus_client`` was already imported before :func:`prepare_multiprocess_dir` (an
in-process caller), the exporter falls back to this process's own registry: correct for
``--pool solo`` and ``threads``; prefork children's metrics are then missing (logged).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["MULTIPROC_ENV", "WorkerExporter", "prepare_multiprocess_dir", "start_exporter"]

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir() -> Path | None:
    """Set up ``PROMETHEUS_MULTIPROC_DIR`` for this worker; ``None`` when it is too late
    (``prometheus_client`` already imported without it).

    An operator's dir (the variable already set) is used and emptied: the library requires a
    clean dir at start, stale files of an earlier run would be exported as live. Otherwise a
    temporary dir is created and removed when this process exits.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if "prometheus_client.values" in sys.modules and not given:
        return None
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix="coderag-worker-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    owner = os.getpid()

    def _remove() -> None:
        if os.getpid() == owner:  # never from a forked child that runs exit handlers
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(_remove)
    return path


class _WorkerCollector:
    """Scrape time: queue depths from the broker, then the metrics of every worker process
    (multiprocess dir) or of this one (fallback)."""

    def __init__(self, depths: Callable[[], dict[str, int]] | None, path: Path | None) -> None:
        from coderag.metrics import QUEUE_DEPTH

        desc = QUEUE_DEPTH.describe()[0]
        self._name, self._doc = desc.name, desc.documentation
        self._depths = depths
        self._path = path

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(self._name, self._doc, labels=["queue"])
        if self._depths is not None:
            try:
                for queue, n in sorted(self._depths().items()):
                    family.add_metric([str(queue)], float(n))
            except Exception as exc:  # a broker outage must not fail the scrape (health check)
                log.warning("metrics: queue depths unavailable", extra={"error": repr(exc)})
        yield family
        if self._path is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            collector = MultiProcessCollector(None, path=str(self._path))
            source: Iterator[Any] = iter(collector.collect())
        else:
            from prometheus_client import REGISTRY

            source = iter(REGISTRY.collect())
        for metric in source:
            if metric.name != self._name:  # ours, read from the broker, wins
                yield metric


class WorkerExporter:
    """A running exporter: ``url`` for logs and tests, :meth:`close` to stop it."""

    def __init__(self, server: Any, thread: Any, multiprocess: bool) -> None:
        self._server = server
        self._thread = thread
        self.multiprocess = multiprocess
        host, port = server.server_address[:2]
        self.port = int(port)
        self.url = f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_exporter(
    port: int,
    host: str = "0.0.0.0",  # Prometheus scrapes workers from other containers
    *,
    depths: Callable[[], dict[str, int]] | None = None,
    multiproc_dir: Path | None = None,
) -> WorkerExporter:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread of this (parent) process.

    Raises ``OSError`` when the port cannot be bound.
    """
    from prometheus_client import CollectorRegistry, start_http_server

    import coderag.metrics  # noqa: F401 - defines every coderag metric in this process

    multiprocess = multiproc_dir is not None and os.environ.get(MULTIPROC_ENV) == str(multiproc_dir)
    if not multiprocess:
        log.warning(
            "worker metrics: multiprocess mode is off (prometheus_client was imported before "
            "%s was set); metrics of prefork children are not exported",
            MULTIPROC_ENV,
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WorkerCollector(depths, multiproc_dir if multiprocess else None))
    server, thread = start_http_server(port, addr=host, registry=registry)
    return WorkerExporter(server, thread, multiprocess)
