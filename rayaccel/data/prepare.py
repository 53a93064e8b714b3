"""Convert a dataset from its original format into parquet shards plus ``metadata.json``.

Training reads shards with Ray Data, which streams parquet from local disk or object storage in
parallel; the original formats (IDX, CIFAR pickles, folders of files) either need the whole set in
one process's memory or cost one storage request per image. Conversion runs once per dataset:

    rayaccel data prepare fashion-mnist /usr/share/datasets/fashion-mnist out/fashion-mnist

Output, per split (``train``/``test``, or ``train``/``val`` for an ImageNet-style folder)::

    OUT/<split>/part-00000.parquet ...   columns image (PNG/JPEG bytes), label, index[, source_index]
    OUT/<split>/metadata.json            see ``metadata.ShardSetMeta``

``fashion-seg`` derives a semantic-segmentation set from Fashion-MNIST, so segmentation methods
(AGVM) can be tested on real images without downloading a segmentation benchmark: each image keeps
its pixels, and its mask marks the pixels at or above a brightness threshold with the image's
class + 1 (0 is background). Its shards have an extra ``mask`` column (greyscale PNG, always
lossless) and ``label`` is the mask class 1..10.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image, ImageOps, UnidentifiedImageError

from rayaccel.core.storage import resolve_path
from rayaccel.data import formats
from rayaccel.data.codec import ENCODINGS, decode_image, encode_image
from rayaccel.data.metadata import (
    METADATA_FILE,
    ShardInfo,
    ShardSetMeta,
    read_meta,
    write_meta,
)

KINDS = ("fashion-mnist", "fashion-seg", "cifar10", "cifar100", "imagefolder")
FASHION_SEG_CLASSES = ("background", *formats.FASHION_MNIST_CLASSES)
# 20% of full brightness: Fashion-MNIST backgrounds are 0 and garments mostly well above this, so
# the mask follows the garment's silhouette while dark folds inside it stay (mostly) foreground.
DEFAULT_MASK_THRESHOLD = 51

ProgressFn = Callable[[str, int, int], None]
"""Called as ``progress(split, rows_done, rows_total)`` after each shard is written."""


class PrepareError(ValueError):
    """Bad input to ``prepare_dataset``: the message says what was wrong and what would be right."""


class _SourceSplit:
    """Labels of one split plus a way to get the pixels of any of its images by position.

    Args:
        labels: int64 label per image.
        load_pixels: position -> uint8 pixels.
        mask_of: for segmentation sets, (position, pixels) -> uint8 (H, W) mask; None otherwise.
        source_indices: each image's position in the original dataset when the source is itself
            a subset (a prepared fixture); written as ``source_index`` so rows stay traceable.
    """

    def __init__(
        self,
        labels: np.ndarray,
        load_pixels: Callable[[int], np.ndarray],
        *,
        mask_of: Callable[[int, np.ndarray], np.ndarray] | None = None,
        source_indices: np.ndarray | None = None,
    ):
        self.labels = labels
        self.load_pixels = load_pixels
        self.mask_of = mask_of
        self.source_indices = source_indices


class _PixelStats:
    """Exact per-channel mean and std: sums are kept as Python ints, so no rounding accumulates."""

    def __init__(self, channels: int):
        self.channels = channels
        self.pixel_count = 0
        self.sums = [0] * channels
        self.square_sums = [0] * channels

    def add(self, pixels: np.ndarray) -> None:
        flat = pixels.reshape(-1, self.channels).astype(np.uint64)
        self.pixel_count += flat.shape[0]
        for channel, (total, square_total) in enumerate(
            zip(flat.sum(axis=0), (flat * flat).sum(axis=0), strict=True)
        ):
            self.sums[channel] += int(total)
            self.square_sums[channel] += int(square_total)

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Mean and population std per channel, in [0, 1] pixel units."""
        n = self.pixel_count
        if n == 0:
            return [0.0] * self.channels, [0.0] * self.channels
        means = [total / (n * 255) for total in self.sums]
        stds = [
            math.sqrt((n * square_total - total * total) / (n * n * 255 * 255))
            for total, square_total in zip(self.sums, self.square_sums, strict=True)
        ]
        return means, stds


def prepare_dataset(
    kind: str,
    src: str | Path,
    out: str | Path,
    *,
    rows_per_shard: int = 10000,
    encoding: str | None = None,
    jpeg_quality: int = 90,
    image_size: int | None = None,
    per_class: dict[str, int] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    mask_threshold: int | None = None,
) -> dict[str, ShardSetMeta]:
    """Convert one dataset to parquet shards, one folder per split.

    Mean and std in the metadata are computed exactly over the pixels that were encoded. For PNG
    these are the pixels a reader decodes; for JPEG they are the (resized) source pixels, which
    differ from the decoded ones by the compression error only.

    Args:
        kind: one of ``KINDS``.
        src: the dataset in its original layout: the IDX folder (fashion-mnist), the extracted
            CIFAR folder or its parent (cifar10/cifar100), or a class-per-folder tree, optionally
            split into ``train/`` and ``val/`` or ``test/`` (imagefolder). fashion-seg takes the
            IDX folder or an already prepared fashion-mnist folder (``train/``, ``test/`` split
            folders of parquet shards, e.g. ``data/fixture/fashion-mnist``).
        out: output folder, local or a pyarrow.fs URI; ``OUT/<split>/`` is created per split.
        rows_per_shard: rows per parquet file. Ray Data reads files in parallel, so keep at least
            a few shards per training worker.
        encoding: "png" or "jpeg"; None means PNG (lossless) for fashion-mnist and CIFAR, whose
            images are tiny, and JPEG for imagefolder, whose photos would grow several-fold as PNG.
        jpeg_quality: JPEG quality 1-95.
        image_size: imagefolder only: resize the shorter side to this many pixels, then centre-crop
            to a square. None keeps each image's size.
        per_class: {split: n} keeps a seeded, stratified subset of at most n images per class of
            that split (for fixtures and quick experiments); splits not named are kept whole.
            Each subset split gets an extra int64 ``source_index`` column: the row's position in
            the original split (for imagefolder, in that split's sorted file list), so a subset
            can be checked against, or traced back to, the source.
        seed: seed of the per-class subset choice.
        overwrite: replace the contents of existing ``OUT/<split>`` folders. Otherwise a non-empty
            one is an error, because mixing old and new shards would corrupt the split silently.
        progress: see ``ProgressFn``; None reports nothing.
        mask_threshold: fashion-seg only: pixels >= this grey level (0-255) are the object,
            the rest background. None means ``DEFAULT_MASK_THRESHOLD`` (51, 20% of 255).

    Returns:
        {split: metadata written to ``OUT/<split>/metadata.json``}.

    Raises:
        PrepareError: for a bad argument, a missing or malformed source, or an existing output.
    """
    if kind not in KINDS:
        raise PrepareError(f"unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}")
    if rows_per_shard < 1:
        raise PrepareError(f"rows_per_shard (--rows-per-shard) must be >= 1, got {rows_per_shard}")
    if encoding is None:
        encoding = "jpeg" if kind == "imagefolder" else "png"
    if encoding not in ENCODINGS:
        raise PrepareError(f"encoding (--encoding) must be png or jpeg, got {encoding!r}")
    if not 1 <= jpeg_quality <= 95:
        raise PrepareError(f"jpeg_quality (--jpeg-quality) must be in [1, 95], got {jpeg_quality}")
    if image_size is not None and kind != "imagefolder":
        raise PrepareError(
            f"image_size (--image-size) applies only to imagefolder; {kind} images have a fixed size"
        )
    if image_size is not None and image_size < 1:
        raise PrepareError(f"image_size (--image-size) must be >= 1 pixel, got {image_size}")
    if mask_threshold is not None and kind != "fashion-seg":
        raise PrepareError(
            f"mask_threshold (--mask-threshold) applies only to fashion-seg, not to {kind}"
        )
    if mask_threshold is None:
        mask_threshold = DEFAULT_MASK_THRESHOLD
    if not 1 <= mask_threshold <= 255:
        raise PrepareError(
            f"mask_threshold (--mask-threshold) must be a grey level in [1, 255], got "
            f"{mask_threshold}"
        )
    if not Path(src).exists():
        raise PrepareError(f"source {src} does not exist; expected the {kind} dataset there")

    try:
        splits, classes, channels = _load_source(kind, Path(src), image_size, mask_threshold)
    except (FileNotFoundError, ValueError) as error:
        raise PrepareError(str(error)) from error
    per_class = dict(per_class or {})
    unknown_splits = sorted(set(per_class) - set(splits))
    if unknown_splits:
        raise PrepareError(f"per_class names splits {unknown_splits}; {src} has {sorted(splits)}")
    for split, limit in per_class.items():
        if limit < 1:
            raise PrepareError(f"per_class[{split!r}] must be >= 1 image per class, got {limit}")

    filesystem, out_path = resolve_path(out)
    for split in splits:
        _claim_output_dir(filesystem, f"{out_path}/{split}", overwrite)

    name = Path(src).resolve().name if kind == "imagefolder" else kind
    results = {}
    for split, source in splits.items():
        if split in per_class:
            source_indices = _stratified_subset(source.labels, per_class[split], seed)
        else:
            source_indices = None
        results[split] = _write_split(
            source,
            source_indices,
            filesystem=filesystem,
            split_dir=f"{out_path}/{split}",
            split_uri=f"{str(out).rstrip('/')}/{split}",
            meta_fields={
                "name": name,
                "split": split,
                "classes": classes,
                "channels": channels,
                "task": "segmentation" if kind == "fashion-seg" else "classification",
            },
            rows_per_shard=rows_per_shard,
            encoding=encoding,
            jpeg_quality=jpeg_quality,
            progress=progress,
        )
    return results


def _load_source(
    kind: str, src: Path, image_size: int | None, mask_threshold: int
) -> tuple[dict[str, _SourceSplit], list[str], int]:
    """Splits, class names and channel count of the source dataset."""
    if kind == "fashion-mnist":
        arrays = formats.load_fashion_mnist(src)
        return _array_splits(arrays), list(formats.FASHION_MNIST_CLASSES), 1
    if kind == "fashion-seg":
        if (src / "train" / METADATA_FILE).is_file():
            classification = _prepared_fashion_mnist_splits(src)
        else:
            classification = _array_splits(formats.load_fashion_mnist(src))
        splits = {
            split: _segmentation_split(source, mask_threshold)
            for split, source in classification.items()
        }
        return splits, list(FASHION_SEG_CLASSES), 1
    if kind in ("cifar10", "cifar100"):
        variant = 10 if kind == "cifar10" else 100
        arrays = formats.load_cifar(src, variant)
        return _array_splits(arrays), formats.read_cifar_class_names(src, variant), 3
    splits, classes = {}, None
    for split, folder in formats.image_folder_splits(src).items():
        # Later splits reuse train's class order so a label means the same class everywhere.
        items, classes = formats.scan_image_folder(folder, classes)
        paths = [path for path, _ in items]
        splits[split] = _SourceSplit(
            np.array([label for _, label in items], dtype=np.int64),
            lambda i, paths=paths: _load_folder_image(paths[i], image_size),
        )
    return splits, classes, 3


def _array_splits(arrays: dict[str, formats.Split]) -> dict[str, _SourceSplit]:
    return {
        split: _SourceSplit(labels, lambda i, images=images: images[i])
        for split, (images, labels) in arrays.items()
    }


def _prepared_fashion_mnist_splits(src: Path) -> dict[str, _SourceSplit]:
    """The split folders of a prepared fashion-mnist set, with pixels decoded on demand."""
    splits = {}
    folders = [p for p in src.iterdir() if (p / METADATA_FILE).is_file()]
    for folder in sorted(folders, key=lambda p: (p.name != "train", p.name)):
        meta = read_meta(folder)
        if list(meta.classes) != list(formats.FASHION_MNIST_CLASSES) or meta.channels != 1:
            raise PrepareError(
                f"{folder}: fashion-seg needs a prepared fashion-mnist split (10 Fashion-MNIST "
                f"classes, 1 channel); its metadata.json has classes {list(meta.classes)} and "
                f"{meta.channels} channels"
            )
        table = pa.concat_tables(pq.read_table(folder / shard.file) for shard in meta.shards)
        if table.column("index").to_pylist() != list(range(meta.count)):
            raise PrepareError(f"{folder}: index column is not 0..{meta.count - 1} in shard order")
        encoded = table.column("image").to_pylist()
        has_source_index = "source_index" in table.column_names
        splits[folder.name] = _SourceSplit(
            table.column("label").to_numpy().astype(np.int64),
            lambda i, encoded=encoded: decode_image(encoded[i], 1)[..., 0],
            source_indices=(
                table.column("source_index").to_numpy().astype(np.int64)
                if has_source_index
                else None
            ),
        )
    return splits


def _segmentation_split(source: _SourceSplit, mask_threshold: int) -> _SourceSplit:
    """``source`` with mask classes (class + 1) as labels and threshold masks."""
    mask_labels = source.labels + 1
    return _SourceSplit(
        mask_labels,
        source.load_pixels,
        mask_of=lambda position, pixels: threshold_mask(
            pixels, int(mask_labels[position]), mask_threshold
        ),
        source_indices=source.source_indices,
    )


def threshold_mask(pixels: np.ndarray, mask_class: int, threshold: int) -> np.ndarray:
    """uint8 (H, W) mask: ``mask_class`` where the grey ``pixels`` are >= ``threshold``, else 0."""
    grey = pixels.reshape(pixels.shape[0], pixels.shape[1])
    return np.where(grey >= threshold, np.uint8(mask_class), np.uint8(0))


def _load_folder_image(path: Path, image_size_px: int | None) -> np.ndarray:
    try:
        with Image.open(path) as opened:
            # Phone photos store their rotation in EXIF; apply it so pixels are upright.
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise PrepareError(f"{path}: not a readable image ({error})") from error
    if image_size_px is not None:
        image = _resize_and_centre_crop(image, image_size_px)
    return np.asarray(image)


def _resize_and_centre_crop(image: Image.Image, size_px: int) -> Image.Image:
    width, height = image.size
    scale = size_px / min(width, height)
    resized_width = max(size_px, round(width * scale))
    resized_height = max(size_px, round(height * scale))
    image = image.resize((resized_width, resized_height), Image.Resampling.BICUBIC)
    left = (resized_width - size_px) // 2
    top = (resized_height - size_px) // 2
    return image.crop((left, top, left + size_px, top + size_px))


def _stratified_subset(labels: np.ndarray, limit_per_class: int, seed: int) -> np.ndarray:
    """Sorted positions of at most ``limit_per_class`` randomly chosen images of each class."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(np.flatnonzero(labels == label))[:limit_per_class]
        for label in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen))


def _claim_output_dir(filesystem: pafs.FileSystem, split_dir: str, overwrite: bool) -> None:
    info = filesystem.get_file_info(split_dir)
    if info.type == pafs.FileType.NotFound:
        return
    if info.type != pafs.FileType.Directory:
        raise PrepareError(f"output {split_dir} exists and is not a folder")
    if not filesystem.get_file_info(pafs.FileSelector(split_dir)):
        return
    if not overwrite:
        raise PrepareError(
            f"output {split_dir} is not empty; pass overwrite=True (--overwrite) to replace it"
        )
    filesystem.delete_dir_contents(split_dir)


def _write_split(
    source: _SourceSplit,
    source_indices: np.ndarray | None,
    *,
    filesystem: pafs.FileSystem,
    split_dir: str,
    split_uri: str,
    meta_fields: dict,
    rows_per_shard: int,
    encoding: str,
    jpeg_quality: int,
    progress: ProgressFn | None,
) -> ShardSetMeta:
    positions = np.arange(len(source.labels)) if source_indices is None else source_indices
    if source.source_indices is not None:
        original_positions = source.source_indices
    elif source_indices is not None:
        original_positions = np.arange(len(source.labels))
    else:
        original_positions = None
    classes = meta_fields["classes"]
    stats = _PixelStats(meta_fields["channels"])
    image_sizes_px = set()
    schema = pa.schema(
        [("image", pa.binary())]
        + ([("mask", pa.binary())] if source.mask_of is not None else [])
        + [("label", pa.int64()), ("index", pa.int64())]
        + ([("source_index", pa.int64())] if original_positions is not None else [])
    )
    filesystem.create_dir(split_dir, recursive=True)
    shards = []
    for first_index in range(0, len(positions), rows_per_shard):
        shard_positions = positions[first_index : first_index + rows_per_shard]
        encoded, encoded_masks = [], []
        for position in shard_positions:
            pixels = source.load_pixels(int(position))
            stats.add(pixels)
            image_sizes_px.add(pixels.shape[:2])
            encoded.append(encode_image(pixels, encoding, jpeg_quality))
            if source.mask_of is not None:
                # Always PNG: JPEG would blur class ids at object edges into other classes.
                encoded_masks.append(encode_image(source.mask_of(int(position), pixels), "png"))
        columns = {
            "image": encoded,
            "label": source.labels[shard_positions],
            "index": np.arange(first_index, first_index + len(shard_positions), dtype=np.int64),
        }
        if source.mask_of is not None:
            columns["mask"] = encoded_masks
        if original_positions is not None:
            columns["source_index"] = original_positions[shard_positions].astype(np.int64)
        file_name = f"part-{len(shards):05d}.parquet"
        pq.write_table(
            pa.Table.from_pydict(columns, schema=schema),
            f"{split_dir}/{file_name}",
            filesystem=filesystem,
            # PNG/JPEG bytes do not compress further, so only the integer columns are compressed.
            compression={
                name: "NONE" if name in ("image", "mask") else "SNAPPY" for name in schema.names
            },
            use_dictionary=["label"],
        )
        shards.append(ShardInfo(file_name, first_index, len(shard_positions)))
        if progress is not None:
            progress(meta_fields["split"], first_index + len(shard_positions), len(positions))

    mean, std = stats.mean_std()
    meta = ShardSetMeta(
        **meta_fields,
        num_classes=len(classes),
        count=len(positions),
        class_counts=np.bincount(source.labels[positions], minlength=len(classes)).tolist(),
        image_size=next(iter(image_sizes_px)) if len(image_sizes_px) == 1 else None,
        encoding=encoding,
        mean=mean,
        std=std,
        shards=shards,
    )
    write_meta(meta, split_uri)
    return meta


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``rayaccel data prepare`` arguments to ``parser``; ``run_prepare`` consumes them."""
    parser.add_argument("kind", choices=KINDS, help="format of SRC")
    parser.add_argument("src", help="the dataset in its original layout (see prepare_dataset)")
    parser.add_argument("out", help="output folder or URI; OUT/<split>/ is written per split")
    parser.add_argument("--rows-per-shard", type=int, default=10000, help="rows per parquet file")
    parser.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default=None,
        help="image encoding (default: png, or jpeg for imagefolder)",
    )
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1-95")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="imagefolder only: resize the shorter side to this many pixels and centre-crop",
    )
    parser.add_argument(
        "--train-per-class", type=int, default=None, help="keep at most N train images per class"
    )
    parser.add_argument(
        "--test-per-class",
        type=int,
        default=None,
        help="keep at most N images per class in each held-out split (test or val)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-class subset")
    parser.add_argument(
        "--mask-threshold",
        type=int,
        default=None,
        help=f"fashion-seg only: grey level (0-255) from which a pixel is the object "
        f"(default {DEFAULT_MASK_THRESHOLD})",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing OUT/<split> contents"
    )


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``prepare_dataset`` from parsed arguments and print one summary line per split.

    Returns:
        0 on success; failures raise ``PrepareError`` for the CLI to report.
    """
    per_class = {}
    if args.train_per_class is not None:
        per_class["train"] = args.train_per_class
    if args.test_per_class is not None:
        held_out_splits = _held_out_splits(args.kind, args.src)
        if not held_out_splits:
            raise PrepareError(
                f"--test-per-class given but {args.src} has no val/ or test/ split folder"
            )
        for split in held_out_splits:
            per_class[split] = args.test_per_class
    results = prepare_dataset(
        args.kind,
        args.src,
        args.out,
        rows_per_shard=args.rows_per_shard,
        encoding=args.encoding,
        jpeg_quality=args.jpeg_quality,
        image_size=args.image_size,
        per_class=per_class,
        seed=args.seed,
        overwrite=args.overwrite,
        mask_threshold=args.mask_threshold,
    )
    for split, meta in results.items():
        print(
            f"{split}: {meta.count} images, {len(meta.shards)} shards, "
            f"mean={_rounded(meta.mean)} std={_rounded(meta.std)} -> "
            f"{str(args.out).rstrip('/')}/{split}"
        )
    return 0


def _held_out_splits(kind: str, src: str) -> list[str]:
    if kind != "imagefolder":
        return ["test"]
    try:
        return [split for split in formats.image_folder_splits(src) if split != "train"]
    except FileNotFoundError as error:
        raise PrepareError(str(error)) from error


def _rounded(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{value:.4f}" for value in values) + "]"
