"""What one task of ``prepare imagefolder`` does: check a run of photos, or write one shard.

Everything here works on bytes and on local or pyarrow.fs locations and imports no Ray, so each
decision (the stored size, whether the original bytes are kept) is a pure function tested on its
own, and ``imagefolder`` turns ``check_files`` and ``write_shard`` into Ray tasks unchanged.

Photos are stored as large as ``max_side_px`` allows, never cropped: RandomResizedCrop and its
relatives pick a random part of the whole photo at train time, which a centre crop would have
thrown away for good.
"""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import ExifTags, Image, ImageOps

from rayaccel.core.storage import resolve_path
from rayaccel.data.pixel_stats import PixelStats

SHARD_KEY = b"rayaccel.prepare"
"""Parquet footer key of a shard's JSON record: plan id, first index, count, pixel sums."""
_FORMAT_BY_ENCODING = {"jpeg": "JPEG", "png": "PNG"}
# Orientations 5-8 turn the stored image by 90 degrees, so its upright width is the stored height.
_QUARTER_TURN_ORIENTATIONS = (5, 6, 7, 8)
# JPEG decoders scale by 1/2, 1/4 or 1/8 while decoding; the check only needs every byte parsed.
_CHECK_SCALE = 8
SHARD_SCHEMA = pa.schema(
    [
        ("image", pa.binary()),
        ("label", pa.int64()),
        ("index", pa.int64()),
        ("file", pa.string()),
        ("height_px", pa.int32()),
        ("width_px", pa.int32()),
    ]
)


class ShardError(ValueError):
    """A shard could not be written; the message names the file and the reason."""


@dataclass(frozen=True)
class ShardOptions:
    """How photos are stored.

    Attributes:
        encoding: "jpeg" or "png": the format of every stored image.
        jpeg_quality: quality (1-95) of images that have to be re-encoded as JPEG.
        max_side_px: shrink so that the longer side is at most this long, keeping the aspect
            ratio; None keeps the original size.
        centre_crop_px: resize the shorter side to this and centre-crop a square (the old
            ``--image-size``; it loses what random-resized crops need); None for no crop.
    """

    encoding: str = "jpeg"
    jpeg_quality: int = 90
    max_side_px: int | None = None
    centre_crop_px: int | None = None


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its rows, in order, and where they come from and go.

    Attributes:
        source: the split folder of the source tree (absolute path or URI).
        out: the split folder of the output (absolute path or URI).
        file_name: the shard's file name, e.g. ``part-00003.parquet``.
        first_index: ``index`` of the shard's first row.
        files: each row's path relative to ``source``.
        labels: each row's label.
        source_indices: each row's position in the sorted source listing, or None (no subset).
        plan_id: the prepare plan this shard belongs to, recorded in its footer so that a shard
            of another plan is never taken for a finished one.
        options: how to store the photos.
    """

    source: str
    out: str
    file_name: str
    first_index: int
    files: tuple[str, ...]
    labels: tuple[int, ...]
    source_indices: tuple[int, ...] | None
    plan_id: str
    options: ShardOptions


def fit_within_px(width_px: int, height_px: int, max_side_px: int | None) -> tuple[int, int]:
    """(width, height) shrunk so the longer side is at most ``max_side_px``, aspect kept.

    An image already within the limit (or no limit) keeps its size; no side becomes 0.
    """
    longer_px = max(width_px, height_px)
    if max_side_px is None or longer_px <= max_side_px:
        return width_px, height_px
    scale = max_side_px / longer_px
    return (
        max(1, min(max_side_px, round(width_px * scale))),
        max(1, min(max_side_px, round(height_px * scale))),
    )


def keeps_original_bytes(
    image_format: str | None, mode: str, orientation: int, resized: bool, encoding: str
) -> bool:
    """Whether a source file can be stored byte for byte.

    Only when nothing would change: no resize, already in the set's encoding, and its bytes
    decode to upright RGB, so a reader gets exactly what a re-encode would have started from,
    without a second lossy JPEG pass.
    """
    return (
        not resized
        and image_format == _FORMAT_BY_ENCODING[encoding]
        and mode == "RGB"
        and orientation == 1
    )


def upright_size_px(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as displayed, i.e. after its EXIF orientation."""
    width_px, height_px = image.size
    if _orientation(image) in _QUARTER_TURN_ORIENTATIONS:
        return height_px, width_px
    return width_px, height_px


def check_image(data: bytes) -> tuple[int, int]:
    """Decodes ``data`` completely and returns its upright (height_px, width_px).

    JPEGs are decoded at 1/8 scale, which still parses every byte, so truncated or garbled
    files are found before any shard is written at a fraction of a full decode's cost.

    Raises:
        ValueError: with the decoder's reason when ``data`` is not a readable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width_px, height_px = upright_size_px(image)
            stored_width_px, stored_height_px = image.size
            image.draft(
                "RGB",
                (
                    max(1, stored_width_px // _CHECK_SCALE),
                    max(1, stored_height_px // _CHECK_SCALE),
                ),
            )
            image.load()
    # PIL's format plugins raise many types for malformed input (OSError, SyntaxError,
    # struct.error, DecompressionBombError, ...); each is a reason to report, not a crash.
    except Exception as error:
        raise ValueError(_reason(error)) from None
    return height_px, width_px


def check_files(source: str, files: list[str]) -> list[tuple[int, int] | str]:
    """For each file of ``source``, its upright (height_px, width_px), or why it is unreadable."""
    filesystem, root = resolve_path(source)
    results = []
    for file in files:
        try:
            results.append(check_image(_read(filesystem, f"{root}/{file}")))
        except (OSError, ValueError) as error:
            results.append(str(error) or type(error).__name__)
    return results


@dataclass(frozen=True)
class ConvertedImage:
    """One source file as a shard stores it.

    Attributes:
        data: the bytes to store.
        pixels: the RGB pixels they stand for, which mean/std are computed from: exactly what a
            reader decodes when the bytes are kept or stored as PNG, the pre-compression pixels
            for JPEG.
        kept_original: whether ``data`` are the source file's own bytes.
        height_px: the source's upright height before any shrinking.
        width_px: the source's upright width before any shrinking.
    """

    data: bytes
    pixels: np.ndarray
    kept_original: bool
    height_px: int
    width_px: int


def convert_image(data: bytes, options: ShardOptions) -> ConvertedImage:
    """One source file's bytes as ``options`` store them.

    Raises:
        ValueError: if ``data`` is not a readable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width_px, height_px = upright_size_px(image)
            target_px = stored_size_px(width_px, height_px, options)
            resized = target_px != (width_px, height_px)
            orientation = _orientation(image)
            if keeps_original_bytes(
                image.format, image.mode, orientation, resized, options.encoding
            ):
                return ConvertedImage(data, np.asarray(image), True, height_px, width_px)
            if resized and options.centre_crop_px is None:
                stored_target_px = (
                    target_px[::-1] if orientation in _QUARTER_TURN_ORIENTATIONS else target_px
                )
                # Multi-megapixel JPEGs decode straight at 1/2-1/8 scale (never below the
                # target), most of the cost of shrinking them.
                image.draft("RGB", stored_target_px)
            converted = ImageOps.exif_transpose(image) if orientation != 1 else image
            converted = converted.convert("RGB")
            if options.centre_crop_px is not None:
                converted = _resize_and_centre_crop(converted, options.centre_crop_px)
            elif converted.size != target_px:
                converted = converted.resize(target_px, Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            if options.encoding == "jpeg":
                converted.save(buffer, format="JPEG", quality=options.jpeg_quality)
            else:
                converted.save(buffer, format="PNG")
            return ConvertedImage(
                buffer.getvalue(), np.asarray(converted), False, height_px, width_px
            )
    except Exception as error:  # as in check_image: PIL raises many types
        raise ValueError(_reason(error)) from None


def stored_size_px(width_px: int, height_px: int, options: ShardOptions) -> tuple[int, int]:
    """(width, height) an image of this upright size is stored at."""
    if options.centre_crop_px is not None:
        return options.centre_crop_px, options.centre_crop_px
    return fit_within_px(width_px, height_px, options.max_side_px)


ROW_GROUP_ROWS = 128


def write_shard(task: ShardTask) -> dict:
    """Reads, converts and writes one shard; returns the record also stored in its footer.

    A local shard is written under a temporary name and renamed, so a shard file that exists
    is complete; on object stores, where a written object appears whole or not at all, it is
    written in place. Either way the footer's row count and plan id are what mark it finished.

    Raises:
        ShardError: naming the file, if a file that passed the check cannot be read now (the
            source changed while preparing).
    """
    source_fs, source_root = resolve_path(task.source)
    stats = PixelStats(3)
    images, heights_px, widths_px = [], [], []
    kept_original = 0
    for file in task.files:
        try:
            data = _read(source_fs, f"{source_root}/{file}")
            converted = convert_image(data, task.options)
        except (OSError, ValueError) as error:
            raise ShardError(
                f"{task.source}/{file}: passed the check but cannot be read now ({error}); did "
                "the source change during prepare? Re-run with --overwrite"
            ) from None
        stats.add(converted.pixels)
        images.append(converted.data)
        heights_px.append(converted.height_px)
        widths_px.append(converted.width_px)
        kept_original += converted.kept_original
    count = len(task.files)
    record = {
        "plan_id": task.plan_id,
        "first_index": task.first_index,
        "count": count,
        "kept_original_bytes": kept_original,
        "pixel_stats": stats.to_dict(),
    }
    columns = {
        "image": images,
        "label": list(task.labels),
        "index": list(range(task.first_index, task.first_index + count)),
        "file": list(task.files),
        "height_px": heights_px,
        "width_px": widths_px,
    }
    schema = SHARD_SCHEMA
    if task.source_indices is not None:
        columns["source_index"] = list(task.source_indices)
        schema = schema.append(pa.field("source_index", pa.int64()))
    table = pa.Table.from_pydict(columns, schema=schema).replace_schema_metadata(
        {SHARD_KEY: json.dumps(record)}
    )
    out_fs, out_root = resolve_path(task.out)
    final = f"{out_root}/{task.file_name}"
    local = isinstance(out_fs, pafs.LocalFileSystem)
    written = f"{final}.{uuid.uuid4().hex}.tmp" if local else final
    pq.write_table(
        table,
        written,
        filesystem=out_fs,
        # JPEG/PNG bytes do not compress further; only the small columns are compressed.
        compression={name: "NONE" if name == "image" else "SNAPPY" for name in schema.names},
        use_dictionary=["label"],
        # Small row groups: a training window reads only the groups holding its rows
        # (`rayaccel.data.pipeline.read_window`), about 14 MB of ImageNet-sized photos each.
        row_group_size=ROW_GROUP_ROWS,
    )
    if local:
        out_fs.move(written, final)
    return record


def finished_shard(filesystem: pafs.FileSystem, path: str, plan_id: str, count: int) -> dict | None:
    """The footer record of a complete shard of this plan at ``path``, else None.

    A shard is finished when its footer reads, holds ``count`` rows and names ``plan_id``;
    anything else (missing, cut short, another plan's) is rewritten.
    """
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    try:
        with filesystem.open_input_file(path) as file:
            footer = pq.read_metadata(file)
    except (OSError, pa.ArrowInvalid):
        return None
    raw = (footer.metadata or {}).get(SHARD_KEY)
    if raw is None or footer.num_rows != count:
        return None
    record = json.loads(raw)
    return record if record.get("plan_id") == plan_id and record.get("count") == count else None


def _read(filesystem: pafs.FileSystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def _orientation(image: Image.Image) -> int:
    return int(image.getexif().get(ExifTags.Base.Orientation, 1) or 1)


def _reason(error: BaseException) -> str:
    message = str(error).strip()
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _resize_and_centre_crop(image: Image.Image, size_px: int) -> Image.Image:
    width, height = image.size
    scale = size_px / min(width, height)
    resized_width = max(size_px, round(width * scale))
    resized_height = max(size_px, round(height * scale))
    image = image.resize((resized_width, resized_height), Image.Resampling.BICUBIC)
    left = (resized_width - size_px) // 2
    top = (resized_height - size_px) // 2
    return image.crop((left, top, left + size_px, top + size_px))
