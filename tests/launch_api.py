"""Test-only launcher: the coderag API in its own process, on the index that
``tests/standin.py`` serves (the stand-in for a Qdrant server).

What ``uvicorn coderag.api.app:create_app --factory`` does, except that the runtime's index
is a ``ServerIndex`` over the stand-in's proxy: tests that kill the API (SIGKILL, no
shutdown) need it out of the test process, and the index the worker writes must be the one it
reads. Settings come from the ``CODERAG_*`` environment like any coderag process; the
stand-in's address and key from ``CODERAG_STANDIN_ADDR`` / ``CODERAG_STANDIN_KEY``, the port
from ``CODERAG_TEST_API_PORT``.

Run: ``python -m tests.launch_api``.
"""

from __future__ import annotations

import os

__all__ = ["main"]


def main() -> None:
    import uvicorn

    from coderag.api.app import create_app
    from coderag.index.server import ServerIndex
    from coderag.runtime import build_runtime
    from coderag.settings import Settings
    from tests.standin import connect

    settings = Settings()
    host, port = os.environ["CODERAG_STANDIN_ADDR"].rsplit(":", 1)
    client = connect((host, int(port)), bytes.fromhex(os.environ["CODERAG_STANDIN_KEY"]))
    runtime = build_runtime(
        settings, index=ServerIndex(client=client, collection=settings.collection)
    )
    app = create_app(settings, runtime=runtime)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["CODERAG_TEST_API_PORT"]),
        log_config=None,
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
