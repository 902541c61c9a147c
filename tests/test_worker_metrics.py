"""The worker's Prometheus exporter (``coderag worker --metrics-port``, 9808 by default), which
compose and Kubernetes scrape and use as the worker's health check.

* a real ``coderag worker --pool solo`` process on Redis db 10 serves ``/metrics`` on its
  port: ``coderag_queue_depth`` read from the broker at scrape time, the coderag metric
  names, and on SIGTERM it stops and removes its multiprocess dir;
* a port already in use is a clear start-up error;
* the exporter of a parent process exports what forked children recorded (how prefork
  workers run their tasks), through prometheus_client's multiprocess mode.

The worker needs a Qdrant server (an Edge index has one owner process); there is none in the
sandbox, so its warm-up fails and is logged while the process, and its exporter, stay up.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.redis_support import redis_url

pytestmark = pytest.mark.integration

BROKER = redis_url(10)
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(BROKER)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def worker_env(tmp_path: Path, model_dir: Path, broker: str = BROKER) -> dict[str, str]:
    """The worker's environment: its own Redis db, no Qdrant (nothing at that port: its
    warm-up fails and is logged, the exporter stays up), a private multiprocess dir."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CODERAG_", "PROMETHEUS_")) and k.lower() != "prometheus_multiproc_dir"
    }
    (tmp_path / "tmp").mkdir()
    env.update(
        CODERAG_CELERY_BROKER_URL=broker,
        CODERAG_REDIS_URL=broker,
        CODERAG_QDRANT_URL=f"http://127.0.0.1:{free_port()}",
        CODERAG_DATA_DIR=str(tmp_path / "data"),
        CODERAG_MODEL_EXPORT_DIR=str(model_dir),
        HF_HUB_OFFLINE="1",
        TMPDIR=str(tmp_path / "tmp"),  # where the worker's multiprocess dir goes
    )
    return env


def coderag_worker(*args: str) -> list[str]:
    return [sys.executable, "-c", "from coderag.cli import main; main()", "worker", *args]


def metrics_dirs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "tmp").glob("coderag-worker-metrics-*"))


def test_worker_exports_metrics_on_its_port(
    tmp_path: Path, model_dir: Path, broker: redis.Redis
) -> None:
    env = worker_env(tmp_path, model_dir)
    broker.lpush("embed", b"{}")  # one message waiting on a queue this worker does not consume
    port = free_port()
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            coderag_worker(
                *("--pool", "solo", "--queues", "git,index", "--loglevel", "WARNING"),
                *("--metrics-port", str(port), "--metrics-host", "127.0.0.1"),
            ),
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                resp = httpx.get(url, timeout=5, trust_env=False)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the exporter never answered"
                time.sleep(0.1)
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        got = samples(resp.text)
        assert got[("coderag_queue_depth", (("queue", "embed"),))] == 1.0
        for queue in ("git", "index", "pending"):
            assert got[("coderag_queue_depth", (("queue", queue),))] == 0.0
        assert ("coderag_chunks_embedded_total", ()) in got
        assert "# TYPE coderag_queue_depth gauge" in resp.text
        # read at scrape time, not at start: the next scrape sees the queue grow
        broker.lpush("embed", b"{}")
        again = samples(httpx.get(url, timeout=5, trust_env=False).text)
        assert again[("coderag_queue_depth", (("queue", "embed"),))] == 2.0
        [mp_dir] = metrics_dirs(tmp_path)  # prometheus_client's multiprocess dir, per worker
        assert list(mp_dir.glob("*.db"))
        # still serving once Celery runs (its banner is out, after the warm-up: the model
        # loads, seconds on an idle machine, then the index fails): then SIGTERM is Celery's
        # warm shutdown, after which the exporter stops and the dir goes too
        deadline = time.monotonic() + 300
        while b"[queues]" not in log.read_bytes():
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.1)
        assert httpx.get(url, timeout=5, trust_env=False).status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            pytest.fail("the worker did not stop on SIGTERM")
    assert proc.returncode in (0, 128 + signal.SIGTERM), log.read_text(errors="replace")[-3000:]
    assert metrics_dirs(tmp_path) == []  # removed on exit
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=2, trust_env=False)


def test_worker_refuses_a_busy_metrics_port(tmp_path: Path, model_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            coderag_worker(
                *("--pool", "solo", "--metrics-port", str(port), "--metrics-host", "127.0.0.1")
            ),
            env={**worker_env(tmp_path, model_dir), "COLUMNS": "200"},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "--metrics-port" in result.stderr
    assert metrics_dirs(tmp_path) == []


CHILDREN = r"""
import os, sys, urllib.request

from indexer.worker_metrics import prepare_multiprocess_dir, start_exporter

mp_dir = prepare_multiprocess_dir()                # as `coderag worker` does, before any import
exporter = start_exporter(0, "127.0.0.1", depths=lambda: {"index": 3}, multiproc_dir=mp_dir)
assert exporter.multiprocess
for n in (1, 2):                                   # as prefork children: forked after start
    pid = os.fork()
    if pid == 0:
        from coderag.metrics import CHUNKS_EMBEDDED, TASK_DURATION

        TASK_DURATION.labels(task="index_branch", stage="total").observe(0.3 * n)
        TASK_DURATION.labels(task="index_branch", stage="embed").observe(0.1)
        CHUNKS_EMBEDDED.inc(5 * n)
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
with urllib.request.urlopen(exporter.url.replace("0.0.0.0", "127.0.0.1"), timeout=10) as r:
    sys.stdout.write(r.read().decode())
exporter.close()
"""


def test_exporter_exports_what_forked_children_recorded(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
    }
    (tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(tmp_path / "tmp")
    result = subprocess.run(
        [sys.executable, "-c", CHILDREN],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    got = samples(result.stdout)
    total = (("stage", "total"), ("task", "index_branch"))
    assert got[("coderag_task_duration_seconds_count", total)] == 2.0
    assert got[("coderag_task_duration_seconds_sum", total)] == pytest.approx(0.9)
    embed = (("stage", "embed"), ("task", "index_branch"))
    assert got[("coderag_task_duration_seconds_count", embed)] == 2.0
    assert got[("coderag_chunks_embedded_total", ())] == 15.0
    assert got[("coderag_queue_depth", (("queue", "index"),))] == 3.0
    assert metrics_dirs(tmp_path) == []  # the parent removed its dir at exit


def test_a_branch_run_records_its_stages_without_double_counting_chunks() -> None:
    """What the worker processes record per run (the API's embedded executor too). Embedded
    chunks are counted by the indexing service as it embeds, never again per run."""
    from prometheus_client import REGISTRY

    from indexer.jobs import _observe

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    count = "coderag_task_duration_seconds_count"
    before = (
        value("coderag_chunks_embedded_total"),
        value(count, task="index_branch", stage="total"),
        value(count, task="index_branch", stage="embed"),
    )
    report = {"chunks_embedded": 7, "stage_seconds": {"embed": 0.2, "write": 0.1}}
    _observe({"action": "index", "report": report}, 0.5)
    assert value("coderag_chunks_embedded_total") == before[0]
    assert value(count, task="index_branch", stage="total") == before[1] + 1
    assert value(count, task="index_branch", stage="embed") == before[2] + 1
    _observe({"action": "delete", "chunks_removed": 3}, 0.1)  # deletions embed nothing
    assert value("coderag_chunks_embedded_total") == before[0]
