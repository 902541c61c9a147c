"""The queue's fixed vocabulary: task names, queue names, message expiry, retry policy.

Both dispatchers and the Celery tasks share these, so they live apart from Celery: the
embedded executor reads them without loading Celery at all. A task name and a queue name are
a contract with every worker and every message already on the broker: never rename them.
"""

from __future__ import annotations

import random

__all__ = [
    "DELETE_BRANCH",
    "EXPIRES_S",
    "INDEX_BRANCH",
    "MAX_RETRIES",
    "QUEUES",
    "QUEUE_EMBED",
    "QUEUE_GIT",
    "QUEUE_INDEX",
    "REINDEX_REPO",
    "REMOVE_REPO",
    "backoff",
]

INDEX_BRANCH = "coderag.index_branch"
DELETE_BRANCH = "coderag.delete_branch"
REINDEX_REPO = "coderag.reindex_repo"
REMOVE_REPO = "coderag.remove_repo"

QUEUE_GIT = "git"
"""Light git/bookkeeping work: listing branches for a reindex, removing a repository."""
QUEUE_INDEX = "index"
"""Pushes: incremental runs (diff, a few files embedded). The default queue."""
QUEUE_EMBED = "embed"
"""Embedding-heavy full runs when ``settings.full_index_queue == "embed"`` (GPU workers)."""
QUEUES = (QUEUE_GIT, QUEUE_INDEX, QUEUE_EMBED)

EXPIRES_S = {
    INDEX_BRANCH: 6 * 3600,
    DELETE_BRANCH: 6 * 3600,
    REINDEX_REPO: 24 * 3600,
    REMOVE_REPO: 7 * 24 * 3600,
}
"""Seconds a message may wait in a queue before it is discarded. A dropped push is not lost
work: its commit stays pending and the branch's schedule flag expires, so the next push
schedules the run again."""

MAX_RETRIES = 5
"""Retries of a :data:`indexer.jobs.RETRYABLE` failure before the task fails for good (the
pending commit stays for the next push or the orphan sweep)."""


def backoff(retries: int) -> float:
    """Exponential backoff with jitter: about 1, 2, 4, 8, 16 seconds, capped at a minute."""
    return min(60.0, 2.0**retries) * random.uniform(0.8, 1.2)
