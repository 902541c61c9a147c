"""Test-only: one process owns a qdrant-client local-mode index and serves it to the others.

There is no Qdrant server in the test sandbox, and both qdrant-client's local mode and a
Qdrant Edge shard can be opened by one process only. The distributed-mode tests need a Celery
worker process that writes and an API that reads the same index, so this module plays the
server: it opens ``QdrantClient(path=...)`` once and serves it over
``multiprocessing.managers.BaseManager`` on 127.0.0.1. Other processes get a proxy (every
public ``QdrantClient`` method, arguments and results pickled; pydantic models pickle
fine) and wrap it in ``ServerIndex(client=connect(...))``.

Calls are serialised under one lock on the serving side: local mode is not thread-safe, and
the manager serves each connection from its own thread.

Run: ``python -m tests.standin PATH PORT`` with ``CODERAG_STANDIN_KEY`` (hex authkey) set.
"""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any

__all__ = ["RemoteQdrant", "connect", "free_port", "serve", "start_standin"]

_KEY_ENV = "CODERAG_STANDIN_KEY"


def _exposed() -> tuple[str, ...]:
    from qdrant_client import QdrantClient

    # Explicit list: BaseManager's default probes every attribute, and QdrantClient has
    # properties that raise in local mode (grpc_collections).
    names = [n for n, _ in inspect.getmembers(QdrantClient, inspect.isfunction)]
    return (
        *(n for n in names if not n.startswith("_")),
        "get_init_options",
        "refuse_writes",
        "refused_writes",
    )


_WRITES = frozenset(
    {
        "upsert",
        "delete",
        "set_payload",
        "overwrite_payload",
        "delete_payload",
        "clear_payload",
        "batch_update_points",
        "update_vectors",
        "delete_vectors",
        "create_collection",
        "recreate_collection",
        "delete_collection",
        "create_payload_index",
    }
)
"""The calls a fault window of :meth:`_Locked.refuse_writes` fails (reads keep working)."""


class _Locked:
    """Server side: forwards to the client under one lock."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._mu = threading.Lock()
        self._refuse_until = 0.0
        self._refused = 0

    def get_init_options(self) -> dict[str, Any]:
        return dict(self._client.init_options)

    def refuse_writes(self, seconds: float) -> None:
        """Fault injection: fail every write for ``seconds`` (a server whose disk went
        read-only or full), as a Qdrant server would, with an error, not a hang."""
        with self._mu:
            self._refuse_until = time.monotonic() + seconds
            self._refused = 0

    def refused_writes(self) -> int:
        """Writes failed since the last :meth:`refuse_writes`."""
        with self._mu:
            return self._refused

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._mu:
                if name in _WRITES and time.monotonic() < self._refuse_until:
                    self._refused += 1
                    raise OSError(30, f"Read-only file system (fault injected into {name})")
                return attr(*args, **kwargs)

        return call


class _Manager(BaseManager):
    pass


class RemoteQdrant:
    """Client side: the proxy plus the one attribute ``ServerIndex`` reads (init_options)."""

    def __init__(self, proxy: Any) -> None:
        self._proxy = proxy
        self.init_options = proxy.get_init_options()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proxy, name)

    def close(self, **kwargs: Any) -> None:
        """The stand-in owns the client: closing a proxy must not close it for everyone."""


def serve(path: str, port: int, authkey: bytes) -> None:
    from qdrant_client import QdrantClient

    shared = _Locked(QdrantClient(path=path))
    _Manager.register("qdrant", callable=lambda: shared, exposed=_exposed())
    server = _Manager(address=("127.0.0.1", port), authkey=authkey).get_server()
    print("standin ready", flush=True)
    server.serve_forever()


def connect(address: tuple[str, int], authkey: bytes, timeout: float = 30.0) -> RemoteQdrant:
    _Manager.register("qdrant")
    deadline = time.monotonic() + timeout
    while True:
        try:
            mgr = _Manager(address=address, authkey=authkey)
            mgr.connect()
            return RemoteQdrant(mgr.qdrant())  # type: ignore[attr-defined]
        except (ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_standin(path: Path, authkey: bytes) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    """Spawn the serving process; returns it and its address once it answers."""
    port = free_port()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, _KEY_ENV: authkey.hex()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.standin", str(path), str(port)], cwd=root, env=env
    )
    connect(("127.0.0.1", port), authkey)  # waits until it serves
    return proc, ("127.0.0.1", port)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), bytes.fromhex(os.environ[_KEY_ENV]))
