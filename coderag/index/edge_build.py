"""HNSW for the Edge shard, built off the request path: a copy, another process, a swap.

Qdrant Edge builds its HNSW graph only in ``EdgeShard.optimize()``, and that call holds the
GIL from start to end (qdrant-edge-py 0.9.0, measured: a thread ticking every millisecond
ticked 4 times during an 84 s optimize of 100k points, and a query issued meanwhile waited
the full 84 s). A thread cannot help, and a second process cannot open the live shard (its
WAL is locked). Without the graph every query scans: dense search over 100k points took
14 ms instead of 1.3 ms.

So the graph is built on a copy, by a child process that owns nothing else:

1. :meth:`EdgeIndex._begin_build` (under the write lock, reads go on): flush, copy the live
   shard directory to ``<collection>.g<N+1>``, start journalling every write;
2. the child (``python -m coderag.index.edge_build DIR``, niced, ``cpus - 1`` indexing
   threads) loads the copy, runs ``optimize``, flushes and exits;
3. :meth:`EdgeIndex._finish_build` loads the built copy, replays the journal into it under
   the write lock, flushes, records it as the live directory (``<collection>.active``,
   atomic), then pauses reads for the pointer swap alone and closes the old shard.

Writes keep working throughout (they go to the live shard and the journal; a journal past
:data:`JOURNAL_MAX_POINTS` abandons the build, retried later), reads keep working on the
live shard. What the process still pays: loading the built shard holds the GIL (0.1 s at
10k points, ~0.4 s at 50k), once per build. A crash at any step leaves either the old
directory live with every write, or the new one with every write replayed; leftovers are
removed when the index is next opened.

:class:`HnswBuilder` is the background thread that decides when: once the points without a
graph pass :data:`MIN_UNINDEXED_POINTS` and no write came for :data:`QUIET_SECONDS` (a bulk
index is not raced).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "CHECK_SECONDS",
    "JOURNAL_MAX_POINTS",
    "MIN_UNINDEXED_POINTS",
    "QUIET_SECONDS",
    "BuildAbandoned",
    "HnswBuilder",
    "build_in_child",
]

log = logging.getLogger(__name__)

MIN_UNINDEXED_POINTS = 20_000
"""Points without a graph before a build starts: a scan of 20k 384-dim points costs
~2.5 ms, below that a build (copy, child, load) is not worth it."""
QUIET_SECONDS = 10.0
"""No write for this long before a build starts: a bulk index still running would only
fill the journal (and its points would be scanned anyway until the next build)."""
CHECK_SECONDS = 15.0
"""How often the builder looks at the shard."""
JOURNAL_MAX_POINTS = 50_000
"""Points written during one build beyond which it is abandoned (the journal holds their
converted vectors and payloads in memory)."""
RETRY_SECONDS = 600.0
"""After a failed or abandoned build, wait this long before the next try."""


def build_in_child(
    shard_dir: Path, *, threads: int | None = None, stop: threading.Event | None = None
) -> dict[str, Any]:
    """Run ``optimize`` on the shard copy in ``shard_dir`` in a child process; its report.

    Raises ``RuntimeError`` with the child's output when it fails, :class:`BuildAbandoned`
    (the child killed) when ``stop`` is set meanwhile. ``threads``: HNSW indexing threads
    (default: one less than the CPUs, at least one, so the serving process keeps a core).
    """
    n = threads or max(1, (os.cpu_count() or 2) - 1)
    cmd = [sys.executable, "-m", "coderag.index.edge_build", str(shard_dir), str(n)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while True:
        try:
            out, err = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if stop is not None and stop.is_set():
                proc.kill()
                proc.communicate()
                raise BuildAbandoned("index closing") from None
    if proc.returncode != 0:
        raise RuntimeError(f"hnsw build exited {proc.returncode}: {err[-2000:]}")
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


class BuildableShard(Protocol):
    """What the builder needs of :class:`~coderag.index.edge.EdgeIndex` (a protocol, so this
    module does not import the index that imports it)."""

    last_write: float

    def unindexed_points(self) -> int: ...
    def _begin_build(self) -> Path: ...
    def _finish_build(self, target: Path) -> dict[str, Any]: ...
    def _abort_build(self, target: Path) -> None: ...


class HnswBuilder:
    """The background thread of one :class:`EdgeIndex` that builds its HNSW when due."""

    def __init__(self, index: BuildableShard) -> None:
        self.index = index
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one build at a time (thread or :meth:`build_now`)
        self._retry_at = 0.0
        self.last: dict[str, Any] | None = None
        """The last build's report (or its error), for ``bench`` and logs."""

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="coderag-edge-hnsw", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and any build in progress (its child is killed, its copy
        removed), and wait for them."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        with self._lock:  # a build_now of another thread has given up too
            pass

    def due(self) -> bool:
        idx = self.index
        if time.monotonic() < self._retry_at:
            return False
        if time.monotonic() - idx.last_write < QUIET_SECONDS:
            return False
        return idx.unindexed_points() >= MIN_UNINDEXED_POINTS

    def _loop(self) -> None:
        while not self._stop.wait(CHECK_SECONDS):
            try:
                if self.due():
                    self.build_now()
            except Exception:  # the index closed under us, a disk error: try again later
                log.warning("edge: background hnsw build failed", exc_info=True)
                self._retry_at = time.monotonic() + RETRY_SECONDS

    def build_now(self, *, threads: int | None = None) -> dict[str, Any]:
        """One build, now, in this thread (copy, child, swap); its report.

        The report: ``points``, ``copy_s``, ``build_s``, ``swap_s`` (journal replay and
        switch), ``load_s`` (loading the built shard: the part that holds the GIL),
        ``journal_points``; ``{"skipped": reason}`` when the build was abandoned.
        """
        with self._lock:
            idx = self.index
            t0 = time.perf_counter()
            target = idx._begin_build()
            copy_s = time.perf_counter() - t0
            try:
                if self._stop.is_set():
                    raise BuildAbandoned("index closing")
                t1 = time.perf_counter()
                child = build_in_child(target, threads=threads, stop=self._stop)
                build_s = time.perf_counter() - t1
                if self._stop.is_set():
                    raise BuildAbandoned("index closing")
                swap = idx._finish_build(target)
            except BuildAbandoned as why:
                idx._abort_build(target)
                self._retry_at = time.monotonic() + RETRY_SECONDS
                self.last = {"skipped": str(why)}
                return self.last
            except BaseException:
                idx._abort_build(target)
                raise
            self.last = {
                "points": child.get("points"),
                "copy_s": round(copy_s, 3),
                "build_s": round(build_s, 2),
                **swap,
            }
            log.info("edge: hnsw built off the request path: %s", self.last)
            return self.last


class BuildAbandoned(Exception):
    """A build given up on purpose (journal overflow, closing): retried later."""


def _child_main(argv: list[str]) -> int:
    """Entry of the child: load the copy, optimize it, flush, print a JSON line."""
    import qdrant_edge as qe

    with contextlib.suppress(OSError):
        os.nice(10)
    shard_dir, threads = argv[0], int(argv[1]) if len(argv) > 1 else 0
    t0 = time.perf_counter()
    hnsw = qe.HnswIndexConfig(
        m=16, ef_construct=100, full_scan_threshold=10_000, max_indexing_threads=threads
    )
    shard = qe.EdgeShard.load(shard_dir, _with_hnsw(shard_dir, hnsw))
    changed = shard.optimize()
    shard.flush()
    info = shard.info()
    shard.close()
    report = {
        "points": info.points_count,
        "segments": info.segments_count,
        "changed": bool(changed),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    print(json.dumps(report), flush=True)
    return 0


def _with_hnsw(shard_dir: str, hnsw: Any) -> Any:
    """The shard's own vector config with ``hnsw`` (load checks vectors for compatibility
    and keeps what is not given)."""
    import qdrant_edge as qe

    from coderag.index.base import DENSE, SPARSE

    cfg = json.loads((Path(shard_dir) / "edge_config.json").read_text())
    dense = cfg["vectors"][DENSE]
    return qe.EdgeConfig(
        vectors={DENSE: qe.EdgeVectorParams(size=int(dense["size"]), distance=qe.Distance.Cosine)},
        sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        hnsw_config=hnsw,
    )


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
