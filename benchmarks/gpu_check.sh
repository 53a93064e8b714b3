#!/usr/bin/env bash
# The GPU machine's one command (see benchmarks/gpu_check.py): from the checkout's root, with
# $OUT the folder that comes back and .gpu-carry/ holding what that machine lacks (Ray,
# pydantic, jsonschema, tensorboardX as site-packages.tar.xz, and the unpack.sh that puts them
# and the checkout on PYTHONPATH: no pip install there).
#   bash benchmarks/gpu_check.sh [extra gpu_check.py arguments, e.g. --parts fft-lowpass]
# The import line runs first so that a missing package costs seconds, not the device's minutes.
set -eo pipefail
out=${OUT:-/tmp/gpucheck-out}
mkdir -p "$out"
# shellcheck disable=SC1091
source .gpu-carry/unpack.sh
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
python3 -c "import torch, ray, pydantic, rayaccel; print(torch.__version__, torch.cuda.get_device_name(0), 'ray', ray.__version__)" 2>&1 | tee "$out/gpu_check.log"
python3 benchmarks/gpu_check.py --device cuda --out "$out/runs" --json "$out/gpu_check.json" "$@" 2>&1 | tee -a "$out/gpu_check.log"
