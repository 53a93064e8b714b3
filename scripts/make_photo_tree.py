#!/usr/bin/env python
"""Builds a class-per-folder tree of real-photo JPEGs, ImageNet-sized, for trying and measuring
`rayaccel data prepare imagefolder` without downloading a dataset.

Source: the MATE desktop backgrounds (Debian/Ubuntu package ``mate-backgrounds``), photographs
and artwork of 1-18 megapixels under /usr/share/backgrounds/mate/{nature,abstract,desktop}.
Each source photo is one class (the same photo shipped at several resolutions counts once).
Each output image is a random crop (5-100% of the photo's area, random position) resized so
both sides are 300-500 px, as ImageNet photos are, saved as JPEG quality 90; near-blank crops
(flat areas of the artwork) and repeats are drawn again, so every file is distinct:

    OUT/train/<class>/<class>-00042.jpg ...   (1 - --val-fraction of each class)
    OUT/val/<class>/<class>-00001.jpg ...

Every image is drawn from its own seed (--seed, image number), so the tree is the same whatever
the number of worker processes. Each worker decodes a source photo once for all of its crops.

Usage:
    python scripts/make_photo_tree.py OUT [--images 5000] [--val-fraction 0.1] [--seed 0]
                                          [--workers N] [--overwrite]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import os
import re
import shutil
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_ROOT = Path("/usr/share/backgrounds/mate")
PHOTO_FOLDERS = ("nature", "abstract", "desktop")
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png")
SIDE_RANGE_PX = (300, 500)
CROP_AREA_RANGE = (0.05, 1.0)
JPEG_QUALITY = 90
MIN_GREY_STD = 6.0
"""Crops whose grey levels vary less than this (of 255) are drawn again: a near-blank image
carries no class and would be the same file in several classes."""
_MAX_DRAWS = 100
# "Elephants_3840x2160.jpg" is "Elephants.jpg" at another resolution: one class, not three.
_RESOLUTION_SUFFIX = re.compile(r"_\d+x\d+$")


def source_photos(root: Path = PHOTO_ROOT) -> dict[str, Path]:
    """{class name: photo}, one class per distinct photo, the largest copy of each.

    Raises:
        FileNotFoundError: if the photo folders are not installed.
    """
    folders = [root / name for name in PHOTO_FOLDERS if (root / name).is_dir()]
    if not folders:
        raise FileNotFoundError(
            f"no photos in {root}/{{{','.join(PHOTO_FOLDERS)}}}; install them with "
            "`apt-get install -y mate-backgrounds`"
        )
    largest: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in PHOTO_EXTENSIONS:
                continue
            name = f"{folder.name}-{_RESOLUTION_SUFFIX.sub('', path.stem)}"
            if name not in largest or path.stat().st_size > largest[name].stat().st_size:
                largest[name] = path
    return dict(sorted(largest.items()))


def load_photo(path: Path) -> Image.Image:
    """The photo as RGB; transparent artwork (white or black shapes drawn in the alpha channel,
    which a plain RGB conversion turns into one flat colour) is laid over mid-grey."""
    with Image.open(path) as opened:
        if "A" not in opened.getbands() and "transparency" not in opened.info:
            return opened.convert("RGB")
        layer = opened.convert("RGBA")
    background = Image.new("RGBA", layer.size, (128, 128, 128, 255))
    return Image.alpha_composite(background, layer).convert("RGB")


def crop_box(
    rng: np.random.Generator, source_size_px: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """(output width, height), (left, top, right, bottom) of one random crop of a source photo.

    The crop has the output's aspect ratio, so resizing it never distorts the photo.
    """
    source_width, source_height = source_size_px
    low, high = SIDE_RANGE_PX
    width_px, height_px = (int(side) for side in rng.integers(low, high + 1, size=2))
    aspect = width_px / height_px
    area = rng.uniform(*CROP_AREA_RANGE) * source_width * source_height
    crop_width = min(source_width, math.sqrt(area * aspect))
    crop_height = crop_width / aspect
    if crop_height > source_height:
        crop_height = source_height
        crop_width = crop_height * aspect
    left = rng.uniform(0, source_width - crop_width)
    top = rng.uniform(0, source_height - crop_height)
    box = (int(left), int(top), int(left + crop_width), int(top + crop_height))
    return (width_px, height_px), box


def _write_crops(job: tuple[str, str, list[tuple[int, str]], str, int]) -> int:
    """Writes one class's images (a worker's unit of work); returns how many."""
    class_name, photo, numbered_splits, out, seed = job
    source = load_photo(Path(photo))
    written = set()
    for number, split in numbered_splits:
        rng = np.random.default_rng((seed, number))
        for _ in range(_MAX_DRAWS):
            size_px, box = crop_box(rng, source.size)
            image = source.resize(size_px, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
            # Artwork has flat areas: their crops are blank images that several classes share.
            if np.asarray(image.convert("L")).std() < MIN_GREY_STD:
                continue
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
            digest = hashlib.sha256(buffer.getvalue()).digest()
            if digest not in written:
                break
        else:
            raise RuntimeError(f"{photo}: no textured, new crop in {_MAX_DRAWS} draws")
        written.add(digest)
        path = Path(out) / split / class_name / f"{class_name}-{number:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
    return len(numbered_splits)


def make_photo_tree(
    out: Path,
    *,
    images: int,
    val_fraction: float,
    seed: int,
    workers: int,
    photo_root: Path = PHOTO_ROOT,
) -> dict[str, int]:
    """Writes the tree; returns {split: images}. Image ``n`` belongs to class ``n % classes``."""
    photos = source_photos(photo_root)
    names = list(photos)
    per_class: dict[str, list[tuple[int, str]]] = {name: [] for name in names}
    for number in range(images):
        per_class[names[number % len(names)]].append((number, "train"))
    for numbered in per_class.values():
        val_count = round(len(numbered) * val_fraction)
        numbered[:val_count] = [(number, "val") for number, _ in numbered[:val_count]]
    jobs = [(name, str(photos[name]), per_class[name], str(out), seed) for name in names]
    # The largest photos first, so no worker is left decoding a big one at the end.
    jobs.sort(key=lambda job: -Path(job[1]).stat().st_size)
    with Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_crops, jobs):
            pass
    counts = {"train": 0, "val": 0}
    for numbered in per_class.values():
        for _, split in numbered:
            counts[split] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (OUT/train, OUT/val)")
    parser.add_argument("--images", type=int, default=5000, help="images in all (default 5000)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of each class in val/ (0.1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops (default 0)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")
    if not 0 <= args.val_fraction < 1:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.out.exists() and any(args.out.iterdir()):
        if not args.overwrite:
            parser.error(f"{args.out} is not empty; pass --overwrite to replace it")
        shutil.rmtree(args.out)
    started_s = time.perf_counter()
    try:
        counts = make_photo_tree(
            args.out,
            images=args.images,
            val_fraction=args.val_fraction,
            seed=args.seed,
            workers=args.workers,
        )
    except FileNotFoundError as error:
        print(f"make_photo_tree: {error}", file=sys.stderr)
        return 2
    elapsed_s = time.perf_counter() - started_s
    classes = len(source_photos())
    print(
        f"{args.out}: {counts['train']} train + {counts['val']} val JPEGs, {classes} classes, "
        f"{SIDE_RANGE_PX[0]}-{SIDE_RANGE_PX[1]} px a side, in {elapsed_s:.1f} s "
        f"({sum(counts.values()) / elapsed_s:.0f} images/s, {args.workers} workers)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
