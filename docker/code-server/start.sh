#!/usr/bin/env bash
# Entrypoint of the code-server container: install Continue from the mounted VSIX (no
# marketplace access), put the stack's Continue config and its secrets in place, then hand
# over to code-server's own entrypoint.
set -euo pipefail

VSIX=/opt/coderag/vsix/continue.vsix
CONFIG=/opt/coderag/continue/config.yaml

if [ ! -s "$VSIX" ]; then
  echo "start-code-server: $VSIX is missing (set CONTINUE_VSIX in docker/.env)" >&2
  exit 1
fi
mkdir -p "$HOME/.continue"
install -m 0644 "$CONFIG" "$HOME/.continue/config.yaml"
(
  umask 077
  printf 'CODERAG_API_TOKEN=%s\nLITELLM_API_KEY=%s\n' \
    "${CODERAG_API_TOKEN:?}" "${LITELLM_API_KEY:?}" >"$HOME/.continue/.env"
)
code-server --install-extension "$VSIX" >/dev/null

exec /usr/bin/entrypoint.sh --bind-addr 0.0.0.0:8443 --auth password \
  --disable-telemetry --disable-update-check /home/coder/project
