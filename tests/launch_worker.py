"""Test-only launcher: a real Celery worker process on the index that ``tests/standin.py``
serves (the stand-in for a Qdrant server).

Exactly what ``coderag worker --pool solo`` does, except that the runtime's index is a
``ServerIndex`` over the stand-in's proxy instead of ``ServerIndex(url=...)``. Settings come
from the ``CODERAG_*`` environment like any coderag process; the stand-in's address and key
from ``CODERAG_STANDIN_ADDR`` / ``CODERAG_STANDIN_KEY``.

The reconciliation pass (:mod:`coderag.freshness`) starts as in ``coderag worker``
(``worker_ready``), on its own client of the stand-in: ``start_in_worker`` opens the index
from ``CODERAG_QDRANT_URL``, which the stand-in does not serve.

Run: ``python -m tests.launch_worker``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery

    from coderag.settings import Settings


def main() -> None:
    from coderag.index.server import ServerIndex
    from coderag.runtime import build_runtime
    from coderag.settings import Settings
    from indexer.queue import QUEUES, context_for, create_celery, install_context
    from tests.standin import connect

    settings = Settings()
    host, port = os.environ["CODERAG_STANDIN_ADDR"].rsplit(":", 1)
    client = connect((host, int(port)), bytes.fromhex(os.environ["CODERAG_STANDIN_KEY"]))
    runtime = build_runtime(
        settings, index=ServerIndex(client=client, collection=settings.collection)
    )
    runtime.warm_up()
    app = create_celery(settings)
    install_context(context_for(runtime))
    _reconcile_on_standin(settings, app, host, int(port))
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            f"--queues={','.join(QUEUES)}",
            "--loglevel=WARNING",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
            f"--hostname=test-worker-{os.getpid()}@localhost",
        ]
    )


def _reconcile_on_standin(settings: Settings, app: Celery, host: str, port: int) -> None:
    """Start the freshness pass in ``worker_ready`` over the stand-in (as
    ``coderag.freshness.start_in_worker`` does over a Qdrant server)."""
    from celery import signals

    if settings.reconcile_interval_seconds <= 0:
        return

    def start(sender: object = None, **_: object) -> None:
        import redis

        from coderag.freshness import Freshness
        from coderag.index.server import ServerIndex
        from indexer.queue.celery_dispatcher import CeleryDispatcher
        from tests.standin import connect

        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=1.0, socket_timeout=5.0
        )
        dispatcher = CeleryDispatcher(settings, app=app, redis_client=client)
        key = bytes.fromhex(os.environ["CODERAG_STANDIN_KEY"])
        index = ServerIndex(client=connect((host, port), key), collection=settings.collection)
        Freshness(settings, index, dispatcher, redis=client, owns=(dispatcher, client)).start()

    signals.worker_ready.connect(start, weak=False)


if __name__ == "__main__":
    main()
