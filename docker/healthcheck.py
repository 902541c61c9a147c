#!/usr/bin/env python3
"""Container health probe for the coderag image: GET one URL, exit 0 on 2xx, 1 otherwise.

Standard library only, so the image needs no curl. The URL is the first argument, else
``$HEALTHCHECK_URL``, else the API's liveness endpoint on the default port.

    coderag-healthcheck                                  # http://127.0.0.1:8080/healthz
    coderag-healthcheck http://127.0.0.1:8080/readyz     # API readiness (compose)
    coderag-healthcheck http://127.0.0.1:9808/metrics    # a worker's metrics exporter
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080/healthz"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("HEALTHCHECK_URL", DEFAULT_URL)
    timeout = float(os.environ.get("HEALTHCHECK_TIMEOUT", "4"))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        body = exc.read(300).decode("utf-8", "replace")
        print(f"unhealthy: {url} -> HTTP {exc.code} {body}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"unreachable: {url} -> {exc}", file=sys.stderr)
        return 1
    if 200 <= status < 300:
        return 0
    print(f"unhealthy: {url} -> HTTP {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
