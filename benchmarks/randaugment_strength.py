"""RandAugment strength and cost: timm's `rand-m{M}-mstd0.5-inc1` against torchvision's.

For each realisation of `rayaccel.data.randaugment.rand_augment` and magnitude M, on the first
`--images` images of the bundled Fashion-MNIST fixture (28 px, grey), in batches of
`--batch-rows` with a generator seeded 0, as the Ray Data decode step calls it:

- changed: the fraction of images with at least one pixel changed;
- mean |dpx|: the mean absolute pixel change of a changed image, in grey levels (0..255),
  averaged over the changed images;
- mean |dpx| (all): the same change averaged over all images, unchanged ones included;
- images/s: RandAugment alone (no decode) on one thread, best of `--repeats` passes; the
  header gives the PNG decode's rate the same way, for scale.

Geometric ops fill with the fixture's mean pixel, as the training pipeline passes it.

    python benchmarks/randaugment_strength.py
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from common import FIXTURE, machine

from rayaccel.data.codec import decode_image
from rayaccel.data.randaugment import IMPLS, rand_augment


def fixture_images(count: int) -> tuple[list[bytes], np.ndarray, tuple[int, ...]]:
    """The first `count` training images of the fixture, encoded and as (N, 28, 28, 1), and
    its mean pixel."""
    train = FIXTURE / "train"
    meta = json.loads((train / "metadata.json").read_text())
    table = pq.read_table(train / meta["shards"][0]["file"], columns=["image"])
    encoded = table.column("image").to_pylist()[:count]
    images = np.stack([decode_image(data, meta["channels"]) for data in encoded])
    fill = tuple(round(255 * m) for m in meta["mean"])
    return encoded, images, fill


def augment(images, magnitude, impl, fill, batch_rows):
    rng = np.random.default_rng(0)
    return np.concatenate(
        [
            rand_augment(images[i : i + batch_rows], magnitude, rng, impl=impl, fill=fill)
            for i in range(0, len(images), batch_rows)
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-rows", type=int, default=256)
    parser.add_argument("--magnitudes", type=float, nargs="+", default=[0, 5, 9])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoded, images, fill = fixture_images(args.images)
    decode_s = min(
        _timed(lambda: [decode_image(data, 1) for data in encoded]) for _ in range(args.repeats)
    )
    print(f"# {len(images)} fixture images, fill {fill}; {machine()}")
    print(f"# PNG decode: {len(images) / decode_s:.0f} images/s")
    header = ("impl", "M", "changed", "mean |dpx|", "(all)", "images/s")
    print("{:<12} {:>4} {:>8} {:>11} {:>6} {:>9}".format(*header))
    for impl in IMPLS:
        for magnitude in args.magnitudes:
            augmented = augment(images, magnitude, impl, fill, args.batch_rows)
            delta = np.abs(augmented.astype(np.int16) - images).reshape(len(images), -1)
            changed = delta.max(axis=1) > 0
            mean_change = delta[changed].mean() if changed.any() else 0.0
            seconds = min(
                _timed(augment, images, magnitude, impl, fill, args.batch_rows)
                for _ in range(args.repeats)
            )
            print(
                f"{impl:<12} {magnitude:>4g} {changed.mean():>8.1%} {mean_change:>11.1f} "
                f"{delta.mean():>6.1f} {len(images) / seconds:>9.0f}"
            )


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
