"""Convert a dataset from its original format into parquet shards plus ``metadata.json``.

Training reads shards with Ray Data, which streams parquet from local disk or object storage in
parallel; the original formats (IDX, CIFAR pickles, folders of files) either need the whole set in
one process's memory or cost one storage request per image. Conversion runs once per dataset:

    rayaccel data prepare fashion-mnist /usr/share/datasets/fashion-mnist out/fashion-mnist

Output, per split (``train``/``test``, or ``train``/``val`` for an ImageNet-style folder)::

    OUT/<split>/part-00000.parquet ...   columns image (PNG/JPEG bytes), label, index[, source_index]
    OUT/<split>/metadata.json            see ``metadata.ShardSetMeta``

A class-per-folder photo tree (``imagefolder``) is converted by parallel, resumable Ray tasks
(``rayaccel.data.imagefolder``): rows in a seeded random order, photos shrunk at most to
``--max-side-px`` and never cropped, extra columns ``file``, ``height_px``, ``width_px``:

    rayaccel data prepare imagefolder /data/ILSVRC2012 /data/imagenet --max-side-px 500

``fashion-seg`` derives a semantic-segmentation set from Fashion-MNIST, so segmentation methods
(AGVM) can be tested on real images without downloading a segmentation benchmark: each image keeps
its pixels, and its mask marks the pixels at or above a brightness threshold with the image's
class + 1 (0 is background). Its shards have an extra ``mask`` column (greyscale PNG, always
lossless) and ``label`` is the mask class 1..10.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayaccel.core.storage import resolve_path
from rayaccel.data import formats
from rayaccel.data.codec import ENCODINGS, decode_image, encode_image
from rayaccel.data.image_shard import ShardOptions
from rayaccel.data.imagefolder import prepare_image_folder, progress_printer
from rayaccel.data.metadata import (
    METADATA_FILE,
    ShardInfo,
    ShardSetMeta,
    read_meta,
    write_meta,
)
from rayaccel.data.pixel_stats import PixelStats
from rayaccel.data.prepare_base import PrepareError, ProgressFn, stratified_subset

KINDS = ("fashion-mnist", "fashion-seg", "cifar10", "cifar100", "imagefolder")
FASHION_SEG_CLASSES = ("background", *formats.FASHION_MNIST_CLASSES)
# 20% of full brightness: Fashion-MNIST backgrounds are 0 and garments mostly well above this, so
# the mask follows the garment's silhouette while dark folds inside it stay (mostly) foreground.
DEFAULT_MASK_THRESHOLD = 51

ON_BAD_FILE = ("skip", "fail")
DEFAULT_ROWS_PER_SHARD = {"imagefolder": 1000}
"""Photos are ~100 KB each, so 1,000 make a ~100 MB shard; the tiny images of the other kinds
default to 10,000 rows per shard."""


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


def prepare_dataset(
    kind: str,
    src: str | Path,
    out: str | Path,
    *,
    rows_per_shard: int | None = None,
    encoding: str | None = None,
    jpeg_quality: int = 90,
    image_size: int | None = None,
    max_side_px: int | None = None,
    on_bad_file: str | None = None,
    max_parallel_shards: int | None = None,
    per_class: dict[str, int] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    mask_threshold: int | None = None,
) -> dict[str, ShardSetMeta]:
    """Convert one dataset to parquet shards, one folder per split.

    Mean and std in the metadata are computed exactly over the pixels that were encoded. For PNG
    and for kept original bytes these are the pixels a reader decodes; for re-encoded JPEG they
    are the (resized) source pixels, which differ from the decoded ones by the compression error.

    ``imagefolder`` runs on Ray (see ``rayaccel.data.imagefolder``): parallel, resumable, rows
    in a seeded random order, with ``file``, ``height_px`` and ``width_px`` columns (the
    original size). The other kinds fit in one process's memory and are converted in it.

    Args:
        kind: one of ``KINDS``.
        src: the dataset in its original layout: the IDX folder (fashion-mnist), the extracted
            CIFAR folder or its parent (cifar10/cifar100), or a class-per-folder tree, optionally
            split into ``train/`` and ``val/`` or ``test/`` (imagefolder, local or a pyarrow.fs
            URI). fashion-seg takes the IDX folder or an already prepared fashion-mnist folder
            (``train/``, ``test/`` split folders of parquet shards, e.g.
            ``data/fixture/fashion-mnist``).
        out: output folder, local or a pyarrow.fs URI; ``OUT/<split>/`` is created per split.
        rows_per_shard: rows per parquet file; None means 1,000 for imagefolder (~100 MB of
            photos) and 10,000 for the others. Ray Data reads files in parallel, so keep at
            least a few shards per training worker.
        encoding: "png" or "jpeg"; None means PNG (lossless) for fashion-mnist and CIFAR, whose
            images are tiny, and JPEG for imagefolder, whose photos would grow several-fold as PNG.
        jpeg_quality: JPEG quality 1-95 of images that are (re-)encoded as JPEG.
        image_size: imagefolder only: resize the shorter side to this many pixels, then
            centre-crop to a square. This throws away the parts of each photo that train-time
            random-resized crops would pick; prefer ``max_side_px``. None keeps the whole photo.
        max_side_px: imagefolder only: shrink photos whose longer side is longer than this, aspect
            ratio kept, never cropped (500 suits ImageNet-style training at 224 px). None keeps
            every photo's size.
        on_bad_file: imagefolder only: "skip" (the default: unreadable files are listed in
            ``OUT/<split>/bad_files.txt``, counted in the metadata and left out) or "fail" (stop,
            naming the file, before anything is written).
        max_parallel_shards: imagefolder only: at most this many Ray tasks at once; None means as
            many as the cluster runs.
        per_class: {split: n} keeps a seeded, stratified subset of at most n images per class of
            that split (for fixtures and quick experiments); splits not named are kept whole.
            Each subset split gets an extra int64 ``source_index`` column: the row's position in
            the original split (for imagefolder, in that split's sorted file list), so a subset
            can be checked against, or traced back to, the source.
        seed: seed of the per-class subset choice and of imagefolder's row order.
        overwrite: replace the contents of existing ``OUT/<split>`` folders. Otherwise a non-empty
            one is an error, because mixing old and new shards would corrupt the split silently;
            for imagefolder, a folder holding an unfinished (or finished) prepare of the same
            source and options is resumed instead.
        progress: see ``ProgressFn``; None reports nothing.
        mask_threshold: fashion-seg only: pixels >= this grey level (0-255) are the object,
            the rest background. None means ``DEFAULT_MASK_THRESHOLD`` (51, 20% of 255).

    Returns:
        {split: metadata written to ``OUT/<split>/metadata.json``}.

    Raises:
        PrepareError: for a bad argument, a missing or malformed source, an existing output, or
            (``on_bad_file="fail"``) an unreadable image.
    """
    if kind not in KINDS:
        raise PrepareError(f"unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}")
    if rows_per_shard is None:
        rows_per_shard = DEFAULT_ROWS_PER_SHARD.get(kind, 10000)
    if rows_per_shard < 1:
        raise PrepareError(f"rows_per_shard (--rows-per-shard) must be >= 1, got {rows_per_shard}")
    if encoding is None:
        encoding = "jpeg" if kind == "imagefolder" else "png"
    if encoding not in ENCODINGS:
        raise PrepareError(f"encoding (--encoding) must be png or jpeg, got {encoding!r}")
    if not 1 <= jpeg_quality <= 95:
        raise PrepareError(f"jpeg_quality (--jpeg-quality) must be in [1, 95], got {jpeg_quality}")
    folder_only = {
        "image_size (--image-size)": image_size,
        "max_side_px (--max-side-px)": max_side_px,
        "on_bad_file (--on-bad-file)": on_bad_file,
        "max_parallel_shards (--max-parallel-shards)": max_parallel_shards,
    }
    for option, value in folder_only.items():
        if value is not None and kind != "imagefolder":
            raise PrepareError(
                f"{option} applies only to imagefolder; {kind} images have a fixed size and "
                "are converted in one process"
            )
    if image_size is not None and image_size < 1:
        raise PrepareError(f"image_size (--image-size) must be >= 1 pixel, got {image_size}")
    if max_side_px is not None and max_side_px < 1:
        raise PrepareError(f"max_side_px (--max-side-px) must be >= 1 pixel, got {max_side_px}")
    if image_size is not None and max_side_px is not None:
        raise PrepareError(
            "give either image_size (--image-size, centre-crop) or max_side_px (--max-side-px, "
            "whole photo), not both"
        )
    if on_bad_file is not None and on_bad_file not in ON_BAD_FILE:
        raise PrepareError(f"on_bad_file (--on-bad-file) must be skip or fail, got {on_bad_file!r}")
    if max_parallel_shards is not None and max_parallel_shards < 1:
        raise PrepareError(
            f"max_parallel_shards (--max-parallel-shards) must be >= 1, got {max_parallel_shards}"
        )
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
    per_class = dict(per_class or {})
    for split, limit in per_class.items():
        if limit < 1:
            raise PrepareError(f"per_class[{split!r}] must be >= 1 image per class, got {limit}")
    is_uri = "://" in str(src)
    if not is_uri and not Path(src).exists():
        raise PrepareError(f"source {src} does not exist; expected the {kind} dataset there")
    if kind == "imagefolder":
        return prepare_image_folder(
            src,
            out,
            options=ShardOptions(
                encoding=encoding,
                jpeg_quality=jpeg_quality,
                max_side_px=max_side_px,
                centre_crop_px=image_size,
            ),
            rows_per_shard=rows_per_shard,
            per_class=per_class,
            seed=seed,
            overwrite=overwrite,
            on_bad_file=on_bad_file or "skip",
            max_parallel_shards=max_parallel_shards,
            progress=progress,
        )
    if is_uri:
        raise PrepareError(f"{kind} reads a local source folder; {src} is a URI")

    try:
        splits, classes, channels = _load_source(kind, Path(src), mask_threshold)
    except (FileNotFoundError, ValueError) as error:
        raise PrepareError(str(error)) from error
    unknown_splits = sorted(set(per_class) - set(splits))
    if unknown_splits:
        raise PrepareError(f"per_class names splits {unknown_splits}; {src} has {sorted(splits)}")

    filesystem, out_path = resolve_path(out)
    for split in splits:
        _claim_output_dir(filesystem, f"{out_path}/{split}", overwrite)

    results = {}
    for split, source in splits.items():
        if split in per_class:
            source_indices = stratified_subset(source.labels, per_class[split], seed)
        else:
            source_indices = None
        results[split] = _write_split(
            source,
            source_indices,
            filesystem=filesystem,
            split_dir=f"{out_path}/{split}",
            split_uri=f"{str(out).rstrip('/')}/{split}",
            meta_fields={
                "name": kind,
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
    kind: str, src: Path, mask_threshold: int
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
    variant = 10 if kind == "cifar10" else 100  # imagefolder never gets here
    arrays = formats.load_cifar(src, variant)
    return _array_splits(arrays), formats.read_cifar_class_names(src, variant), 3


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
    stats = PixelStats(meta_fields["channels"])
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
    parser.add_argument(
        "src",
        help="the dataset in its original layout (see prepare_dataset); imagefolder also takes a "
        "pyarrow.fs URI such as s3://bucket/photos",
    )
    parser.add_argument("out", help="output folder or URI; OUT/<split>/ is written per split")
    parser.add_argument(
        "--rows-per-shard",
        type=int,
        metavar="N",
        default=None,
        help="rows per parquet file (default 1000 for imagefolder, 10000 for the others)",
    )
    parser.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default=None,
        help="image encoding (default: png, or jpeg for imagefolder)",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=int,
        default=90,
        metavar="Q",
        help="JPEG quality 1-95 of re-encoded images",
    )
    parser.add_argument(
        "--max-side-px",
        type=int,
        metavar="N",
        default=None,
        help="imagefolder only: shrink photos whose longer side exceeds N px, aspect ratio kept, "
        "never cropped (e.g. 500 for training at 224 px); photos within N keep their own bytes",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        metavar="N",
        default=None,
        help="imagefolder only: resize the shorter side to N px and centre-crop a square. This "
        "throws away what RandomResizedCrop would pick from; prefer --max-side-px",
    )
    parser.add_argument(
        "--on-bad-file",
        choices=ON_BAD_FILE,
        default=None,
        help="imagefolder only: skip unreadable images (listed in OUT/<split>/bad_files.txt, "
        "the default) or fail naming the first one",
    )
    parser.add_argument(
        "--max-parallel-shards",
        type=int,
        metavar="N",
        default=None,
        help="imagefolder only: at most N Ray tasks at once (default: as many as the cluster runs)",
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
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the per-class subset and imagefolder row order",
    )
    parser.add_argument(
        "--mask-threshold",
        type=int,
        default=None,
        help=f"fashion-seg only: grey level (0-255) from which a pixel is the object "
        f"(default {DEFAULT_MASK_THRESHOLD})",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing OUT/<split> contents (an unfinished imagefolder prepare of the "
        "same source and options is resumed without it)",
    )


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``prepare_dataset`` from parsed arguments and print one summary line per split.

    imagefolder also prints progress lines (images done, images/s, ETA) as shards finish.

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
    progress = None
    if args.kind == "imagefolder":
        progress = progress_printer(sys.stdout)
    results = prepare_dataset(
        args.kind,
        args.src,
        args.out,
        rows_per_shard=args.rows_per_shard,
        encoding=args.encoding,
        jpeg_quality=args.jpeg_quality,
        image_size=args.image_size,
        max_side_px=args.max_side_px,
        on_bad_file=args.on_bad_file,
        max_parallel_shards=args.max_parallel_shards,
        per_class=per_class,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=progress,
        mask_threshold=args.mask_threshold,
    )
    for split, meta in results.items():
        split_location = f"{str(args.out).rstrip('/')}/{split}"
        skipped = ""
        if meta.bad_file_count:
            files = "file" if meta.bad_file_count == 1 else "files"
            skipped = (
                f", {meta.bad_file_count} unreadable {files} skipped (listed in "
                f"{split_location}/bad_files.txt)"
            )
        print(
            f"{split}: {meta.count} images, {len(meta.shards)} shards{skipped}, "
            f"mean={_rounded(meta.mean)} std={_rounded(meta.std)} -> {split_location}"
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
