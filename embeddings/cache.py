"""Content-addressed, on-disk embedding cache.

Embedding is the expensive stage of indexing, and most chunks recur: across commits of one
branch, across branches, across forks and vendored copies in other repos. Keyed by
(model id, sha256 of the exact text embedded), a vector is computed once per model and then
read back in microseconds, whatever repo, branch or commit asks for it again.

SQLite (stdlib) in WAL mode: readers never block, one writer at a time with a busy timeout,
so several processes on the same box (the API, Celery workers, the CLI) can share one file.
Vectors are raw little-endian float32 blobs. ``synchronous=NORMAL`` can lose the last
transactions on power loss but never corrupts the file; a lost entry is simply recomputed.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["CACHE_FILENAME", "EmbeddingCache", "text_key"]

CACHE_FILENAME = "embeddings.sqlite3"
_CHUNK = 500  # keys per SELECT: stays far below SQLite's bound-parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS vectors (
    model INTEGER NOT NULL,
    key   BLOB    NOT NULL,
    vec   BLOB    NOT NULL,
    PRIMARY KEY (model, key)
) WITHOUT ROWID;
"""


def text_key(text: str) -> bytes:
    """The 32-byte sha256 of ``text`` (UTF-8; lone surrogates kept, never a crash)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class EmbeddingCache:
    """Batch get/put of float32 vectors by (model id, text key).

    Thread-safe (one SQLite connection per thread) and multi-process safe (WAL, busy
    timeout). Opening is cheap and lazy: the file is created on first use.
    """

    def __init__(self, directory: Path | str, *, timeout: float = 60.0) -> None:
        self.path = Path(directory) / CACHE_FILENAME
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._model_ids: dict[str, int] = {}
        self._closed = False

    # --- connections ---------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise RuntimeError("EmbeddingCache is closed")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection per thread; check_same_thread=False only so close() may close them all.
        conn = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        with self._write(conn):  # executescript() would commit on its own: run one by one
            for statement in _statements():
                conn.execute(statement)
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    @staticmethod
    @contextmanager
    def _write(conn: sqlite3.Connection) -> Iterator[None]:
        """One write transaction; ``IMMEDIATE`` takes the write lock up front, so two writers
        queue on the busy timeout instead of deadlocking on a lock upgrade."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _model_id(self, conn: sqlite3.Connection, model: str, *, create: bool) -> int | None:
        mid = self._model_ids.get(model)
        if mid is not None:
            return mid
        row = conn.execute("SELECT id FROM models WHERE name = ?", (model,)).fetchone()
        if row is None:
            if not create:
                return None
            with self._write(conn):
                conn.execute("INSERT OR IGNORE INTO models (name) VALUES (?)", (model,))
                row = conn.execute("SELECT id FROM models WHERE name = ?", (model,)).fetchone()
        self._model_ids[model] = int(row[0])
        return int(row[0])

    # --- API -----------------------------------------------------------------------------
    def get(self, model: str, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        """Cached vectors for ``keys`` in order; ``None`` for a miss."""
        out: list[np.ndarray | None] = [None] * len(keys)
        if not keys:
            return out
        conn = self._conn()
        mid = self._model_id(conn, model, create=False)
        if mid is None:
            return out
        found: dict[bytes, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), _CHUNK):
            part = unique[i : i + _CHUNK]
            marks = ",".join("?" * len(part))
            rows = conn.execute(
                f"SELECT key, vec FROM vectors WHERE model = ? AND key IN ({marks})",
                (mid, *part),
            ).fetchall()
            for key, blob in rows:
                found[bytes(key)] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        for i, key in enumerate(keys):
            out[i] = found.get(key)
        return out

    def put(self, model: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store ``vectors[i]`` under ``keys[i]``; existing entries are left as they are
        (same model, same text: same vector)."""
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        if not keys:
            return
        conn = self._conn()
        mid = self._model_id(conn, model, create=True)
        data = np.ascontiguousarray(vectors, dtype="<f4")
        rows = [(mid, key, data[i].tobytes()) for i, key in enumerate(keys)]
        with self._write(conn):
            conn.executemany(
                "INSERT OR IGNORE INTO vectors (model, key, vec) VALUES (?, ?, ?)", rows
            )

    def count(self, model: str | None = None) -> int:
        """Number of cached vectors (of one model, or of all)."""
        conn = self._conn()
        if model is None:
            return int(conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
        mid = self._model_id(conn, model, create=False)
        if mid is None:
            return 0
        row = conn.execute("SELECT COUNT(*) FROM vectors WHERE model = ?", (mid,)).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close every connection this object opened (all threads). Idempotent."""
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _statements() -> list[str]:
    return [s.strip() for s in _SCHEMA.split(";") if s.strip()]
