"""`scripts/make_photo_tree.py`: crop geometry, one class per distinct photo, a clear error
without the photos, and a tiny tree built from photos made here."""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import numpy as np
import pytest
from helpers import REPO_ROOT
from PIL import Image

_spec = importlib.util.spec_from_file_location(
    "make_photo_tree", REPO_ROOT / "scripts" / "make_photo_tree.py"
)
make_photo_tree = importlib.util.module_from_spec(_spec)
# Registered, so the worker processes find `_write_crops` by its module's name.
sys.modules["make_photo_tree"] = make_photo_tree
_spec.loader.exec_module(make_photo_tree)


def test_crops_lie_inside_the_photo_and_keep_the_output_aspect():
    rng = np.random.default_rng(0)
    for source_px in [(5640, 3172), (1600, 1200), (600, 2000)]:
        for _ in range(200):
            (width_px, height_px), (left, top, right, bottom) = make_photo_tree.crop_box(
                rng, source_px
            )
            assert 300 <= width_px <= 500 and 300 <= height_px <= 500
            assert 0 <= left < right <= source_px[0] and 0 <= top < bottom <= source_px[1]
            crop_aspect = (right - left) / (bottom - top)
            assert crop_aspect == pytest.approx(width_px / height_px, rel=0.02)


def write_photos(root, names_and_sizes):
    rng = np.random.default_rng(1)
    for name, (width_px, height_px) in names_and_sizes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height_px, width_px, 3), np.uint8)).save(root / name)


def test_one_class_per_distinct_photo_and_a_deterministic_distinct_tree(tmp_path):
    photos = tmp_path / "mate"
    write_photos(
        photos,
        {
            "nature/Leaf.jpg": (900, 700),
            "abstract/Elephants.jpg": (800, 600),
            "abstract/Elephants_1600x1200.jpg": (1600, 1200),  # the same photo, larger
        },
    )
    (photos / "desktop").mkdir()
    (photos / "desktop" / "notes.txt").write_text("not a photo")
    sources = make_photo_tree.source_photos(photos)
    assert {name: path.name for name, path in sources.items()} == {
        "abstract-Elephants": "Elephants_1600x1200.jpg",
        "nature-Leaf": "Leaf.jpg",
    }
    trees = []
    for run, workers in enumerate((1, 2)):
        out = tmp_path / f"tree{run}"
        counts = make_photo_tree.make_photo_tree(
            out, images=20, val_fraction=0.2, seed=3, workers=workers, photo_root=photos
        )
        assert counts == {"train": 16, "val": 4}
        files = sorted(out.rglob("*.jpg"))
        assert len({hashlib.sha256(f.read_bytes()).digest() for f in files}) == 20
        for file in files:
            with Image.open(file) as image:
                assert image.format == "JPEG" and all(300 <= side <= 500 for side in image.size)
        trees.append({f.relative_to(out): f.read_bytes() for f in files})
    assert trees[0] == trees[1]  # the same tree whatever the number of workers


def test_missing_photos_fail_with_the_package_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y mate-backgrounds"):
        make_photo_tree.source_photos(tmp_path / "none")
