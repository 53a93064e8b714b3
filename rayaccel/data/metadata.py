"""``metadata.json``: what a split folder of parquet shards holds, readable without opening a shard.

The training side needs the class list, the normalisation statistics and the shard layout before it
reads any data (to build the model head, the transforms and the Ray Data plan), so ``prepare``
writes them next to the shards. The file is written last, so its presence marks a finished split.
Paths may be local or any URI ``pyarrow.fs`` understands (``s3://``, ``gs://``, ``file://``), since
shards usually live in object storage when training on a cluster.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import pyarrow.fs as pafs

from rayaccel.core.storage import resolve_path

METADATA_FILE = "metadata.json"
_ENCODINGS = ("png", "jpeg")
TASKS = ("classification", "segmentation")
# Fields added after the first release; files without them get the dataclass default.
_OPTIONAL_FIELDS = {"task", "original_size_px", "bad_file_count"}
_SIDES = ("height", "width")


@dataclass(frozen=True)
class ShardInfo:
    """One parquet file holding rows ``first_index .. first_index + count - 1``.

    A row's position inside its shard is ``index - first_index``, so a reader can locate any
    index from the metadata alone.
    """

    file: str
    first_index: int
    count: int


@dataclass(frozen=True)
class SideRange:
    """Smallest, median and largest length of one side over a split's original images, in px."""

    min: int
    median: float
    max: int


@dataclass(frozen=True)
class ShardSetMeta:
    """Description of one split of a prepared dataset.

    Sequence fields accept lists and are stored as tuples so the object is truly immutable;
    compare with ``list(meta.classes)`` when checking against a list.

    Attributes:
        name: dataset name, e.g. "fashion-mnist".
        split: split name, e.g. "train", "test", "val".
        classes: class names; label ``k`` is ``classes[k]``. For segmentation these are the
            mask classes, ``classes[0]`` being the background.
        num_classes: ``len(classes)``, stored so JSON readers need not count.
        count: number of rows in the split.
        class_counts: rows per label.
        image_size: (height_px, width_px) shared by every image, or None when sizes differ.
        channels: 1 (grey) or 3 (RGB); decode with ``codec.decode_image(data, channels)``.
        encoding: "png" or "jpeg".
        mean: per-channel pixel mean in [0, 1] units over the whole split.
        std: per-channel population standard deviation in [0, 1] units over the whole split.
        shards: the parquet files in index order, each holding a contiguous index range.
        task: "classification" (one label per image) or "segmentation" (shards also hold a
            ``mask`` column of greyscale PNGs whose pixel values are mask classes; ``label`` is
            the mask class of the image's object). Last and defaulted because files written
            before segmentation existed have no such field and are classification sets.
        original_size_px: imagefolder only: {"height": SideRange, "width": SideRange} of the
            source images before any shrinking (EXIF orientation applied); each row's own size
            is in the shards' ``height_px``/``width_px`` columns. None for sets of one fixed size
            and for files written before it existed.
        bad_file_count: source files that could not be read as images and were skipped (listed
            in the split's ``bad_files.txt``); 0 for files written before it existed.
    """

    name: str
    split: str
    classes: tuple[str, ...]
    num_classes: int
    count: int
    class_counts: tuple[int, ...]
    image_size: tuple[int, int] | None
    channels: int
    encoding: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    shards: tuple[ShardInfo, ...]
    task: str = "classification"
    original_size_px: dict[str, SideRange] | None = None
    bad_file_count: int = 0

    def __post_init__(self) -> None:
        _freeze(self, "classes", tuple(str(name) for name in self.classes))
        _freeze(self, "class_counts", tuple(int(n) for n in self.class_counts))
        if self.image_size is not None:
            _freeze(self, "image_size", tuple(int(n) for n in self.image_size))
        _freeze(self, "mean", tuple(float(x) for x in self.mean))
        _freeze(self, "std", tuple(float(x) for x in self.std))
        _freeze(
            self,
            "shards",
            tuple(s if isinstance(s, ShardInfo) else ShardInfo(**s) for s in self.shards),
        )
        if self.original_size_px is not None:
            _freeze(
                self,
                "original_size_px",
                {
                    side: value if isinstance(value, SideRange) else SideRange(**value)
                    for side, value in self.original_size_px.items()
                },
            )
        self._validate()

    def _validate(self) -> None:
        where = f"ShardSetMeta({self.name}/{self.split})"
        if self.num_classes != len(self.classes):
            raise ValueError(
                f"{where}: num_classes is {self.num_classes} but classes has {len(self.classes)} names"
            )
        if len(self.class_counts) != self.num_classes:
            raise ValueError(
                f"{where}: class_counts has {len(self.class_counts)} entries, expected "
                f"num_classes={self.num_classes}"
            )
        if sum(self.class_counts) != self.count:
            raise ValueError(
                f"{where}: class_counts sum to {sum(self.class_counts)} but count is {self.count}"
            )
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) <= 0):
            raise ValueError(
                f"{where}: image_size must be [height, width] > 0 or null, got {list(self.image_size)}"
            )
        if self.task not in TASKS:
            raise ValueError(f"{where}: task must be one of {TASKS}, got {self.task!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"{where}: channels must be 1 or 3, got {self.channels}")
        if self.encoding not in _ENCODINGS:
            raise ValueError(
                f"{where}: encoding must be one of {_ENCODINGS}, got {self.encoding!r}"
            )
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"{where}: mean and std need one value per channel ({self.channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if self.original_size_px is not None and set(self.original_size_px) != set(_SIDES):
            raise ValueError(
                f"{where}: original_size_px needs exactly the sides {list(_SIDES)}, got "
                f"{sorted(self.original_size_px)}"
            )
        if self.bad_file_count < 0:
            raise ValueError(f"{where}: bad_file_count must be >= 0, got {self.bad_file_count}")
        next_index = 0
        for shard in self.shards:
            if shard.first_index != next_index or shard.count <= 0:
                raise ValueError(
                    f"{where}: shard {shard.file} covers first_index={shard.first_index}, "
                    f"count={shard.count}; expected first_index={next_index} and count > 0 "
                    "(shards must tile 0..count-1 in order)"
                )
            next_index += shard.count
        if next_index != self.count:
            raise ValueError(f"{where}: shards hold {next_index} rows but count is {self.count}")

    def to_json_dict(self) -> dict:
        """Plain JSON-ready dict with lists instead of tuples."""
        fields = asdict(self)
        for key in ("classes", "class_counts", "mean", "std"):
            fields[key] = list(fields[key])
        fields["image_size"] = None if self.image_size is None else list(self.image_size)
        fields["shards"] = [asdict(shard) for shard in self.shards]
        return fields


def _freeze(meta: ShardSetMeta, field: str, value) -> None:
    object.__setattr__(meta, field, value)  # the documented way to normalise a frozen dataclass


def write_meta(meta: ShardSetMeta, dir_or_uri: str | os.PathLike) -> None:
    """Write ``meta`` as ``metadata.json`` in a split folder (created if missing)."""
    filesystem, directory = resolve_path(dir_or_uri)
    filesystem.create_dir(directory, recursive=True)
    payload = json.dumps(meta.to_json_dict(), indent=2) + "\n"
    with filesystem.open_output_stream(f"{directory}/{METADATA_FILE}") as stream:
        stream.write(payload.encode())


def read_meta(dir_or_uri: str | os.PathLike) -> ShardSetMeta:
    """Read the ``metadata.json`` of a split folder.

    Args:
        dir_or_uri: the split folder, e.g. ``data/fixture/fashion-mnist/train``,
            ``file:///abs/out/train`` or ``s3://bucket/out/train``.

    Raises:
        FileNotFoundError: if the folder has no metadata.json.
        ValueError: if the file is not valid JSON or misses or contradicts fields.
    """
    filesystem, directory = resolve_path(dir_or_uri)
    path = f"{directory}/{METADATA_FILE}"
    shown = f"{os.fspath(dir_or_uri).rstrip('/')}/{METADATA_FILE}"
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(
            f"{shown} not found; expected a split folder written by `rayaccel data prepare`"
        )
    with filesystem.open_input_stream(path) as stream:
        raw = stream.read()
    try:
        fields = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{shown}: not valid JSON ({error})") from error
    if not isinstance(fields, dict):
        raise ValueError(f"{shown}: expected a JSON object, got {type(fields).__name__}")
    expected = ShardSetMeta.__dataclass_fields__.keys()
    missing = sorted(set(expected) - set(fields) - _OPTIONAL_FIELDS)
    if missing:
        raise ValueError(f"{shown}: missing fields {missing}")
    try:
        return ShardSetMeta(**{key: fields[key] for key in expected if key in fields})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{shown}: {error}") from error
