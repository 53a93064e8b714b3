"""A class-per-folder tree of image files read at run time (`data.source: imagefolder`).

For users who do not want a conversion step: the driver lists the tree once, and the same
windowed Ray Data pipeline as for shards reads each window's files, decodes and augments
them (`rayaccel.data.pipeline`). Each file costs one read (one request on object storage),
which is why `rayaccel data prepare` remains the faster choice for large sets read many
times. The tree may be a local folder every node sees or a pyarrow URI (`s3://...`).

The listing is put in a seeded random order (index = position in it), so that a window of
consecutive indices holds a random mix of classes, as prepared shards do; the listing is
cut into groups of `GROUP_FILES` that play the part of shards (`ShardSetMeta.shards`), so the
plan, the epoch order and the audit digests work unchanged. An image folder has no measured
pixel statistics: the job states `data.mean` and `data.std` (or names a `data.card`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rayaccel.core.storage import resolve_path
from rayaccel.data.formats import scan_image_folder
from rayaccel.data.metadata import ShardInfo, ShardSetMeta

GROUP_FILES = 1000
# The listing's order is fixed for a tree (not the job's seed), so runs of one tree agree on
# every image's index.
ORDER_SEED = 0


@dataclass(frozen=True)
class FolderListing:
    """The files of one split in index order, as paths relative to its root, and labels."""

    root: str
    files: np.ndarray  # fixed-width bytes: shared zero-copy through Ray's object store
    labels: np.ndarray
    classes: tuple[str, ...]


@functools.cache
def list_folder(root: str, classes: tuple[str, ...] | None = None) -> FolderListing:
    """The split's files in their seeded order (cached: the driver asks several times).

    Raises:
        FileNotFoundError: if `root` is not a folder.
        ValueError: if it has no class folders or a class folder has no images.
    """
    if "://" not in root:
        root = str(Path(root).resolve())  # Ray's task processes may run in another folder
    items, class_names = scan_image_folder(root, classes)
    order = np.random.default_rng(ORDER_SEED).permutation(len(items))
    files = np.array([items[i].file.encode() for i in order], dtype=bytes)
    labels = np.array([items[i].label for i in order], dtype=np.int64)
    return FolderListing(root, files, labels, tuple(class_names))


def folder_meta(
    root: str,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    channels: int,
    classes: tuple[str, ...] | None = None,
) -> ShardSetMeta:
    """The split's metadata, as `read_meta` gives it for shards, from the listing and the
    job's statistics (`classes`: the training split's, so held-out labels agree)."""
    listing = list_folder(root, classes)
    count = len(listing.files)
    groups = [
        ShardInfo(file=f"files-{k:05d}", first_index=start, count=min(GROUP_FILES, count - start))
        for k, start in enumerate(range(0, count, GROUP_FILES))
    ]
    return ShardSetMeta(
        name=Path(root).resolve().name,
        split=Path(root).name,
        classes=listing.classes,
        num_classes=len(listing.classes),
        count=count,
        class_counts=np.bincount(listing.labels, minlength=len(listing.classes)).tolist(),
        image_size=None,
        channels=channels,
        encoding="jpeg",
        mean=mean,
        std=std,
        shards=groups,
    )


def read_files(listing: FolderListing, start: int, end: int) -> dict[str, np.ndarray]:
    """Rows `start:end` of the listing: each file's bytes (an unreadable file gives empty
    bytes, which decoding reports as a bad row naming it), label and index."""
    images = np.empty(end - start, dtype=object)
    paths = np.empty(end - start, dtype=object)
    fs, base = resolve_path(listing.root)
    for row, relative in enumerate(listing.files[start:end]):
        path = f"{base.rstrip('/')}/{relative.decode()}"
        paths[row] = path
        try:
            with fs.open_input_file(path) as handle:
                images[row] = handle.read()
        except OSError:
            images[row] = b""
    return {
        "image": images,
        "label": listing.labels[start:end].copy(),
        "index": np.arange(start, end, dtype=np.int64),
        "path": paths,
    }


SOURCES = ("parquet", "imagefolder")


def read_split_meta(
    location: str,
    *,
    source: str,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    channels: int | None = None,
    classes: tuple[str, ...] | None = None,
) -> ShardSetMeta:
    """A split's metadata from either source: `metadata.json` of prepared shards, or the
    listing of an image folder with the given statistics (`channels` default 3).

    Raises:
        FileNotFoundError: if the folder (or its metadata.json) is missing.
        ValueError: if it is malformed, or an image folder lacks `mean` / `std`.
    """
    if source == "parquet":
        from rayaccel.data.metadata import read_meta

        return read_meta(location)
    if source != "imagefolder":
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if mean is None or std is None:
        raise ValueError("an image folder has no measured mean/std: set data.mean and data.std")
    return folder_meta(
        location, mean=tuple(mean), std=tuple(std), channels=channels or 3, classes=classes
    )
