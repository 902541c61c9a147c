#!/usr/bin/env bash
# Entrypoint of the code-server container: install Continue from the mounted VSIX (no
# marketplace access), put the stack's Continue config and its secrets in place, then hand
# over to code-server's own entrypoint.
set -euo pipefail

VSIX=/opt/coderag/vsix/continue.vsix
CONFIG=/opt/coderag/continue/config.yaml

# write_continue_env FILE: Continue's secrets file. LITELLM_API_KEY from the environment, and
# the developer's own CODERAG_TOKEN line (written by coderag-login.sh) kept from the existing
# file, so that a re-created container keeps it (the home directory is a volume). Every other
# line is dropped, a coderag service token of an older stack included: the IDE holds none.
write_continue_env() {
  local file="$1" key="${LITELLM_API_KEY:?set LITELLM_API_KEY (the gateway key for Continue)}" tmp
  tmp=$(mktemp "$file.XXXXXX") # mode 0600
  printf 'LITELLM_API_KEY=%s\n' "$key" >"$tmp"
  if [ -f "$file" ]; then
    grep '^CODERAG_TOKEN=' "$file" | tail -n 1 >>"$tmp" || true
  fi
  mv -f "$tmp" "$file"
}

main() {
  if [ ! -s "$VSIX" ]; then
    echo "start-code-server: $VSIX is missing (set CONTINUE_VSIX in docker/.env)" >&2
    exit 1
  fi
  mkdir -p "$HOME/.continue"
  install -m 0644 "$CONFIG" "$HOME/.continue/config.yaml"
  write_continue_env "$HOME/.continue/.env"
  code-server --install-extension "$VSIX" >/dev/null

  exec /usr/bin/entrypoint.sh --bind-addr 0.0.0.0:8443 --auth password \
    --disable-telemetry --disable-update-check /home/coder/project
}

# Sourced (the tests): only define the functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
