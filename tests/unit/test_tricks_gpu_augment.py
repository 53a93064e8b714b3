"""Tests of the batched on-device augmentations (crop from padding, flip, cutout)."""

import pytest
import torch
import torch.nn.functional as F

from rayaccel.methods.tricks.gpu_augment import cutout, random_crop_from_padding, random_flip


def random_images(n_samples: int = 16, dtype=torch.uint8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(1, 256, (n_samples, 2, 6, 7), generator=generator).to(dtype)


def crop_offsets(images, crops, padding_px, mode):
    """For each sample, the (top, left) slices of the padded image equal to its crop."""
    padded = F.pad(images.float(), (padding_px,) * 4, mode=mode)
    height_px, width_px = images.shape[-2:]
    span = range(2 * padding_px + 1)
    return [
        [
            (top, left)
            for top in span
            for left in span
            if torch.equal(
                padded[i, :, top : top + height_px, left : left + width_px], crop.float()
            )
        ]
        for i, crop in enumerate(crops)
    ]


@pytest.mark.parametrize("mode", ["reflect", "constant"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crops_are_slices_of_the_padded_image(mode, dtype):
    images = random_images(dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    crops = random_crop_from_padding(images, 2, generator, padding_mode=mode)
    assert crops.shape == images.shape and crops.dtype == dtype
    offsets = crop_offsets(images, crops, 2, mode)
    assert all(len(found) == 1 for found in offsets)  # random pixels: exactly one slice matches
    assert len({found[0] for found in offsets}) > 4  # offsets vary across samples


def test_samples_per_choice_shares_one_offset_per_group():
    images = random_images(10)
    crops = random_crop_from_padding(
        images, 2, torch.Generator().manual_seed(0), samples_per_choice=4
    )
    offsets = [found[0] for found in crop_offsets(images, crops, 2, "reflect")]
    assert len(set(offsets[0:4])) == len(set(offsets[4:8])) == len(set(offsets[8:10])) == 1


def test_crop_rejects_reflect_padding_beyond_the_image():
    with pytest.raises(ValueError, match="padding_px"):
        random_crop_from_padding(random_images(), 6, torch.Generator())


def test_flip_mirrors_only_masked_samples():
    images = random_images(3)
    flipped = random_flip(images, torch.tensor([True, False, True]))
    assert torch.equal(flipped[0], images[0].flip(-1))
    assert torch.equal(flipped[1], images[1])
    with pytest.raises(ValueError, match="mask"):
        random_flip(images, torch.tensor([1, 0, 1]))


def test_cutout_zeroes_exactly_a_square_clipped_at_the_border():
    size_px, height_px, width_px = 3, 6, 7
    images = random_images(200)  # no zero pixels
    out = cutout(images, size_px, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    erased = out == 0
    assert torch.equal(erased[:, 0], erased[:, 1])  # the same square in every channel
    assert torch.equal(out[~erased], images[~erased])
    unclipped = 0
    for square in erased[:, 0]:
        rows = square.any(1).nonzero().flatten()
        cols = square.any(0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert square.sum() == height * width  # a filled rectangle
        assert rows.max() - rows.min() + 1 == height and cols.max() - cols.min() + 1 == width
        # Shorter than the square only where it is cut off by the image border.
        assert height == size_px or rows.min() == 0 or rows.max() == height_px - 1
        assert width == size_px or cols.min() == 0 or cols.max() == width_px - 1
        assert height <= size_px and width <= size_px
        unclipped += height == width == size_px
    assert 0 < unclipped < 200


def test_cutout_per_group_squares():
    out = cutout(random_images(8), 2, torch.Generator().manual_seed(0), samples_per_choice=8)
    erased = out[:, 0] == 0
    assert all(torch.equal(square, erased[0]) for square in erased)
