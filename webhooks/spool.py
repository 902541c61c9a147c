"""The durable webhook spool: a verified delivery is on disk before GitLab gets its 2xx.

GitLab sends each delivery once. A failure (any 4xx, 5xx, or no answer within 10 s) is logged
on GitLab's side and never re-sent unless a person presses "Resend request", and four failures
in a row disable the hook (gitlabhq ``app/services/web_hook_service.rb``,
``app/models/concerns/web_hooks/auto_disabling.rb``). So the webhook never answers with an
outage of its own: it writes the push to this spool (SQLite, WAL, ``synchronous=FULL``: the
row is fsynced when ``add`` returns), answers 202, and a forwarder hands spooled pushes to the
dispatcher whenever the broker is reachable, in arrival order, retrying with a capped backoff.

The spool is also the de-duplication record: a delivery's ``Idempotency-Key`` (the same as the
signed ``webhook-id``, and the same again on a manual resend) is unique per project, so a
repeated delivery, or a replayed signed one, is answered "duplicate" and forwarded once.
Forwarded rows are kept for ``retention_s`` for that purpose, then pruned.

Besides pushes the spool holds the two jobs a rename or transfer asks for (``kind``
``reindex``: index the project under its new path; ``remove``: drop the old path's points), so
they too survive a broker outage and a restart.

One spool file per data dir; several processes may share it (SQLite locks; a row is claimed
with a conditional UPDATE, so two forwarders never hand over the same row at once). It must
be on a local disk (SQLite's WAL needs shared memory; a network filesystem is not safe), which
is why several API replicas each keep their own spool. Handing a row over twice after a crash
between "submitted" and "marked" is harmless: pushes of one branch fold into one run, a run of
an indexed commit does nothing, and reindex and remove are idempotent.

If the spool itself cannot be written (disk full, read-only volume) :meth:`WebhookSpool.add`
raises :class:`SpoolError`, a 503: nothing else durable would hold the delivery.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coderag.errors import CoderagError, TransientError

__all__ = [
    "KIND_PUSH",
    "KIND_REINDEX",
    "KIND_REMOVE",
    "Forwarder",
    "SpoolError",
    "SpoolStats",
    "SpooledPush",
    "WebhookSpool",
]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key TEXT UNIQUE,
    repo TEXT NOT NULL,
    branch TEXT NOT NULL,
    sha TEXT NOT NULL,
    received_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_at REAL,
    forwarded_at REAL,
    task_id TEXT,
    last_error TEXT,
    kind TEXT NOT NULL DEFAULT 'push'
);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state, id);
"""

KIND_PUSH = "push"
"""``dispatcher.submit_push(repo, branch, sha, received_at)``."""
KIND_REINDEX = "reindex"
"""``dispatcher.submit_reindex(repo, full=False)``: index a renamed project under its new
path (the embedding cache makes that cost no model calls)."""
KIND_REMOVE = "remove"
"""``dispatcher.submit_remove(repo, received_at)``: drop the points of a path a project
left; ``received_at`` is the removal's request time (a later registration supersedes it)."""
_KINDS = {KIND_PUSH, KIND_REINDEX, KIND_REMOVE}


class SpoolError(CoderagError):
    """The spool could not be written: the one outage the webhook answers with a 503."""

    error_code = "spool_unavailable"
    http_status = 503

CLAIM_TIMEOUT_S = 60.0
"""A row claimed longer ago than this belongs to a forwarder that died: it is taken again."""


@dataclass(frozen=True, slots=True)
class SpooledPush:
    """One accepted push, as the spool keeps it until the dispatcher has it."""

    id: int
    repo: str
    branch: str
    sha: str
    received_at: float
    attempts: int = 0
    kind: str = KIND_PUSH


@dataclass(frozen=True, slots=True)
class SpoolStats:
    pending: int
    forwarded: int
    failed: int
    oldest_pending_age_s: float | None


class WebhookSpool:
    """SQLite-backed, fsynced on every write. Cheap to build; opens its file lazily per thread."""

    def __init__(self, path: Path, *, retention_s: float = 7 * 24 * 3600) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._mu = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"webhook spool {self.path}: {exc}") from exc
        with self._conn() as db:
            db.executescript(_SCHEMA)
            cols = {r[1] for r in db.execute("PRAGMA table_info(deliveries)").fetchall()}
            if "kind" not in cols:  # a spool written before jobs were spooled too
                db.execute("ALTER TABLE deliveries ADD COLUMN kind TEXT NOT NULL DEFAULT 'push'")

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        try:
            db = getattr(self._local, "db", None)
            if db is None:
                db = sqlite3.connect(
                    self.path, timeout=30.0, isolation_level=None, check_same_thread=False
                )
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # fsync on every commit, WAL included
                db.execute("PRAGMA busy_timeout=30000")
                self._local.db = db
                with self._mu:
                    self._all.append(db)
            yield db
        except sqlite3.Error as exc:
            raise SpoolError(f"webhook spool {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close every thread's connection (at shutdown; a later call reopens lazily)."""
        with self._mu:
            conns, self._all = self._all, []
        for db in conns:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._local = threading.local()

    # ------------------------------------------------------------------ writes
    def add(
        self,
        repo: str,
        branch: str,
        sha: str,
        received_at: float,
        dedupe_key: str | None,
        *,
        kind: str = KIND_PUSH,
    ) -> SpooledPush | None:
        """Spool one push (or job, see ``kind``) durably: fsynced when this returns.
        ``None`` when ``dedupe_key`` was already spooled; :class:`SpoolError` when the
        spool cannot be written."""
        if kind not in _KINDS:
            raise ValueError(f"unknown spool row kind {kind!r}")
        with self._conn() as db:
            try:
                cur = db.execute(
                    "INSERT INTO deliveries (dedupe_key, repo, branch, sha, received_at, kind) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (dedupe_key or None, repo, branch, sha, received_at, kind),
                )
            except sqlite3.IntegrityError:
                return None
        return SpooledPush(int(cur.lastrowid or 0), repo, branch, sha, received_at, 0, kind)

    def seen(self, dedupe_key: str) -> bool:
        """Whether a row with this key is in the spool (any state)."""
        with self._conn() as db:
            row = db.execute(
                "SELECT 1 FROM deliveries WHERE dedupe_key=? LIMIT 1", (dedupe_key,)
            ).fetchone()
        return row is not None

    def claim(self, row_id: int) -> bool:
        """Take one pending row for forwarding (False: someone else has it, or it is done)."""
        now = time.time()
        with self._conn() as db:
            cur = db.execute(
                "UPDATE deliveries SET state='forwarding', claimed_at=?, attempts=attempts+1 "
                "WHERE id=? AND (state='pending' OR (state='forwarding' AND claimed_at<?))",
                (now, row_id, now - CLAIM_TIMEOUT_S),
            )
        return cur.rowcount == 1

    def mark_forwarded(self, row_id: int, task_id: str | None) -> None:
        with self._conn() as db:
            db.execute(
                "UPDATE deliveries SET state='forwarded', forwarded_at=?, task_id=?, "
                "last_error=NULL WHERE id=?",
                (time.time(), task_id, row_id),
            )

    def release(self, row_id: int, error: str) -> None:
        """Give a claimed row back (the broker is down): it is tried again later."""
        with self._conn() as db:
            db.execute(
                "UPDATE deliveries SET state='pending', claimed_at=NULL, last_error=? WHERE id=?",
                (error[:500], row_id),
            )

    def mark_failed(self, row_id: int, error: str) -> None:
        """A push the dispatcher refused for good (e.g. the repo was removed meanwhile)."""
        with self._conn() as db:
            db.execute(
                "UPDATE deliveries SET state='failed', last_error=? WHERE id=?",
                (error[:500], row_id),
            )

    def prune(self, now: float | None = None) -> int:
        """Drop forwarded and failed rows older than the retention (their keys are forgotten)."""
        cutoff = (now or time.time()) - self.retention_s
        with self._conn() as db:
            cur = db.execute(
                "DELETE FROM deliveries WHERE state IN ('forwarded', 'failed') AND received_at<?",
                (cutoff,),
            )
        return cur.rowcount

    # ------------------------------------------------------------------ reads
    def pending(self, limit: int = 100, *, min_age: float = 0.0) -> list[SpooledPush]:
        """Rows waiting for the dispatcher, oldest first (stale claims included).

        ``min_age``: only rows received at least that many seconds ago (the background
        drain leaves a just-spooled row to the request that is forwarding it inline).
        """
        now = time.time()
        with self._conn() as db:
            rows = db.execute(
                "SELECT id, repo, branch, sha, received_at, attempts, kind FROM deliveries "
                "WHERE (state='pending' OR (state='forwarding' AND claimed_at<?)) "
                "AND received_at<=? ORDER BY id LIMIT ?",
                (now - CLAIM_TIMEOUT_S, now - min_age, limit),
            ).fetchall()
        return [SpooledPush(*r) for r in rows]

    def get(self, row_id: int) -> dict[str, Any] | None:
        with self._conn() as db:
            cur = db.execute("SELECT * FROM deliveries WHERE id=?", (row_id,))
            row = cur.fetchone()
            names = [d[0] for d in cur.description]
        return dict(zip(names, row, strict=True)) if row is not None else None

    def stats(self) -> SpoolStats:
        with self._conn() as db:
            counts = dict(
                db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()
            )
            oldest = db.execute(
                "SELECT MIN(received_at) FROM deliveries WHERE state IN ('pending','forwarding')"
            ).fetchone()[0]
        return SpoolStats(
            pending=int(counts.get("pending", 0)) + int(counts.get("forwarding", 0)),
            forwarded=int(counts.get("forwarded", 0)),
            failed=int(counts.get("failed", 0)),
            oldest_pending_age_s=None if oldest is None else max(0.0, time.time() - oldest),
        )


class Forwarder:
    """Hands spooled rows to the dispatcher: at once when it can, later when it cannot.

    :meth:`forward` is called inline by the webhook right after spooling (the common case:
    the push reaches the queue before the 202 leaves). A daemon thread drains whatever is left
    (broker down, a process restarted with rows in the spool) every ``interval`` seconds, or
    sooner when :meth:`wake` is called, with a backoff capped at ``max_backoff`` seconds while
    the broker stays down.

    While the last attempt failed (:attr:`broker_down`) the webhook does not try inline at
    all: each try against a dead broker costs up to a second or two, and GitLab waits only
    10 s for the answer. The thread keeps trying and clears the flag on its first success.
    """

    def __init__(
        self,
        spool: WebhookSpool,
        dispatcher: Any,
        *,
        interval: float = 1.0,
        max_backoff: float = 10.0,
        min_age: float = 2.0,
    ) -> None:
        self.spool = spool
        self.dispatcher = dispatcher
        self.interval = interval
        self.max_backoff = max_backoff
        self.min_age = min_age
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.forwarded = 0
        self.broker_down = False
        self.last_error: str | None = None

    def _submit(self, row: SpooledPush) -> str | None:
        d = self.dispatcher
        if row.kind == KIND_REINDEX:
            return d.submit_reindex(row.repo, full=False)
        if row.kind == KIND_REMOVE:
            return d.submit_remove(row.repo, row.received_at)
        return d.submit_push(row.repo, row.branch, row.sha, row.received_at)

    def forward(self, push: SpooledPush) -> str | None:
        """Try to hand one row over now. Returns the task id (``None``: another forwarder
        has the row, or the dispatcher refused it for good); raises :class:`TransientError`
        when the broker is down (the row stays spooled for the thread)."""
        if not self.spool.claim(push.id):
            return None  # another forwarder has it, or it is done
        try:
            task_id = self._submit(push)
        except TransientError as exc:
            self._down(str(exc))
            self.spool.release(push.id, str(exc))
            raise
        except CoderagError as exc:
            self.spool.mark_failed(push.id, str(exc))
            log.warning(
                "spooled push refused by the dispatcher",
                extra={"repo": push.repo, "branch": push.branch, "error": str(exc)},
            )
            return None
        except Exception as exc:  # keep the row: an unknown failure is retried, never lost
            self._down(f"{type(exc).__name__}: {exc}")
            self.spool.release(push.id, f"{type(exc).__name__}: {exc}")
            raise TransientError(f"dispatcher failed: {type(exc).__name__}") from exc
        self.spool.mark_forwarded(push.id, task_id)
        self.forwarded += 1
        self.broker_down = False
        return task_id

    def _down(self, error: str) -> None:
        if not self.broker_down:
            log.warning("broker unavailable, webhook deliveries stay spooled: %s", error)
        self.broker_down = True
        self.last_error = error

    def drain(self, *, min_age: float = 0.0) -> int:
        """Forward every pending row, oldest first; stops at the first broker failure."""
        n = 0
        while True:
            batch = self.spool.pending(100, min_age=min_age)
            if not batch:
                return n
            for push in batch:
                self.forward(push)  # TransientError propagates: stop, back off
                n += 1
            if len(batch) < 100:
                return n

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> Forwarder:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="coderag-spool-forwarder", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0, *, drain: bool = False) -> int:
        """Stop the thread. ``drain``: then try once to hand over what is left (a process
        shutting down with the broker up leaves an empty spool, even on a volume that does
        not outlive it); returns how many rows that forwarded."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        if not drain or self.broker_down:
            return 0
        try:
            return self.drain()
        except Exception as exc:  # shutting down: the rows stay spooled for the next start
            log.warning("spooled deliveries left for the next start: %s", exc)
            return 0

    def _loop(self) -> None:
        backoff = self.interval
        last_prune = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                # While the broker is down every row is the thread's, however young.
                n = self.drain(min_age=0.0 if self.broker_down else self.min_age)
                if n:
                    log.info("forwarded spooled pushes", extra={"count": n})
                backoff = self.interval
                if time.time() - last_prune > 3600:
                    self.spool.prune()
                    last_prune = time.time()
            except TransientError:
                backoff = min(self.max_backoff, max(self.interval, backoff * 2))
            except Exception:  # never let the forwarder die
                log.exception("spool forwarder failed")
                backoff = min(self.max_backoff, max(self.interval, backoff * 2))
            self._wake.wait(backoff)
