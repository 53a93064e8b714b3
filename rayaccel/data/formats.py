"""Readers for the formats datasets are distributed in, returning plain numpy arrays.

Each reader checks the file against its format's own structure (magic numbers, sizes, keys) and
names the file in every error, because a half-downloaded archive is the most common failure and
the message is all the user sees. No torchvision: these formats are simple enough to read exactly,
and the conversion then runs anywhere pyarrow and PIL do.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import pyarrow.fs as pafs

from rayaccel.core.storage import absolute_location, resolve_path

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, columns)
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)
_GZIP_MAGIC = b"\x1f\x8b"
_CIFAR_IMAGE_SIDE_PX = 32
_CIFAR_ROW_BYTES = 3 * _CIFAR_IMAGE_SIDE_PX * _CIFAR_IMAGE_SIDE_PX

Split = tuple[np.ndarray, np.ndarray]
"""(images uint8 (N, H, W) or (N, H, W, C), labels int64 (N,))."""


def read_idx_images(path: str | Path) -> np.ndarray:
    """Read an IDX image file (MNIST family), gzip-compressed or plain.

    Returns:
        uint8 array shaped (count, rows, columns).

    Raises:
        ValueError: if the magic number is not 2051 or the data size disagrees with the header.
    """
    header, data = _read_idx(path, _IDX_IMAGES_MAGIC, num_dims=3, kind="images")
    count, rows, columns = header
    return data.reshape(count, rows, columns)


def read_idx_labels(path: str | Path) -> np.ndarray:
    """Read an IDX label file (MNIST family), gzip-compressed or plain.

    Returns:
        int64 array shaped (count,).

    Raises:
        ValueError: if the magic number is not 2049 or the data size disagrees with the header.
    """
    _, data = _read_idx(path, _IDX_LABELS_MAGIC, num_dims=1, kind="labels")
    return data.astype(np.int64)


def _read_idx(
    path: str | Path, magic: int, num_dims: int, kind: str
) -> tuple[list[int], np.ndarray]:
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:  # by content, not name: some mirrors decompress but keep ".gz"
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: corrupt gzip data ({error})") from error
    header_bytes = 4 * (1 + num_dims)
    found_magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found_magic != magic:
        raise ValueError(
            f"{path}: IDX magic number is {found_magic}, expected {magic} for an IDX {kind} file"
        )
    if len(raw) < header_bytes:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX {kind} header")
    dims = [int.from_bytes(raw[4 * i : 4 * i + 4], "big") for i in range(1, 1 + num_dims)]
    expected_bytes = header_bytes + int(np.prod(dims))
    if len(raw) != expected_bytes:
        raise ValueError(
            f"{path}: header says dimensions {dims} ({expected_bytes} bytes) "
            f"but the file has {len(raw)} bytes; it is probably truncated"
        )
    return dims, np.frombuffer(raw, dtype=np.uint8, offset=header_bytes)


def load_fashion_mnist(src_dir: str | Path) -> dict[str, Split]:
    """Load Fashion-MNIST from the four IDX files of the official distribution.

    Args:
        src_dir: folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte,
            t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each optionally ending in ".gz".

    Returns:
        {"train": (images, labels), "test": (images, labels)}; images uint8 (N, 28, 28), labels
        int64 in [0, 10) indexing ``FASHION_MNIST_CLASSES``.

    Raises:
        FileNotFoundError: if a file is missing.
        ValueError: if a file is malformed or images and labels disagree.
    """
    src_dir = Path(src_dir)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images_path = _find_idx_file(src_dir, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx_file(src_dir, f"{prefix}-labels-idx1-ubyte")
        images = read_idx_images(images_path)
        labels = read_idx_labels(labels_path)
        if len(images) != len(labels):
            raise ValueError(
                f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
            )
        _check_labels(labels, len(FASHION_MNIST_CLASSES), labels_path)
        splits[split] = (images, labels)
    return splits


def _find_idx_file(src_dir: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (src_dir / name).is_file():
            return src_dir / name
    raise FileNotFoundError(f"expected {stem}.gz (or {stem}) in {src_dir}, found neither")


def load_cifar(src_dir: str | Path, variant: int) -> dict[str, Split]:
    """Load CIFAR-10 or CIFAR-100 from the official "python version" pickles.

    Args:
        src_dir: the extracted folder (cifar-10-batches-py or cifar-100-python) or its parent.
        variant: 10 or 100. CIFAR-100 uses its 100 fine labels.

    Returns:
        {"train": (images, labels), "test": (images, labels)}; images uint8 (N, 32, 32, 3) RGB,
        labels int64 indexing ``read_cifar_class_names(src_dir, variant)``.

    Raises:
        FileNotFoundError: if the folder or one of its files is missing.
        ValueError: if a file is not a CIFAR pickle of the expected shape.
    """
    folder = _find_cifar_folder(src_dir, variant)
    num_classes = len(read_cifar_class_names(folder, variant))
    if variant == 10:
        split_files = {
            "train": [f"data_batch_{i}" for i in range(1, 6)],
            "test": ["test_batch"],
        }
        label_key = "labels"
    else:
        split_files = {"train": ["train"], "test": ["test"]}
        label_key = "fine_labels"
    splits = {}
    for split, names in split_files.items():
        batches = [_read_cifar_batch(folder / name, label_key, num_classes) for name in names]
        splits[split] = (
            np.concatenate([images for images, _ in batches]),
            np.concatenate([labels for _, labels in batches]),
        )
    return splits


def read_cifar_class_names(src_dir: str | Path, variant: int) -> list[str]:
    """Class names from CIFAR's meta pickle (batches.meta for 10, meta for 100).

    Args:
        src_dir: the extracted folder or its parent, as for ``load_cifar``.
        variant: 10 or 100.
    """
    folder = _find_cifar_folder(src_dir, variant)
    meta_path, key = (
        (folder / "batches.meta", "label_names")
        if variant == 10
        else (folder / "meta", "fine_label_names")
    )
    meta = _load_pickle(meta_path)
    names = _pickle_field(meta, key, meta_path)
    expected = 10 if variant == 10 else 100
    if len(names) != expected:
        raise ValueError(f"{meta_path}: '{key}' has {len(names)} names, expected {expected}")
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def _find_cifar_folder(src_dir: str | Path, variant: int) -> Path:
    if variant not in (10, 100):
        raise ValueError(f"CIFAR variant must be 10 or 100, got {variant}")
    folder_name, marker = (
        ("cifar-10-batches-py", "batches.meta") if variant == 10 else ("cifar-100-python", "meta")
    )
    src_dir = Path(src_dir)
    for candidate in (src_dir, src_dir / folder_name):
        if (candidate / marker).is_file():
            return candidate
    raise FileNotFoundError(
        f"expected CIFAR-{variant} python pickles ({marker} and the batches) in {src_dir} "
        f"or {src_dir / folder_name}; download and extract cifar-{variant}-python.tar.gz there"
    )


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> Split:
    batch = _load_pickle(path)
    data = np.asarray(_pickle_field(batch, "data", path))
    labels = np.asarray(_pickle_field(batch, label_key, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_ROW_BYTES:
        raise ValueError(
            f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, {_CIFAR_ROW_BYTES})"
        )
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but '{label_key}' has shape {labels.shape}")
    _check_labels(labels, num_classes, path)
    # Each row is the R plane, then G, then B, each 32x32 in row-major order.
    side = _CIFAR_IMAGE_SIDE_PX
    images = data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except what numpy arrays need, since unpickling runs code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"expected CIFAR file {path.name} in {path.parent}, it is missing")
    try:
        with path.open("rb") as file:
            # The official pickles come from Python 2; "bytes" keeps their str keys as bytes.
            loaded = _ArraysOnlyUnpickler(file, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise ValueError(f"{path}: not a CIFAR python pickle ({error})") from error
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(loaded).__name__}")
    return loaded


def _pickle_field(loaded: dict, key: str, path: Path):
    for candidate in (key.encode(), key):
        if candidate in loaded:
            return loaded[candidate]
    found = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in loaded)
    raise ValueError(f"{path}: missing key '{key}' (found keys {found})")


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: labels span [{labels.min()}, {labels.max()}], expected [0, {num_classes})"
        )


def image_folder_splits(root: str | os.PathLike) -> dict[str, str]:
    """Split folders of an image-folder dataset, local or behind a pyarrow.fs URI.

    Args:
        root: either one class-per-folder tree, or a folder holding ``train/`` plus ``val/`` and/or
            ``test/``, each a class-per-folder tree (the ImageNet layout).

    Returns:
        {split name: location}; a single tree is returned as {"train": root}. Local locations
        are absolute, because Ray workers that read them run in another folder.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
    """
    location = absolute_location(os.fspath(root)).rstrip("/")
    filesystem, path = resolve_path(location)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"expected an image folder (one sub-folder per class) at {root}")

    def is_dir(name: str) -> bool:
        return filesystem.get_file_info(f"{path}/{name}").type == pafs.FileType.Directory

    held_out = [name for name in ("val", "test") if is_dir(name)]
    if is_dir("train") and held_out:
        return {name: f"{location}/{name}" for name in ("train", *held_out)}
    return {"train": location}


class ImageFile(NamedTuple):
    """One image of a class-per-folder tree."""

    file: str
    """Path relative to the split folder, ``/``-separated, e.g. ``n01440764/x.JPEG``."""
    size_bytes: int
    label: int


def scan_image_folder(
    root: str | os.PathLike, class_names: Sequence[str] | None = None
) -> tuple[list[ImageFile], list[str]]:
    """List the images of a class-per-folder tree with their labels, without opening them.

    Args:
        root: folder (local or pyarrow.fs URI) whose sub-folders are classes; images may sit at
            any depth below their class folder. Files whose extension is not in
            ``IMAGE_EXTENSIONS`` (any case) are skipped, as are folders starting with ".".
        class_names: the label order to use; None means the sorted sub-folder names. Pass the
            train split's names when scanning val/test so labels agree across splits even if a
            held-out split lacks some class.

    Returns:
        (images sorted by path, folder by folder; class names).

    Raises:
        FileNotFoundError: if ``root`` is missing.
        ValueError: if there are no class folders, a discovered class folder has no images, or a
            folder is not among ``class_names``.
    """
    filesystem, path = resolve_path(root)
    path = path.rstrip("/")
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"expected an image folder (one sub-folder per class) at {root}")
    entries = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    folders, files_by_folder = set(), {}
    for entry in entries:
        parts = entry.path[len(path) + 1 :].split("/")
        if parts[0].startswith("."):
            continue
        if entry.type == pafs.FileType.Directory and len(parts) == 1:
            folders.add(parts[0])
        elif (
            entry.type == pafs.FileType.File
            and len(parts) > 1
            and PurePosixPath(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS
        ):
            files_by_folder.setdefault(parts[0], []).append((parts, entry.size))
    folders = sorted(folders)
    if not folders:
        raise ValueError(f"{root}: no class sub-folders found; expected {root}/<class>/<image>")
    if class_names is None:
        class_names = folders
    else:
        unknown = sorted(set(folders) - set(class_names))
        if unknown:
            raise ValueError(
                f"{root}: class folders {unknown} are not among the classes {list(class_names)}"
            )
    label_by_name = {name: label for label, name in enumerate(class_names)}
    items = []
    for folder in folders:
        # Sorted part by part, as pathlib sorts, so "a/b/x.jpg" comes before "a/b-c.jpg".
        images = sorted(files_by_folder.get(folder, []))
        if not images:
            raise ValueError(
                f"{root}/{folder}: class folder has no images with extensions {IMAGE_EXTENSIONS}"
            )
        items.extend(
            ImageFile("/".join(parts), size_bytes, label_by_name[folder])
            for parts, size_bytes in images
        )
    return items, list(class_names)
