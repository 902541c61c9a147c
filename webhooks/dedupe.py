"""Idempotency-Key de-duplication of webhook deliveries.

GitLab sends the same ``Idempotency-Key`` on every retry of one delivery (it retries when we
answer slowly or with a 5xx). A key is remembered only **after** its push was handed to the
dispatcher, and a delivery whose key is remembered is answered "duplicate" without
enqueuing. Remembering after, not claiming before, is what makes "accepted means recorded"
hold when Redis dies mid-delivery: a claim taken before a failed enqueue could not always be
released (Redis was the thing that failed), and GitLab's retry would then have been answered
"duplicate" for a push nobody recorded. The price is that two copies of one delivery racing
each other may both be enqueued, which is harmless: pushes of one branch fold into one run.

Distributed mode remembers in Redis (shared by every API replica, with a TTL); embedded mode
in a bounded in-memory TTL map.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

from coderag.errors import TransientError

__all__ = ["DEDUPE_TTL_S", "Deduper", "MemoryDeduper", "RedisDeduper", "deduper_for"]

DEDUPE_TTL_S = 24 * 3600
"""GitLab gives up retrying a delivery well within a day."""


class Deduper(Protocol):
    def seen(self, key: str) -> bool:
        """True when a delivery with ``key`` was recorded within the TTL."""

    def remember(self, key: str) -> None:
        """Record ``key``: its push reached the dispatcher."""


class RedisDeduper:
    def __init__(self, client: Any, *, ttl: int = DEDUPE_TTL_S, prefix: str = "coderag:idem:"):
        self.r = client
        self.ttl = ttl
        self.prefix = prefix

    def seen(self, key: str) -> bool:
        try:
            return bool(self.r.exists(self.prefix + key))
        except Exception as exc:  # redis ConnectionError / TimeoutError
            raise TransientError(f"redis unavailable: {type(exc).__name__}") from exc

    def remember(self, key: str) -> None:
        try:
            self.r.set(self.prefix + key, b"1", ex=self.ttl)
        except Exception as exc:
            raise TransientError(f"redis unavailable: {type(exc).__name__}") from exc


class MemoryDeduper:
    """Keys with an expiry, oldest evicted past ``max_entries`` (bounded memory)."""

    def __init__(self, *, ttl: float = DEDUPE_TTL_S, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._mu = threading.Lock()

    def seen(self, key: str) -> bool:
        with self._mu:
            exp = self._seen.get(key)
            return exp is not None and exp > time.monotonic()

    def remember(self, key: str) -> None:
        now = time.monotonic()
        with self._mu:
            while self._seen:  # drop expired entries from the old end
                oldest, exp = next(iter(self._seen.items()))
                if exp > now and len(self._seen) < self.max_entries:
                    break
                del self._seen[oldest]
            self._seen[key] = now + self.ttl
            self._seen.move_to_end(key)


def deduper_for(redis_client: Any | None) -> Deduper:
    """Redis-backed when the app has a Redis client (distributed), in-memory otherwise."""
    return RedisDeduper(redis_client) if redis_client is not None else MemoryDeduper()
