#!/usr/bin/env bash
# GPU embedding throughput in one short run on a GPU machine that has no network.
#
#   bash scripts/gpu-bench.sh --prepare   # on a machine with the project installed: puts in
#                                         # .gpu-bench/ the wheels the GPU box may lack and an
#                                         # fp16 copy of the bundled model (45 MB)
#   bash scripts/gpu-bench.sh             # on the GPU machine (with .gpu-bench/ copied over):
#                                         # installs from .gpu-bench/ only, prints JSON
#
# The GPU machine is expected to have Python with a CUDA build of torch and
# sentence-transformers (PYTHON, default python3). Nothing is downloaded there. Speed does not
# depend on the weights' values, so the fp16 copy times fp32 runs as well as the original.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.gpu-bench
# What the embedder imports beyond torch, sentence-transformers, numpy and typer (a CUDA
# image with those may lack it).
wheels=(xxhash)

if [ "${1:-}" = "--prepare" ]; then
  py=.venv/bin/python
  mkdir -p "$dir/wheels"
  pyver=${GPU_PYTHON_VERSION:-3.12}
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$dir/wheels" "${wheels[@]}"
  "$py" - "$dir/model" <<'PY'
import shutil, sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from embeddings.backends.source import resolve_model

src, dst = resolve_model(None).path, Path(sys.argv[1])
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.onnx", "onnx", "openvino", "*.bin"))
weights = dst / "model.safetensors"
tensors = load_file(weights)
save_file({k: v.to(torch.float16) for k, v in tensors.items()}, weights)
print(f"gpu-bench: {dst} ({weights.stat().st_size // 2**20} MiB, fp16 weights)")
PY
  du -sh "$dir"
  exit 0
fi

py=${PYTHON:-python3}
[ -d "$dir/model" ] || { echo "gpu-bench: $dir/model missing: run with --prepare first" >&2; exit 2; }
venv=${GPU_BENCH_VENV:-/tmp/coderag-gpu-venv}
"$py" -m venv --system-site-packages "$venv"
for w in "${wheels[@]}"; do
  "$venv/bin/python" -c "import $mod" 2>/dev/null ||
    "$venv/bin/python" -m pip install --quiet --no-index --no-deps --find-links "$dir/wheels" "$w"
done
"$venv/bin/python" -c "import torch; print('gpu-bench: torch', torch.__version__, 'cuda', torch.cuda.is_available())" >&2
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$venv/bin/python" -m bench.gpu --model "$dir/model" "$@"
