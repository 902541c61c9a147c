"""Idempotency-Key de-duplication of webhook deliveries.

GitLab sends the same ``Idempotency-Key`` on every retry of one delivery (it retries when we
answer slowly or with a 5xx). The first delivery claims the key; later ones are answered
"duplicate" without enqueuing. A claim is released when the enqueue fails, so the retry that
GitLab makes after our 503 is not mistaken for a duplicate.

Distributed mode claims in Redis (SET NX with a TTL, shared by every API replica); embedded
mode in a bounded in-memory TTL map.
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
    def claim(self, key: str) -> bool:
        """True the first time ``key`` is seen within the TTL, False for a duplicate."""

    def release(self, key: str) -> None:
        """Forget a claim (the delivery was not processed after all)."""


class RedisDeduper:
    def __init__(self, client: Any, *, ttl: int = DEDUPE_TTL_S, prefix: str = "coderag:idem:"):
        self.r = client
        self.ttl = ttl
        self.prefix = prefix

    def claim(self, key: str) -> bool:
        try:
            return bool(self.r.set(self.prefix + key, b"1", nx=True, ex=self.ttl))
        except Exception as exc:  # redis ConnectionError / TimeoutError
            raise TransientError(f"redis unavailable: {type(exc).__name__}") from exc

    def release(self, key: str) -> None:
        try:
            self.r.delete(self.prefix + key)
        except Exception as exc:  # the claim expires on its own
            raise TransientError(f"redis unavailable: {type(exc).__name__}") from exc


class MemoryDeduper:
    """Keys with an expiry, oldest evicted past ``max_entries`` (bounded memory)."""

    def __init__(self, *, ttl: float = DEDUPE_TTL_S, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._mu = threading.Lock()

    def claim(self, key: str) -> bool:
        now = time.monotonic()
        with self._mu:
            while self._seen:  # drop expired entries from the old end
                oldest, exp = next(iter(self._seen.items()))
                if exp > now and len(self._seen) <= self.max_entries:
                    break
                del self._seen[oldest]
            exp = self._seen.get(key)
            if exp is not None and exp > now:
                return False
            self._seen[key] = now + self.ttl
            self._seen.move_to_end(key)
            return True

    def release(self, key: str) -> None:
        with self._mu:
            self._seen.pop(key, None)


def deduper_for(redis_client: Any | None) -> Deduper:
    """Redis-backed when the app has a Redis client (distributed), in-memory otherwise."""
    return RedisDeduper(redis_client) if redis_client is not None else MemoryDeduper()
