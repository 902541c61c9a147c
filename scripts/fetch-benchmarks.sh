#!/usr/bin/env bash
# Data the retrieval quality gates index, fetched from the package registry (never committed):
# the Sphinx 3.3.1 source distribution, pinned by sha256, unpacked into
# .cache/benchmarks/Sphinx-3.3.1 for tests/test_quality_gate_large.py. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/benchmarks
name=Sphinx-3.3.1
sha=1e8d592225447104d1172be415bc2972bd1357e3e12fdc76edf2261105db4300
if [ -f "$dest/$name/.complete" ]; then
  echo "fetch-benchmarks: $dest/$name present" >&2
  exit 0
fi
mkdir -p "$dest"
tmp=$(mktemp -d "$dest/.fetch-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
printf 'sphinx==3.3.1 --hash=sha256:%s\n' "$sha" > "$tmp/req.txt"
.venv/bin/python -m pip download --quiet --no-deps --no-binary :all: --require-hashes \
  -r "$tmp/req.txt" -d "$tmp" 2> >(grep -v "is ignored: it is neither" >&2)
tar -xzf "$tmp/$name.tar.gz" -C "$tmp"
rm -rf "${dest:?}/$name"
mv "$tmp/$name" "$dest/$name"
touch "$dest/$name/.complete"
echo "fetch-benchmarks: $dest/$name ($(find "$dest/$name" -name '*.py' | wc -l) Python files)" >&2
