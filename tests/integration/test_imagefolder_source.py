"""`data.source: imagefolder`: a class-per-folder tree of JPEG photos read at run time through
Ray Data and Ray Train, with RandomResizedCrop, a timm augmentation string, the evaluation
crop and a corrupt file that is skipped and counted (or fails the run naming the file)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import QUICKSTART, read_metrics, read_summary
from PIL import Image

from rayaccel.cli import main

pytestmark = pytest.mark.ray
CLASSES = ("dark", "light", "striped")


def _tree(root, per_class: int, *, seed: int, corrupt: bool):
    """Photos of 3 visually distinct classes at varied sizes and aspect ratios."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        # With the broken file the training tree keeps an even count (192): 96 rows for each
        # of the 2 workers, 6 whole batches of 16, so no row is left out.
        for i in range(per_class - (corrupt and label == 1)):
            width, height = int(rng.integers(60, 120)), int(rng.integers(50, 110))
            pixels = rng.integers(0, 60, size=(height, width, 3)) + 90 * label
            if name == "striped":
                pixels[:, ::8] = 255
            buffer = io.BytesIO()
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG")
            (folder / f"{i:03d}.jpg").write_bytes(buffer.getvalue())
    if corrupt:
        (root / "dark" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def _overrides(tmp_path, name: str) -> list[str]:
    _tree(tmp_path / "photos" / "train", 64, seed=0, corrupt=True)
    _tree(tmp_path / "photos" / "val", 16, seed=1, corrupt=False)
    return [
        "data.source=imagefolder",
        f"data.train={tmp_path / 'photos' / 'train'}",
        f"data.val={tmp_path / 'photos' / 'val'}",
        "data.image_size_px=32",
        "data.channels=3",
        "data.mean=[0.5, 0.5, 0.5]",
        "data.std=[0.25, 0.25, 0.25]",
        "data.augment.random_crop_padding_px=0",
        "data.augment.random_resized_crop={scale: [0.5, 1.0]}",
        "data.augment.auto_augment=rand-m5-mstd0.5-inc1",
        "data.shuffle_window_rows=64",
        "train.epochs=2",
        "train.global_batch_size=32",
        f"run.storage_path={tmp_path / 'runs'}",
        f"run.name={name}",
    ]


def test_an_image_folder_trains_with_the_corrupt_file_skipped_and_counted(ray_session, tmp_path):
    assert main(["run", QUICKSTART, *_overrides(tmp_path, "folder"), "data.on_bad_row=skip"]) == 0
    rows = read_metrics(tmp_path / "runs" / "folder")
    # 192 files, the broken one among them; every epoch reads each once.
    assert [r["bad_rows_skipped"] for r in rows] == [1, 1]
    assert [r["train_images"] for r in rows] == [191, 191]
    assert all(r["val_images"] == 48 for r in rows)
    summary = read_summary(tmp_path / "runs" / "folder")
    # Three classes a child could tell apart: well above chance (1/3) after two epochs.
    assert summary["final_val_acc"] > 0.5, summary


def test_an_image_folder_run_fails_naming_the_corrupt_file(ray_session, tmp_path, capsys):
    assert main(["run", QUICKSTART, *_overrides(tmp_path, "fail")]) == 1
    line = next(
        x for x in capsys.readouterr().err.splitlines() if x.startswith("rayaccel: run failed:")
    )
    assert "broken.jpg" in line and "not a decodable image" in line, line
