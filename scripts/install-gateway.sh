#!/usr/bin/env bash
# The LiteLLM gateway (proxy) in its own virtualenv, .venv-gateway, for
# tests/test_litellm_proxy.py: the real `litellm --config docker/litellm/config.yaml` with
# coderag's hook, as the compose runs it.
#
# Its own venv because in production the gateway is its own container
# (docker/compose.yaml, service `litellm`): the proxy extra pins fastapi, uvicorn, mcp,
# litellm-proxy-extras and litellm-enterprise to what that release was built with, and those
# pins are no business of coderag's own venv. The hook (retriever/litellm_hook.py) imports only
# httpx and litellm, both installed here.
#
# LITELLM_VERSION is the one LiteLLM release of the project: the compose image tag
# (ghcr.io/berriai/litellm:v$LITELLM_VERSION) and the `litellm==` pin of pyproject.toml's dev
# extra are the same (tests/test_litellm_proxy.py checks the three agree).
#
# Idempotent: a venv that already has this release is left as it is. pip only, from the
# package registry; nothing is downloaded when the gateway runs.
set -euo pipefail
cd "$(dirname "$0")/.."
LITELLM_VERSION="1.108.7"
PYTHON="${PYTHON:-python3}"
VENV=.venv-gateway

installed() {
  "$VENV/bin/python" - "$LITELLM_VERSION" <<'EOF' 2>/dev/null
import importlib.metadata as md, sys
sys.exit(0 if md.version("litellm") == sys.argv[1] and md.version("fastapi") else 1)
EOF
}

if [ -x "$VENV/bin/litellm" ] && installed; then
  echo "LiteLLM $LITELLM_VERSION already in $VENV" >&2
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "litellm[proxy]==$LITELLM_VERSION" "httpx>=0.27"
installed
echo "LiteLLM $LITELLM_VERSION installed in $VENV" >&2
