#!/usr/bin/env bash
# Rebuilds data/fixture/fashion-mnist: a stratified, seeded subset of the real Fashion-MNIST
# (400 train + 100 test images per class, PNG, one shard per split) small enough to ship in the
# repository, so tests and examples train on real images without a download.
#
# Source: Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist), which
# installs the official IDX files under /usr/share/datasets/fashion-mnist.
#
# Usage: [PYTHON=/path/to/python] scripts/make_fixture.sh [SRC_DIR]   (overwrites the fixture)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src_dir="${1:-/usr/share/datasets/fashion-mnist}"
python="${PYTHON:-python}"

cd "$repo_root"
"$python" -c '
import sys
from rayaccel.data.prepare import prepare_dataset

results = prepare_dataset(
    "fashion-mnist",
    sys.argv[1],
    "data/fixture/fashion-mnist",
    rows_per_shard=10000,
    encoding="png",
    per_class={"train": 400, "test": 100},
    seed=0,
    overwrite=True,
)
for split, meta in results.items():
    print(f"{split}: {meta.count} images, {len(meta.shards)} shard(s), mean={meta.mean} std={meta.std}")
' "$src_dir"
du -sh data/fixture/fashion-mnist data/fixture/fashion-mnist/*
