"""The segmentation decode path in a real Ray Data pipeline on the bundled fashion-seg fixture
(the pure decode tests are in `tests/unit/test_segmentation_data.py`)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import SEG_FIXTURE

from rayaccel.data.metadata import read_meta
from rayaccel.data.pipeline import DecodeSpec, build_dataset

pytestmark = pytest.mark.ray

# fashion-seg's masks: class k (1..10) where the Fashion-MNIST pixel is >= 51, else 0.
THRESHOLD = 51
NUM_MASK_CLASSES = 11


def test_ray_data_pipeline_decodes_fixture_masks(ray_session):
    meta = read_meta(SEG_FIXTURE / "test")
    spec = DecodeSpec(
        image_size_px=28,
        channels=1,
        num_classes=NUM_MASK_CLASSES,
        on_bad_row="fail",
        task="segmentation",
        shard_first_index=(("part-00000.parquet", 0),),
        random_crop_padding_px=2,
        horizontal_flip=True,
    )
    dataset = build_dataset(
        str(SEG_FIXTURE / "test"),
        meta,
        spec,
        shuffle_seed=None,
        preprocess_cpus=0.5,
        decode_batch_rows=64,
    )
    batch = dataset.take_batch(64, batch_format="numpy")
    masks, images, labels = batch["mask"], batch["image"][:, 0], batch["label"]
    assert masks.shape == (64, 28, 28) and masks.dtype == np.uint8
    assert batch["bad"].sum() == 0
    assert np.array_equal(masks, (images >= THRESHOLD) * labels[:, None, None])
