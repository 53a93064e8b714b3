"""Ray Data pipelines: parquet shards -> decoded, augmented uint8 batches for the workers.

The work that scales with images (reading, PNG/JPEG decoding, crop and flip) runs in Ray
Data tasks that reserve only CPUs, so on a cluster it lands on CPU nodes; workers receive
compact uint8 NCHW batches and normalise on their own device.

Order of the CPU work per batch: decode -> random crop -> flip -> RandAugment at the stage's
magnitude (timm's or torchvision's, `rayaccel.data.randaugment`) -> optional anti-aliased
down-sampling to the stage's resolution (EfficientTrain++ `resize` mode). Augmenting at full size and shrinking last is the release's order: the
augmentations see the same pixels whatever the stage, and early stages ship smaller batches.

Segmentation sets (`DecodeSpec.task == "segmentation"`) also carry a `mask` per row; it gets
exactly the image's geometry (resize, crop offsets, flips), resampled nearest-neighbour so
class ids are never blended, and photometric RandAugment is refused rather than half-applied.

Bad rows (undecodable bytes, labels or mask values out of range) either fail the run with the
shard, the row and the reason, or, with `on_bad_row="skip"`, are kept in the stream with `bad=1` and
blank pixels so the worker can drop and count them: every worker still takes the same number
of steps, and the count reaches the epoch metrics.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from rayaccel.core.storage import resolve_path
from rayaccel.data.codec import decode_image
from rayaccel.data.metadata import TASKS, ShardSetMeta
from rayaccel.data.randaugment import IMPLS, changes_images, rand_augment
from rayaccel.methods.etpp.frequency import resize_antialias

BAD_ROW_MARK = "rayaccel bad data row"


class BadRowError(ValueError):
    """A row that cannot be trained on; the message names shard, row and reason."""


@dataclass(frozen=True)
class DecodeSpec:
    """Plain arguments of the decode/augment operator (no job config crosses into Ray Data)."""

    image_size_px: int
    channels: int
    num_classes: int
    on_bad_row: str
    random_crop_padding_px: int = 0
    horizontal_flip: bool = False
    # "timm" | "torchvision" (`rayaccel.data.randaugment`); None means no RandAugment.
    randaug_impl: str | None = None
    # timm's 0..10 scale; timm's RandAugment still changes images at 0, torchvision's does not.
    randaug_magnitude: float = 0.0
    # The pixel timm's geometric ops fill with (the data set's mean); None means mid-grey.
    randaug_fill: tuple[int, ...] | None = None
    # Down-sample to this side after augmenting; None keeps image_size_px.
    output_size_px: int | None = None
    shard_first_index: tuple[tuple[str, int], ...] = ()
    # "segmentation" also decodes the `mask` column (see the module docstring).
    task: str = "classification"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"DecodeSpec.task must be one of {TASKS}, got {self.task!r}")
        if self.randaug_impl is not None and self.randaug_impl not in IMPLS:
            raise ValueError(
                f"DecodeSpec.randaug_impl must be one of {IMPLS} or None, got {self.randaug_impl!r}"
            )
        if self.randaug_impl is None and self.randaug_magnitude:
            raise ValueError(
                f"DecodeSpec.randaug_magnitude={self.randaug_magnitude} needs a randaug_impl "
                f"(one of {IMPLS})"
            )

    @property
    def augments(self) -> bool:
        """Whether RandAugment changes any image of this spec."""
        return changes_images(self.randaug_impl, self.randaug_magnitude)


def shard_paths(location: str, meta: ShardSetMeta) -> tuple[pafs.FileSystem, list[str]]:
    """The filesystem and the shard files of a split, in index order."""
    fs, root = resolve_path(location)
    return fs, [f"{root.rstrip('/')}/{shard.file}" for shard in meta.shards]


def decode_batch(batch: dict[str, np.ndarray], spec: DecodeSpec, rng: np.random.Generator):
    """Decodes and augments one batch of rows; pure apart from `rng`.

    Returns `image` (N, C, H, W) uint8 (H = W = `output_size_px` when set), `label` int64,
    `index` int64 and `bad` uint8; for segmentation also `mask` (N, H, W) uint8 with the
    image's H and W.

    Raises:
        BadRowError: for a bad row when `spec.on_bad_row` is "fail".
        ValueError: for RandAugment on a segmentation spec.
    """
    segmentation = spec.task == "segmentation"
    if segmentation and spec.augments:
        raise ValueError(
            "RandAugment must be off for segmentation (randaug_impl None, or torchvision at "
            "randaug_magnitude 0): its geometric ops would move the image away from its mask"
        )
    count = len(batch["index"])
    size = spec.image_size_px
    # Segmentation decodes the mask as one extra channel, so crops and flips move both alike.
    planes = spec.channels + (1 if segmentation else 0)
    images = np.zeros((count, size, size, planes), dtype=np.uint8)
    bad = np.zeros(count, dtype=np.uint8)
    labels = np.array(batch["label"], dtype=np.int64)  # a copy: Ray Data batches are read-only
    indices = np.asarray(batch["index"], dtype=np.int64)
    for row in range(count):
        reason = None
        if not 0 <= labels[row] < spec.num_classes:
            reason = f"label {labels[row]} is outside 0..{spec.num_classes - 1}"
        else:
            try:
                pixels = decode_image(batch["image"][row], spec.channels)
                if segmentation:
                    images[row, :, :, -1] = _decode_mask(batch["mask"][row], pixels.shape, spec)
                if pixels.shape[0] != size or pixels.shape[1] != size:
                    pixels = _resize(pixels, size)
                images[row, :, :, : spec.channels] = pixels
            except ValueError as err:
                reason = str(err)
        if reason is not None:
            if spec.on_bad_row == "fail":
                raise BadRowError(_describe_row(batch, row, indices[row], spec) + reason)
            images[row] = 0
            bad[row] = 1
            labels[row] = 0
    if spec.random_crop_padding_px:
        images = random_crop(images, spec.random_crop_padding_px, rng)
    if spec.horizontal_flip:
        flip = rng.random(count) < 0.5
        images[flip] = images[flip, :, ::-1]
    masks = None
    if segmentation:
        masks, images = images[..., -1], images[..., :-1]
    if spec.augments:
        images = rand_augment(
            images,
            spec.randaug_magnitude,
            rng,
            impl=spec.randaug_impl,
            fill=spec.randaug_fill,
        )
    if spec.output_size_px is not None:
        images = resize_antialias(images, spec.output_size_px)
        if masks is not None:
            masks = resize_nearest(masks, spec.output_size_px)
    out = {
        "image": np.ascontiguousarray(images.transpose(0, 3, 1, 2)),
        "label": labels,
        "index": indices,
        "bad": bad,
    }
    if masks is not None:
        out["mask"] = np.ascontiguousarray(masks)
    # Columns added before decoding (InfoBatch's `loss_weight`) travel with their rows.
    for name in batch.keys() - {"image", "mask", "label", "index", "path"}:
        out[name] = np.asarray(batch[name])
    return out


def _decode_mask(data: bytes, image_shape: tuple[int, ...], spec: DecodeSpec) -> np.ndarray:
    """One row's mask at `spec.image_size_px`; ValueError (a bad row) if it cannot be used."""
    try:
        mask = decode_image(data, 1)[..., 0]
    except ValueError as err:
        raise ValueError(f"mask: {err}") from None
    if mask.shape != image_shape[:2]:
        raise ValueError(
            f"mask is {mask.shape[0]}x{mask.shape[1]} px but its image is "
            f"{image_shape[0]}x{image_shape[1]} px"
        )
    highest = int(mask.max())
    if highest >= spec.num_classes:
        raise ValueError(f"mask holds class {highest}, outside 0..{spec.num_classes - 1}")
    return resize_nearest(mask[None], spec.image_size_px)[0]


def resize_nearest(masks: np.ndarray, size_px: int) -> np.ndarray:
    """Nearest-neighbour resize of (N, H, W) class maps to (N, size_px, size_px).

    Output pixel i samples input pixel floor((i + 0.5) * H / size_px), its centre's nearest
    neighbour (PIL's NEAREST rule), so only values present in the input appear in the output.
    Returns the input itself when it already has the size.
    """
    height_px, width_px = masks.shape[1:3]
    if (height_px, width_px) == (size_px, size_px):
        return masks
    rows = ((np.arange(size_px) + 0.5) * height_px / size_px).astype(np.int64)
    columns = ((np.arange(size_px) + 0.5) * width_px / size_px).astype(np.int64)
    return masks[:, rows[:, None], columns[None, :]]


def random_crop(images: np.ndarray, padding_px: int, rng: np.random.Generator) -> np.ndarray:
    """Random crops of the original size from zero-padded NHWC images, one offset per image."""
    count, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (padding_px,) * 2, (padding_px,) * 2, (0, 0)))
    offsets = rng.integers(0, 2 * padding_px + 1, size=(count, 2))
    out = np.empty_like(images)
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, dy : dy + height, dx : dx + width]
    return out


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    mode = "L" if pixels.shape[2] == 1 else "RGB"
    image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
    resized = np.asarray(image.resize((size, size), Image.BILINEAR))
    return resized.reshape(size, size, -1)


def _describe_row(batch, row: int, index: int, spec: DecodeSpec) -> str:
    path = str(batch["path"][row]) if "path" in batch else "?"
    shard = os.path.basename(path)
    first = dict(spec.shard_first_index).get(shard)
    position = f"row {index - first}" if first is not None else "row ?"
    return f"{BAD_ROW_MARK}: shard {path} {position} (index {index}): "


def _decode_task(batch: dict[str, np.ndarray], spec: DecodeSpec) -> dict[str, np.ndarray]:
    # Augmentation randomness is fresh per call; the shuffle order is what is seeded and
    # reproducible.
    return decode_batch(batch, spec, np.random.default_rng())


def build_dataset(
    location: str,
    meta: ShardSetMeta,
    spec: DecodeSpec,
    *,
    shuffle_seed: int | None,
    preprocess_cpus: float,
    decode_batch_rows: int,
    row_filter=None,
    row_filter_kwargs: dict | None = None,
):
    """The Ray Data pipeline for one split.

    Args:
        location: Folder or URI of the split's shards.
        meta: The split's metadata (names the shards and their first indices).
        spec: What to decode to and how to augment.
        shuffle_seed: Seed of the per-epoch full shuffle (a different, reproducible order on
            every execution, i.e. every epoch); None keeps the stored order (evaluation).
        preprocess_cpus: CPUs each decode task reserves; set explicitly because a default
            1-CPU task may never schedule next to fractional training workers.
        decode_batch_rows: Rows per decode task call.
        row_filter: Optional `map_batches` function run right after the read, before the
            shuffle and decoding, so rows it drops cost no decode work (InfoBatch's
            `keep_rows`); it may add columns, which reach the workers.
        row_filter_kwargs: Keyword arguments of `row_filter`.
    """
    import ray.data
    from ray.data import RandomSeedConfig

    fs, paths = shard_paths(location, meta)
    first_index = tuple((shard.file, shard.first_index) for shard in meta.shards)
    spec = dataclasses.replace(spec, shard_first_index=first_index)
    columns = ["image", "label", "index"]
    if spec.task == "segmentation":
        columns.insert(1, "mask")
    ds = ray.data.read_parquet(
        paths,
        filesystem=fs,
        columns=columns,
        include_paths=True,
        num_cpus=preprocess_cpus,
    )
    if row_filter is not None:
        ds = ds.map_batches(
            row_filter,
            fn_kwargs=row_filter_kwargs or {},
            batch_size=decode_batch_rows,
            batch_format="numpy",
            num_cpus=preprocess_cpus,
        )
    if shuffle_seed is not None:
        ds = ds.random_shuffle(
            seed=RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True)
        )
    return ds.map_batches(
        _decode_task,
        fn_kwargs={"spec": spec},
        batch_size=decode_batch_rows,
        batch_format="numpy",
        num_cpus=preprocess_cpus,
    )
