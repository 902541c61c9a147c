#!/usr/bin/env bash
# Entrypoint of the code-server container: install Continue from the mounted VSIX (no
# marketplace access), put the stack's Continue config and its secrets in place, then hand
# over to code-server's own entrypoint.
#
# Sourced, it only defines what it does (tests/test_code_server.py runs `setup_ide` against a
# code-server installed by scripts/install-ide.sh, with a home directory of its own).
set -euo pipefail

VSIX=/opt/coderag/vsix/continue.vsix
CONFIG=/opt/coderag/continue/config.yaml

# How the container serves the IDE, apart from where it listens and the folder it opens: a
# password login (PASSWORD from the environment), no telemetry, no update checks (the host
# has no route out).
CODE_SERVER_FLAGS=(--auth password --disable-telemetry --disable-update-check)

# write_continue_env FILE: Continue's secrets file, mode 0600: the developer's own
# CODERAG_TOKEN line (written by coderag-login.sh) kept from the existing file, so that a
# re-created container keeps it (the home directory is a volume); Continue sends that token to
# coderag and to the gateway alike. Every other line is dropped: the IDE holds no shared
# secret, neither an older stack's gateway key (LITELLM_API_KEY, which was the master key) nor
# a coderag service token.
write_continue_env() {
  local file="$1" tmp
  tmp=$(mktemp "$file.XXXXXX") # mode 0600
  if [ -f "$file" ]; then
    grep '^CODERAG_TOKEN=' "$file" | tail -n 1 >"$tmp" || true
  fi
  mv -f "$tmp" "$file"
}

# setup_ide VSIX CONFIG: everything before code-server starts, in $HOME: the Continue config,
# its secrets file, and the extension installed from VSIX by the `code-server` on PATH.
# Refuses to start without the VSIX, before touching the home directory.
setup_ide() {
  local vsix="$1" config="$2"
  if [ ! -s "$vsix" ]; then
    echo "start-code-server: $vsix is missing (set CONTINUE_VSIX in docker/.env)" >&2
    return 1
  fi
  mkdir -p "$HOME/.continue"
  install -m 0644 "$config" "$HOME/.continue/config.yaml"
  write_continue_env "$HOME/.continue/.env"
  code-server --install-extension "$vsix" >/dev/null
}

main() {
  setup_ide "$VSIX" "$CONFIG"
  exec /usr/bin/entrypoint.sh --bind-addr 0.0.0.0:8443 "${CODE_SERVER_FLAGS[@]}" \
    /home/coder/project
}

# Sourced (the tests): only define the functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
