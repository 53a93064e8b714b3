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

Bad rows (undecodable bytes, labels or mask values out of range, a shard image whose channel
count differs from metadata.json's) either fail the run naming each bad row of the batch (the
shard, the row and the reason), or, with `on_bad_row="skip"`, are kept in the stream with `bad=1` and
blank pixels so the worker can drop and count them: every worker still takes the same number
of steps, and the count reaches the epoch metrics.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch
from PIL import Image

from rayaccel.core.storage import resolve_path
from rayaccel.data.codec import MODE_BY_CHANNELS, channel_problem, decode_image, open_image
from rayaccel.data.folder import read_files
from rayaccel.data.metadata import TASKS, ShardSetMeta
from rayaccel.data.randaugment import (
    IMPLS,
    apply_policy,
    changes_images,
    policy_transform,
    rand_augment,
    seeded_global_rngs,
    timm_transform,
)
from rayaccel.data.transforms import (
    DEFAULT_RATIO,
    crop_and_resize,
    crop_and_resize_image,
    eval_crop,
    rrc_boxes,
)
from rayaccel.methods.etpp.frequency import resize_antialias

BAD_ROW_MARK = "rayaccel bad data row"


class BadRowError(ValueError):
    """A row that cannot be trained on; the message names shard, row and reason."""


BAD_SHARD_MARK = "rayaccel bad shard"


class BadShardError(ValueError):
    """A shard that cannot be read at all; the message names it and pyarrow's reason."""


def unreadable_shard(path: str, error: BaseException) -> BadShardError:
    """The error for a shard whose rows cannot be read (checked at validation, but a shard
    may be replaced or truncated after that, e.g. by a copy still in progress)."""
    return BadShardError(
        f"{BAD_SHARD_MARK}: {path}: not a readable parquet file ({error}); prepare the split "
        "again (`rayaccel validate` checks every shard's footer)"
    )


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
    # RandomResizedCrop's area-fraction bounds; None: no RandomResizedCrop, and an image of
    # another size than image_size_px gets the evaluation crop at `crop_pct`.
    rrc_scale: tuple[float, float] | None = None
    rrc_ratio: tuple[float, float] = DEFAULT_RATIO
    # The side RandomResizedCrop resamples its crop to; None means image_size_px (a stage's
    # px crops straight to the stage's resolution, the cheap path).
    rrc_output_px: int | None = None
    # A fixed augmentation policy, a timm string (`rand-m9-mstd0.5-inc1`) or
    # "trivialaugment" (`rayaccel.data.randaugment.policy_transform`); None: none.
    augment_policy: str | None = None
    # Evaluation crop: the shorter side resized to image_size_px / crop_pct, then the centre
    # square; 1.0 keeps the whole shorter side (never squashes a photo's aspect ratio).
    crop_pct: float = 1.0
    # Let JPEGs decode at a reduced DCT scale when the crop is shrunk anyway.
    reduced_decode: bool = True
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
        if self.task == "segmentation" and (self.rrc_scale or self.augment_policy):
            raise ValueError(
                "DecodeSpec: RandomResizedCrop and augmentation policies are for classification"
            )
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"DecodeSpec.crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.randaug_impl is None and self.randaug_magnitude:
            raise ValueError(
                f"DecodeSpec.randaug_magnitude={self.randaug_magnitude} needs a randaug_impl "
                f"(one of {IMPLS})"
            )

    @property
    def decoded_px(self) -> int:
        """The side of the decoded (and cropped) images, before the final down-sampling."""
        if self.rrc_scale is not None and self.rrc_output_px is not None:
            return self.rrc_output_px
        return self.image_size_px

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
    size = spec.decoded_px
    # Segmentation decodes the mask as one extra channel, so crops and flips move both alike.
    planes = spec.channels + (1 if segmentation else 0)
    images = np.zeros((count, size, size, planes), dtype=np.uint8)
    bad = np.zeros(count, dtype=np.uint8)
    labels = np.array(batch["label"], dtype=np.int64)  # a copy: Ray Data batches are read-only
    indices = np.asarray(batch["index"], dtype=np.int64)
    reasons: list[str | None] = [None] * count
    opened = [None] * count
    for row in range(count):
        if not 0 <= labels[row] < spec.num_classes:
            reasons[row] = f"label {labels[row]} is outside 0..{spec.num_classes - 1}"
        elif not segmentation:
            try:
                opened[row] = open_image(batch["image"][row])
            except ValueError as err:
                reasons[row] = str(err)
            else:
                if _from_shard(batch, row):
                    reasons[row] = channel_problem(opened[row], spec.channels)
    boxes = None
    if spec.rrc_scale is not None:
        # Drawn for every row (a blank size for bad ones) so a row's box does not depend on
        # whether another row of its batch was bad.
        sizes = np.array([image.size if image else (1, 1) for image in opened]).reshape(-1, 2)
        boxes = rrc_boxes(sizes[:, 0], sizes[:, 1], spec.rrc_scale, spec.rrc_ratio, rng)
    photo = _photo_path(spec)
    if photo is not None:
        # Crop, flip and augment each photo as a PIL image, converted to pixels once: the
        # draws are those of the array path below, in the same order, so both give the
        # same pixels (a test compares them); this one skips two conversions per image.
        flip = rng.random(count) < 0.5 if spec.horizontal_flip else np.zeros(count, bool)
        transform = photo(spec)
        seed = int(rng.integers(2**32)) if transform is not None else 0
        # Seeded as `rand_augment` and `apply_policy` seed them (torchvision's ops draw
        # from torch's generator).
        with seeded_global_rngs(seed), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for row in range(count):
                if reasons[row] is None:
                    try:
                        image = crop_and_resize_image(
                            opened[row],
                            boxes[row],
                            (size, size),
                            spec.channels,
                            reduced_decode=spec.reduced_decode,
                        )
                    except ValueError as err:
                        reasons[row] = str(err)
                if reasons[row] is not None:
                    continue
                if flip[row]:
                    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                if transform is not None:
                    image = transform(image)
                images[row] = np.asarray(image).reshape(size, size, spec.channels)
    for row in range(count):
        if reasons[row] is None and photo is None:
            try:
                if segmentation:
                    images[row] = _decode_segmentation_row(batch, row, spec)
                else:
                    images[row] = _geometry(
                        opened[row], None if boxes is None else boxes[row], spec
                    )
            except ValueError as err:
                reasons[row] = str(err)
        if reasons[row] is not None:
            images[row] = 0
            bad[row] = 1
            labels[row] = 0
    if spec.on_bad_row == "fail" and bad.any():
        raise BadRowError(_describe_bad_rows(batch, indices, reasons, spec))
    if photo is not None:
        return _batch_out(images, labels, indices, bad, None, batch, spec, size)
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
    if spec.augment_policy is not None:
        images = apply_policy(images, spec.augment_policy, rng, fill=spec.randaug_fill)
    return _batch_out(images, labels, indices, bad, masks, batch, spec, size)


def _photo_path(spec: DecodeSpec):
    """How `decode_batch` augments a RandomResizedCrop row as a PIL image (a function of
    the spec giving the transform, or giving None for none), or None where the array path
    must run: a padded crop, segmentation, two PIL transforms, or torchvision's
    RandAugment, which works on the whole batch."""
    if spec.rrc_scale is None or spec.random_crop_padding_px or spec.task != "classification":
        return None
    if spec.augments and spec.augment_policy is not None:
        return None
    if spec.augments:
        if spec.randaug_impl != "timm":
            return None
        return lambda s: timm_transform(s.randaug_magnitude, s.channels, s.randaug_fill)
    if spec.augment_policy is not None:
        return lambda s: policy_transform(s.augment_policy, s.channels, s.randaug_fill)
    return lambda s: None


def _batch_out(images, labels, indices, bad, masks, batch, spec: DecodeSpec, size: int) -> dict:
    """The decoded batch as the workers receive it, down-sampled to the stage's size."""
    if spec.output_size_px is not None and spec.output_size_px != size:
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


def _geometry(image, box, spec: DecodeSpec) -> np.ndarray:
    """One classification row's pixels at `spec.decoded_px`: its RandomResizedCrop `box`, the
    image itself when it has that size already, else the evaluation crop."""
    size = spec.decoded_px
    if box is not None:
        return crop_and_resize(
            image, box, (size, size), spec.channels, reduced_decode=spec.reduced_decode
        )
    if image.size == (size, size):
        mode = MODE_BY_CHANNELS[spec.channels]
        try:
            pixels = np.asarray(image if image.mode == mode else image.convert(mode))
        except OSError as error:
            raise ValueError(f"not a decodable image ({error})") from error
        return pixels.reshape(size, size, spec.channels)
    return eval_crop(image, size, spec.crop_pct, spec.channels, reduced_decode=spec.reduced_decode)


def _decode_segmentation_row(batch, row: int, spec: DecodeSpec) -> np.ndarray:
    """Image and mask of one segmentation row as (size, size, channels + 1); both squashed
    to the square size alike (RandomResizedCrop and crops are classification-only here)."""
    size = spec.image_size_px
    if _from_shard(batch, row):
        problem = channel_problem(open_image(batch["image"][row]), spec.channels)
        if problem is not None:
            raise ValueError(problem)
    pixels = decode_image(batch["image"][row], spec.channels)
    mask = _decode_mask(batch["mask"][row], pixels.shape, spec)
    if pixels.shape[0] != size or pixels.shape[1] != size:
        pixels = _resize(pixels, size)
    return np.concatenate([pixels, mask[..., None]], axis=2)


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


def _from_shard(batch, row: int) -> bool:
    """Whether a row comes from a parquet shard (whose metadata promises its channels) rather
    than an image folder's file (any mode, converted)."""
    return "path" not in batch or str(batch["path"][row]).endswith(".parquet")


# A batch's bad rows are all named (a user fixes them in one go), up to this many.
_MAX_BAD_ROWS_NAMED = 5


def _describe_bad_rows(batch, indices: np.ndarray, reasons: list[str | None], spec) -> str:
    """One line naming each bad row of a batch (shard, row, index) and its reason, in index
    order so the message does not depend on the epoch's shuffle."""
    rows = sorted((int(indices[row]), row) for row, reason in enumerate(reasons) if reason)
    named = [
        _describe_row(batch, row, index, spec) + reasons[row]
        for index, row in rows[:_MAX_BAD_ROWS_NAMED]
    ]
    more = len(rows) - len(named)
    tail = f"; and {more} more bad rows in this batch" if more else ""
    return f"{BAD_ROW_MARK}: " + "; ".join(named) + tail


def _describe_row(batch, row: int, index: int, spec: DecodeSpec) -> str:
    path = str(batch["path"][row]) if "path" in batch else "?"
    shard = os.path.basename(path)
    first = dict(spec.shard_first_index).get(shard)
    if first is None and "path" in batch and not path.endswith(".parquet"):
        return f"file {path} (index {index}): "
    position = f"row {index - first}" if first is not None else "row ?"
    return f"shard {path} {position} (index {index}): "


@dataclass(frozen=True)
class EpochOrder:
    """The order a training split is read in each epoch, a pure function of (seed, epoch).

    Instead of an all-to-all shuffle of the whole split per epoch, each shard is cut into
    windows of `window_rows` consecutive rows, the cut points moved by a random offset every
    epoch (so windows do not keep the same rows together), and the epoch reads the windows in
    a random order and each window's rows in a random order. Prepared shards store rows in a
    random order already (`rayaccel data prepare`), so a window is a random sample of the
    split and a batch a random sample of a window. Every window is one Ray Data task that
    reads, permutes and decodes its rows, so decoding runs in as many tasks as CPUs allow.

    Attributes:
        seed: The stream's seed (the job's seed and the stage).
        window_rows: Rows per window; the shuffle's reach and one task's work.
        shard_rows: Rows of each shard, in index order.
    """

    seed: int
    window_rows: int
    shard_rows: tuple[int, ...]

    @property
    def first_rows(self) -> tuple[int, ...]:
        """Each shard's first row in the split."""
        return tuple(int(x) for x in np.cumsum((0, *self.shard_rows[:-1])))

    @property
    def slots(self) -> int:
        """The most windows an epoch can have: one Ray Data block (task) per slot."""
        return sum(-(-rows // self.window_rows) + 1 for rows in self.shard_rows)

    def windows(self, epoch: int | None) -> list[tuple[int, int, int]]:
        """(shard, first row, end row) of every window of `epoch`, in reading order; None:
        the stored order (evaluation)."""
        if epoch is None:
            return [
                (shard, start, min(start + self.window_rows, rows))
                for shard, rows in enumerate(self.shard_rows)
                for start in range(0, rows, self.window_rows)
            ]
        rng = np.random.default_rng([self.seed, epoch])
        windows = []
        for shard, rows in enumerate(self.shard_rows):
            cuts = range(int(rng.integers(self.window_rows)), rows, self.window_rows)
            edges = sorted({0, rows, *cuts})
            windows += [(shard, a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]
        return [windows[i] for i in rng.permutation(len(windows))]

    def row_rng(self, epoch: int | None, shard: int, start: int, part: int):
        """The generator of one decode batch's augmentation: the window and the batch's place
        in it fix it, so a resumed run augments every row exactly as an uninterrupted one."""
        epoch_key = 0 if epoch is None else epoch + 1
        return np.random.default_rng([self.seed, epoch_key, shard, start, part])


def _make_epoch_clock():
    import ray

    @ray.remote(num_cpus=0)
    class EpochClock:
        """The epoch every training pipeline of a run reads (rank 0 sets it at each epoch's
        start, before any worker asks for the epoch's first batch)."""

        def __init__(self):
            self.epoch = 0

        def set(self, epoch: int) -> None:
            self.epoch = epoch

        def current(self) -> int:
            return self.epoch

    return EpochClock


EPOCH_CLOCK_KEY = "epoch_clock"
"""The clock's key among the resources handed to the workers."""


def start_epoch_clock():
    """A new epoch clock actor for one run (see `EpochClock`)."""
    return _make_epoch_clock().remote()


def read_window(fs: pafs.FileSystem, path: str, start: int, end: int, columns: list[str]):
    """Rows `start:end` of one parquet file as NumPy columns, reading only the row groups
    that hold them."""
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        groups, first_row, offset = [], None, 0
        for group in range(parquet.metadata.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if offset < end and offset + rows > start:
                groups.append(group)
                first_row = offset if first_row is None else first_row
            offset += rows
        table = parquet.read_row_groups(groups, columns=columns)
    table = table.slice(start - first_row, end - start)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in columns}


def _window_task(
    batch: dict[str, np.ndarray],
    *,
    location: str,
    files: tuple[str, ...],
    columns: list[str],
    order: EpochOrder,
    shuffle: bool,
    clock,
    spec: DecodeSpec,
    decode_batch_rows: int,
    row_filter,
    row_filter_kwargs: dict,
    listing=None,
):
    """One window: read its rows (from a shard, or `listing`'s files: an object ref of a
    `FolderListing`), drop the filtered ones, permute, decode in batches."""
    import ray

    epoch = ray.get(clock.current.remote()) if shuffle else None
    windows = order.windows(epoch)
    slot = int(batch["slot"][0])
    if slot >= len(windows):
        return
    shard, start, end = windows[slot]
    if listing is not None:
        first = order.first_rows[shard]
        rows = read_files(_get_listing(listing), first + start, first + end)
    else:
        fs, root = resolve_path(location)
        path = f"{root.rstrip('/')}/{files[shard]}"
        try:
            rows = read_window(fs, path, start, end, columns)
        except (OSError, pa.ArrowInvalid) as err:
            raise unreadable_shard(path, err) from None
        rows["path"] = np.full(end - start, path, dtype=object)
    if row_filter is not None:
        rows = row_filter(rows, **row_filter_kwargs)
    count = len(rows["index"])
    if shuffle:
        permutation = np.random.default_rng([order.seed, epoch, shard, start]).permutation(count)
        rows = {name: column[permutation] for name, column in rows.items()}
    for part, first in enumerate(range(0, count, decode_batch_rows)):
        piece = {name: column[first : first + decode_batch_rows] for name, column in rows.items()}
        yield decode_batch(piece, spec, order.row_rng(epoch, shard, start, part))


_listings: dict = {}


def _get_listing(ref):
    """The folder listing behind `ref`, fetched once per process."""
    import ray

    key = ref.hex()
    if key not in _listings:
        _listings[key] = ray.get(ref)
    return _listings[key]


def _decode_task(batch: dict[str, np.ndarray], spec: DecodeSpec, clock, seed: int):
    # The full shuffle's batches: the rows a batch holds differ between executions, so its
    # augmentation is seeded by the epoch and its first row.
    import ray

    epoch = ray.get(clock.current.remote())
    rng = np.random.default_rng([seed, epoch, int(np.asarray(batch["index"])[0])])
    return decode_batch(batch, spec, rng)


SHUFFLES = ("windows", "full")


def build_dataset(
    location: str,
    meta: ShardSetMeta,
    spec: DecodeSpec,
    *,
    shuffle_seed: int | None,
    preprocess_cpus: float,
    decode_batch_rows: int,
    window_rows: int = 1024,
    shuffle: str = "windows",
    clock=None,
    row_filter=None,
    row_filter_kwargs: dict | None = None,
    listing=None,
):
    """The Ray Data pipeline for one split.

    Args:
        location: Folder or URI of the split's shards.
        meta: The split's metadata (names the shards and their first indices).
        spec: What to decode to and how to augment.
        shuffle_seed: Seed of the per-epoch order (`EpochOrder`); None keeps the stored
            order and draws no augmentation per epoch (evaluation).
        preprocess_cpus: CPUs each decode task reserves; set explicitly because a default
            1-CPU task may never schedule next to fractional training workers.
        decode_batch_rows: Rows per decoded batch.
        window_rows: Rows one task reads, permutes and decodes (`EpochOrder`).
        shuffle: "windows" (`EpochOrder`) or "full": Ray Data's all-to-all random shuffle of
            the whole split every epoch (a resumed run then reads another order).
        clock: The run's epoch clock actor (`start_epoch_clock`); needed with a shuffle_seed.
        row_filter: Optional batch function run on the rows read, before the shuffle and the
            decoding, so rows it drops cost no decode work (InfoBatch's `keep_rows`); it may
            add columns, which reach the workers.
        row_filter_kwargs: Keyword arguments of `row_filter`.
        listing: For an image folder read at run time (`rayaccel.data.folder`): its
            `FolderListing`, or an object ref of it (`ray.put` once for a run's several
            pipelines over one folder); `meta` then is its `folder_meta`.
    """
    import ray.data
    from ray.data import RandomSeedConfig

    if shuffle not in SHUFFLES:
        raise ValueError(f"shuffle must be one of {SHUFFLES}, got {shuffle!r}")
    if shuffle_seed is not None and clock is None:
        raise ValueError("a shuffled pipeline needs the run's epoch clock (start_epoch_clock)")
    first_index = tuple((shard.file, shard.first_index) for shard in meta.shards)
    spec = dataclasses.replace(spec, shard_first_index=first_index)
    columns = ["image", "label", "index"]
    if spec.task == "segmentation":
        columns.insert(1, "mask")
    if listing is not None and shuffle == "full":
        raise ValueError("an image folder read at run time is ordered by windows only")
    if shuffle == "full" and shuffle_seed is not None:
        fs, paths = shard_paths(location, meta)
        ds = ray.data.read_parquet(
            paths, filesystem=fs, columns=columns, include_paths=True, num_cpus=preprocess_cpus
        )
        if row_filter is not None:
            ds = ds.map_batches(
                row_filter,
                fn_kwargs=row_filter_kwargs or {},
                batch_size=decode_batch_rows,
                batch_format="numpy",
                num_cpus=preprocess_cpus,
            )
        ds = ds.random_shuffle(
            seed=RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True)
        )
        return ds.map_batches(
            _decode_task,
            fn_kwargs={"spec": spec, "clock": clock, "seed": shuffle_seed},
            batch_size=decode_batch_rows,
            batch_format="numpy",
            num_cpus=preprocess_cpus,
        )
    order = EpochOrder(
        seed=0 if shuffle_seed is None else shuffle_seed,
        window_rows=window_rows,
        shard_rows=tuple(shard.count for shard in meta.shards),
    )
    slots = ray.data.from_items(
        [{"slot": slot} for slot in range(order.slots)], override_num_blocks=order.slots
    )
    # Ray Data's per-operator reservation kept half the CPUs for the input operator, which
    # needs none, so window tasks ran one at a time on 2 CPUs (full Fashion-MNIST: 3.4 s per
    # pass against 2.0 s without it). With one operator doing all the work there is nothing
    # to reserve for.
    slots.context.op_resource_reservation_enabled = False
    return slots.map_batches(
        _window_task,
        fn_kwargs={
            "location": location,
            "files": tuple(shard.file for shard in meta.shards),
            "columns": columns,
            "order": order,
            "shuffle": shuffle_seed is not None,
            "clock": clock,
            "spec": spec,
            "decode_batch_rows": decode_batch_rows,
            "row_filter": row_filter,
            "row_filter_kwargs": row_filter_kwargs or {},
            "listing": (
                listing
                if listing is None or isinstance(listing, ray.ObjectRef)
                else ray.put(listing)
            ),
        },
        batch_size=1,
        batch_format="numpy",
        num_cpus=preprocess_cpus,
    )
