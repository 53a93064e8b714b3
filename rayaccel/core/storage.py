"""Where data and runs live: local paths and pyarrow URIs (`s3://`, `gs://`, `file://`).

Every read and write goes through pyarrow filesystems, so a run folder or a dataset on an
object store behaves exactly like one on local disk.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pyarrow.fs as pafs

from rayaccel.core.records import EpochRecord, records_of

# Inside every checkpoint folder: what `rayaccel.train.checkpoint` saves (model, optimizer, ...).
CHECKPOINT_STATE_FILE = "state.pt"
# Ray Train names a run's checkpoint folders `checkpoint_<timestamp>`, so they sort by age.
CHECKPOINT_PREFIX = "checkpoint_"


def resolve_path(dir_or_uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local path (relative is fine) or a URI such as ``s3://b/x``."""
    location = os.fspath(dir_or_uri)
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def absolute_location(location: str) -> str:
    """A URI as it is, a local path made absolute (Ray workers run in another folder)."""
    return location if "://" in location else os.path.abspath(location)


def latest_checkpoint(run_dir_or_uri: str) -> str | None:
    """The newest checkpoint folder of a run folder that holds a saved state, else None."""
    fs, root = resolve_path(run_dir_or_uri)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return None
    folders = sorted(
        info.path
        for info in fs.get_file_info(pafs.FileSelector(root))
        if info.type == pafs.FileType.Directory and info.base_name.startswith(CHECKPOINT_PREFIX)
    )
    for folder in reversed(folders):
        if fs.get_file_info(f"{folder}/{CHECKPOINT_STATE_FILE}").type == pafs.FileType.File:
            return folder if "://" not in run_dir_or_uri else _as_uri(run_dir_or_uri, root, folder)
    return None


def _as_uri(location: str, root: str, path: str) -> str:
    """`path` (a filesystem path under `root`) as a URI of `location`'s scheme."""
    return location.rstrip("/") + path[len(root.rstrip("/")) :]


@dataclass(frozen=True)
class RunFolder:
    """Where a run writes; a local folder or a URI, always through pyarrow filesystems."""

    location: str

    @classmethod
    def of(cls, storage_path: str, run_name: str) -> RunFolder:
        """The folder `storage_path/run_name` (a local storage path is made absolute)."""
        return cls(f"{absolute_location(storage_path).rstrip('/')}/{run_name}")

    def _resolved(self, name: str) -> tuple[pafs.FileSystem, str]:
        fs, root = resolve_path(self.location)
        return fs, f"{root}/{name}"

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        fs, path = self._resolved(name)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(data)

    def read_text(self, name: str) -> str | None:
        fs, path = self._resolved(name)
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as stream:
            return stream.read().decode()

    def read_metrics(self) -> list[dict]:
        """The raw rows of `metrics.jsonl` (none yet: an empty list)."""
        text = self.read_text("metrics.jsonl") or ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def read_epochs(self) -> list[EpochRecord]:
        """The run's finished epochs, as typed records."""
        return records_of(self.read_metrics())

    def write_epochs(self, records: list[EpochRecord]) -> None:
        """Replaces `metrics.jsonl` with `records`, one JSON object per line."""
        self.write_text("metrics.jsonl", "".join(json.dumps(r.to_row()) + "\n" for r in records))
