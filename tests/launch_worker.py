"""Test-only launcher: a real Celery worker process on the index that ``tests/standin.py``
serves (the stand-in for a Qdrant server).

Exactly what ``coderag worker --pool solo`` does, except that the runtime's index is a
``ServerIndex`` over the stand-in's proxy instead of ``ServerIndex(url=...)``. Settings come
from the ``CODERAG_*`` environment like any coderag process; the stand-in's address and key
from ``CODERAG_STANDIN_ADDR`` / ``CODERAG_STANDIN_KEY``.

Run: ``python -m tests.launch_worker``.
"""

from __future__ import annotations

import os


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


if __name__ == "__main__":
    main()
