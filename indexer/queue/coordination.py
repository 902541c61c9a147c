"""Who runs what, per (repo, branch): pending commits, "a run is scheduled" flags, run locks.

The folding rule: several pushes to one branch in a short window become ONE indexing run of
the newest commit. Three pieces make it safe across processes:

- ``pending``: the newest commit pushed and not yet indexed, with a monotonic sequence
  number, replaced atomically by every push (the queue never holds one task per push);
- ``scheduled``: a flag set with SET NX by whoever enqueues a run. A push only enqueues when
  it wins the flag; the run holding the lock clears the flag *before* it reads ``pending``,
  so a push either sees the flag and is picked up by that read, or wins the flag and
  enqueues a new run. No push is lost and no burst makes more than one queued task;
- ``lock``: one run at a time per branch, with an expiry renewed while the run is alive,
  so a crashed worker frees the branch by itself.

The flag is first taken as a short *lease* (:data:`SCHEDULE_LEASE_S`) and only extended to
:data:`SCHEDULE_TTL_S` once the task is on the broker (``confirm_schedule``): when the send
fails and Redis is too sick to clear the flag, a flag naming a task that was never queued
must not fold the next hour of pushes into nothing. Whatever still slips through (a worker
killed mid-run, a task lost with the broker) leaves a pending commit with no flag and no
lock, which :mod:`indexer.queue.recovery` finds and re-schedules.

Two implementations with the same semantics: :class:`RedisCoordinator` (distributed mode, any
number of processes) and :class:`MemoryCoordinator` (embedded mode, one process, no Redis).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from coderag.errors import TransientError

__all__ = [
    "Coordinator",
    "MemoryCoordinator",
    "Pending",
    "RedisCoordinator",
    "new_task_id",
]

SCHEDULE_TTL_S = 3600
"""How long a "run scheduled" flag lives. Past it, a lost task (expired, purged queue) stops
blocking new pushes from scheduling; a duplicate it lets through is harmless (serialized by
the lock, then finds nothing pending)."""
SCHEDULE_LEASE_S = 30
"""Life of a freshly claimed flag until the claimer confirms its task is queued."""
LOCK_TTL_S = 60.0
"""Expiry of a branch lock; renewed every third of it while the run is alive
(``settings.branch_lock_ttl_seconds`` in workers)."""


@dataclass(frozen=True, slots=True)
class Pending:
    """The newest not-yet-indexed event of one branch (``sha`` all zeros: delete it)."""

    sha: str
    seq: int
    received_at: float
    first_received_at: float
    pushes: int = 1
    full: bool = False

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> Pending:
        return cls(
            sha=str(raw["sha"]),
            seq=int(raw["seq"]),
            received_at=float(raw["received_at"]),
            first_received_at=float(raw.get("first_received_at", raw["received_at"])),
            pushes=int(raw.get("pushes", 1)),
            full=str(raw.get("full", "0")) in ("1", "True", "true"),
        )


class Coordinator(Protocol):
    """Pending commits, schedule flags and locks of branches (see the module docstring)."""

    def record(
        self, repo: str, branch: str, sha: str, received_at: float, *, full: bool = False
    ) -> int:
        """Make ``sha`` the newest pending commit of the branch; returns its sequence."""

    def claim_schedule(self, repo: str, branch: str, task_id: str) -> str | None:
        """Set the flag to ``task_id`` unless set: ``None`` if won, else the scheduled id."""

    def confirm_schedule(self, repo: str, branch: str, task_id: str) -> None:
        """``task_id`` is queued: extend its flag from the lease to the full TTL."""

    def release_schedule(self, repo: str, branch: str) -> None:
        """Clear the flag; only a lock holder calls it, right before reading ``pending``."""

    def pending(self, repo: str, branch: str) -> Pending | None: ...

    def consume(self, repo: str, branch: str, seq: int) -> bool:
        """Drop the pending entry if no newer push replaced it (compare-and-delete)."""

    def lock(self, repo: str, branch: str) -> contextlib.AbstractContextManager[bool]:
        """Try (without waiting) to own the branch; yields whether it was acquired."""

    def forget_repo(self, repo: str) -> None:
        """Drop every pending entry and flag of a repository (after it is removed)."""

    def pending_count(self) -> int: ...

    def pending_branches(self) -> list[tuple[str, str]]:
        """(repo, branch) of every pending entry."""

    def schedule_age(self, repo: str, branch: str) -> float | None:
        """Seconds since the flag's task was confirmed queued; ``None`` without a confirmed
        flag (no flag, or a lease that lapses by itself)."""

    def is_locked(self, repo: str, branch: str) -> bool: ...


# ----------------------------------------------------------------------------- Redis
_RECORD = """
local seq = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('HSET', KEYS[1], 'sha', ARGV[1], 'seq', seq, 'received_at', ARGV[2])
redis.call('HSETNX', KEYS[1], 'first_received_at', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'pushes', 1)
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'full', '1') end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return seq
"""

_CONSUME = """
if redis.call('HGET', KEYS[1], 'seq') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

_CONFIRM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

PENDING_TTL_S = 7 * 24 * 3600
"""A pending commit nobody ran for a week is dropped (its branch is re-indexed on the next
push anyway: indexing always diffs against what the index holds, not against the payload)."""


def _translate_redis(exc: Exception) -> TransientError:
    return TransientError(f"redis unavailable: {type(exc).__name__}: {exc}")


class RedisCoordinator:
    """Coordination through one Redis (``settings.redis_url``), shared by API and workers."""

    def __init__(self, client: Any, *, prefix: str = "coderag", lock_ttl: float = LOCK_TTL_S):
        self.r = client
        self.prefix = prefix
        self.lock_ttl = lock_ttl
        self._record = client.register_script(_RECORD)
        self._consume = client.register_script(_CONSUME)
        self._confirm = client.register_script(_CONFIRM)

    def _k(self, kind: str, repo: str, branch: str = "") -> str:
        # ':' is in no GitLab path and no git ref name (only in the fixed "tag:" label
        # prefix, after the repo), so the first ':' after the repo ends it unambiguously.
        return f"{self.prefix}:{kind}:{repo}:{branch}"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        import redis

        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise _translate_redis(exc) from exc

    def record(
        self, repo: str, branch: str, sha: str, received_at: float, *, full: bool = False
    ) -> int:
        with self._errors():
            keys = [self._k("pending", repo, branch), self._k("seq", repo, branch)]
            args = [sha, repr(received_at), "1" if full else "0", PENDING_TTL_S, PENDING_TTL_S]
            return int(self._record(keys=keys, args=args))

    def claim_schedule(self, repo: str, branch: str, task_id: str) -> str | None:
        key = self._k("scheduled", repo, branch)
        with self._errors():
            for _ in range(3):
                if self.r.set(key, task_id, nx=True, ex=SCHEDULE_LEASE_S):
                    return None
                current = self.r.get(key)
                if current is not None:
                    return _s(current)
        return None  # pragma: no cover - the flag flapped three times: treat as won

    def confirm_schedule(self, repo: str, branch: str, task_id: str) -> None:
        with self._errors():
            self._confirm(keys=[self._k("scheduled", repo, branch)], args=[task_id, SCHEDULE_TTL_S])

    def release_schedule(self, repo: str, branch: str) -> None:
        with self._errors():
            self.r.delete(self._k("scheduled", repo, branch))

    def pending(self, repo: str, branch: str) -> Pending | None:
        with self._errors():
            raw = self.r.hgetall(self._k("pending", repo, branch))
        if not raw or (b"sha" not in raw and "sha" not in raw):
            return None
        return Pending.from_mapping({_s(k): _s(v) for k, v in raw.items()})

    def consume(self, repo: str, branch: str, seq: int) -> bool:
        with self._errors():
            return bool(self._consume(keys=[self._k("pending", repo, branch)], args=[seq]))

    @contextlib.contextmanager
    def lock(self, repo: str, branch: str) -> Iterator[bool]:
        with self._errors():
            lk = self.r.lock(
                self._k("lock", repo, branch), timeout=self.lock_ttl, thread_local=False
            )
            acquired = lk.acquire(blocking=False)
        if not acquired:
            yield False
            return
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(lk, stop), name=f"lock-renew {repo}:{branch}", daemon=True
        )
        renewer.start()
        try:
            yield True
        finally:
            stop.set()
            renewer.join(timeout=5)
            with contextlib.suppress(Exception):  # expired or Redis gone: it frees itself
                lk.release()

    def _renew(self, lk: Any, stop: threading.Event) -> None:
        while not stop.wait(self.lock_ttl / 3):
            try:
                lk.reacquire()
            except Exception:  # lost the lock or Redis: the run ends on its own
                return

    def forget_repo(self, repo: str) -> None:
        with self._errors():
            for kind in ("pending", "scheduled", "seq"):
                for key in self.r.scan_iter(match=f"{self.prefix}:{kind}:{_glob_escape(repo)}:*"):
                    self.r.delete(key)

    def pending_count(self) -> int:
        with self._errors():
            return sum(1 for _ in self.r.scan_iter(match=f"{self.prefix}:pending:*"))

    def pending_branches(self) -> list[tuple[str, str]]:
        head = f"{self.prefix}:pending:"
        out = []
        with self._errors():
            for key in self.r.scan_iter(match=f"{head}*", count=500):
                repo, sep, branch = _s(key).removeprefix(head).partition(":")
                if sep:
                    out.append((repo, branch))
        return sorted(out)

    def schedule_age(self, repo: str, branch: str) -> float | None:
        with self._errors():
            ttl = int(self.r.ttl(self._k("scheduled", repo, branch)))
        if ttl <= SCHEDULE_LEASE_S:  # none (-2), no expiry (-1) or a lease
            return None
        return float(SCHEDULE_TTL_S - ttl)

    def is_locked(self, repo: str, branch: str) -> bool:
        with self._errors():
            return bool(self.r.exists(self._k("lock", repo, branch)))


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _glob_escape(s: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in s)


# ----------------------------------------------------------------------------- memory
class MemoryCoordinator:
    """The same semantics inside one process (embedded mode): dicts under one lock."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._pending: dict[tuple[str, str], Pending] = {}
        self._seq: dict[tuple[str, str], int] = {}
        self._scheduled: dict[tuple[str, str], tuple[str, float]] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def record(
        self, repo: str, branch: str, sha: str, received_at: float, *, full: bool = False
    ) -> int:
        key = (repo, branch)
        with self._mu:
            seq = self._seq.get(key, 0) + 1
            self._seq[key] = seq
            prev = self._pending.get(key)
            self._pending[key] = Pending(
                sha=sha,
                seq=seq,
                received_at=received_at,
                first_received_at=prev.first_received_at if prev else received_at,
                pushes=(prev.pushes if prev else 0) + 1,
                full=full or bool(prev and prev.full),
            )
            return seq

    def claim_schedule(self, repo: str, branch: str, task_id: str) -> str | None:
        key = (repo, branch)
        now = time.monotonic()
        with self._mu:
            cur = self._scheduled.get(key)
            if cur is not None and cur[1] > now:
                return cur[0]
            self._scheduled[key] = (task_id, now + SCHEDULE_TTL_S)
            return None

    def confirm_schedule(self, repo: str, branch: str, task_id: str) -> None:
        return None  # in-process queueing cannot fail after the claim: nothing to confirm

    def release_schedule(self, repo: str, branch: str) -> None:
        with self._mu:
            self._scheduled.pop((repo, branch), None)

    def pending(self, repo: str, branch: str) -> Pending | None:
        with self._mu:
            return self._pending.get((repo, branch))

    def consume(self, repo: str, branch: str, seq: int) -> bool:
        with self._mu:
            cur = self._pending.get((repo, branch))
            if cur is not None and cur.seq == seq:
                del self._pending[(repo, branch)]
                return True
            return False

    @contextlib.contextmanager
    def lock(self, repo: str, branch: str) -> Iterator[bool]:
        with self._mu:
            lk = self._locks.setdefault((repo, branch), threading.Lock())
        acquired = lk.acquire(blocking=False)
        try:
            yield acquired
        finally:
            if acquired:
                lk.release()

    def forget_repo(self, repo: str) -> None:
        with self._mu:
            for d in (self._pending, self._scheduled):
                for key in [k for k in d if k[0] == repo]:
                    del d[key]

    def pending_count(self) -> int:
        with self._mu:
            return len(self._pending)

    def pending_branches(self) -> list[tuple[str, str]]:
        with self._mu:
            return sorted(self._pending)

    def schedule_age(self, repo: str, branch: str) -> float | None:
        with self._mu:
            cur = self._scheduled.get((repo, branch))
        if cur is None or cur[1] <= time.monotonic():
            return None
        return time.monotonic() - (cur[1] - SCHEDULE_TTL_S)

    def is_locked(self, repo: str, branch: str) -> bool:
        with self._mu:
            lk = self._locks.get((repo, branch))
        return lk is not None and lk.locked()


def new_task_id() -> str:
    """Celery-compatible task id (a uuid4 string)."""
    return str(uuid.uuid4())
