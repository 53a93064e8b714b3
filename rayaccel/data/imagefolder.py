"""``rayaccel data prepare imagefolder``: a class-per-folder photo tree to shards, in parallel.

Two passes of Ray tasks, one CPU each, spread over the cluster's nodes:

1. check: every chosen photo is decoded once (JPEGs at 1/8 scale), in the seeded random order
   its row will have. Unreadable files are listed in ``bad_files.txt`` and skipped
   (``on_bad_file="skip"``) or stop the command before anything is written (``"fail"``).
   Knowing the readable files first is what lets every shard hold exactly ``rows_per_shard``
   rows with contiguous indices however many files are skipped.
2. write: one task per shard reads its photos, shrinks those whose longer side exceeds
   ``max_side_px`` (aspect ratio kept, never cropped), keeps a file's own bytes when nothing
   about it changes, and writes ``part-NNNNN.parquet`` with its exact pixel sums in the footer.

Rows are in a seeded random order of the file list, so any run of rows mixes the classes: a
reader may then shuffle shard order and rows within a few shards instead of the whole set.

The check's outcome is saved as ``_prepare_plan.arrow`` (an Arrow IPC file, so no parquet
reader mistakes it for a shard) before any shard is written. Re-running the same command
resumes: shards whose footer holds the expected row count and the plan's id are kept, the rest
are written. A changed source listing or changed options are refused; ``overwrite`` starts
again. ``metadata.json`` is written last, once every shard is there.

Plain Ray tasks rather than a Ray Data pipeline: each task's output is one file plus a record of
a few numbers, and the driver needs each shard's completion (progress, resuming) itself; a
streaming dataset would add its executor and block bookkeeping around exactly that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from rayaccel.core.storage import absolute_location, resolve_path
from rayaccel.data import formats
from rayaccel.data.cluster import connect_ray
from rayaccel.data.image_shard import (
    ShardError,
    ShardOptions,
    ShardTask,
    check_files,
    finished_shard,
    stored_size_px,
    write_shard,
)
from rayaccel.data.metadata import ShardInfo, ShardSetMeta, SideRange, write_meta
from rayaccel.data.pixel_stats import PixelStats
from rayaccel.data.prepare_base import PrepareError, ProgressFn, stratified_subset

PLAN_FILE = "_prepare_plan.arrow"
BAD_FILES_FILE = "bad_files.txt"
_PLAN_KEY = b"rayaccel.plan"
_PLAN_VERSION = 1
# Separate seed streams, so choosing a subset and ordering the rows never share draws.
_ORDER_STREAM = 1


def prepare_image_folder(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    options: ShardOptions,
    rows_per_shard: int,
    per_class: dict[str, int],
    seed: int,
    overwrite: bool,
    on_bad_file: str,
    max_parallel_shards: int | None,
    progress: ProgressFn | None,
) -> dict[str, ShardSetMeta]:
    """Prepares every split of an image-folder tree; arguments as ``prepare.prepare_dataset``."""
    try:
        locations = formats.image_folder_splits(src)
        listings, classes = {}, None
        for split, location in locations.items():
            # Later splits reuse train's class order so a label means the same class everywhere.
            listings[split], classes = formats.scan_image_folder(location, classes)
    except (FileNotFoundError, ValueError) as error:
        raise PrepareError(str(error)) from error
    unknown_splits = sorted(set(per_class) - set(locations))
    if unknown_splits:
        raise PrepareError(
            f"per_class names splits {unknown_splits}; {src} has {sorted(locations)}"
        )

    out_location = absolute_location(os.fspath(out)).rstrip("/")
    filesystem, out_root = resolve_path(out_location)
    name = os.path.basename(absolute_location(os.fspath(src)).rstrip("/"))
    splits = {}
    for split, listing in listings.items():
        # Keyed by the flag that sets each, so a refusal names what to change back.
        settings = {
            "plan version": _PLAN_VERSION,
            "--encoding": options.encoding,
            "--jpeg-quality": options.jpeg_quality,
            "--max-side-px": options.max_side_px,
            "--image-size": options.centre_crop_px,
            "--rows-per-shard": rows_per_shard,
            "--seed": seed,
            "per class": per_class.get(split),
        }
        plan = _SplitPlan(
            split=split,
            source=locations[split],
            out=f"{out_location}/{split}",
            directory=f"{out_root}/{split}",
            listing=listing,
            listing_sha256=_listing_sha256(listing, classes),
            settings=settings,
        )
        plan.stored = _claim(filesystem, plan, overwrite)
        splits[split] = plan
    # Every split is checked before any is cleared, so a refusal leaves all of them as they were.
    if overwrite:
        for plan in splits.values():
            if filesystem.get_file_info(plan.directory).type == pafs.FileType.Directory:
                filesystem.delete_dir_contents(plan.directory)

    _connect_ray()
    results = {}
    for split, plan in splits.items():
        if plan.stored is None:
            labels = np.array([item.label for item in plan.listing], dtype=np.int64)
            limit = per_class.get(split)
            chosen = (
                np.arange(len(labels)) if limit is None else stratified_subset(labels, limit, seed)
            )
            order = np.random.default_rng((seed, _ORDER_STREAM)).permutation(chosen)
            plan.stored = _check_split(
                filesystem,
                plan,
                order,
                on_bad_file=on_bad_file,
                rows_per_task=rows_per_shard,
                max_parallel_shards=max_parallel_shards,
                progress=progress,
            )
        results[split] = _write_split(
            filesystem,
            plan,
            name=name,
            classes=classes,
            options=options,
            rows_per_shard=rows_per_shard,
            with_source_index=per_class.get(split) is not None,
            max_parallel_shards=max_parallel_shards,
            progress=progress,
        )
    return results


@dataclass
class _SplitPlan:
    """One split's source, destination, listing and the settings its plan is keyed by.

    Attributes:
        stored: the plan table (the check's outcome) once known: read back when resuming,
            written by the check otherwise.
    """

    split: str
    source: str
    out: str
    directory: str
    listing: list[formats.ImageFile]
    listing_sha256: str
    settings: dict
    stored: pa.Table | None = None

    @property
    def plan_id(self) -> str:
        text = json.dumps([self.listing_sha256, self.settings], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def _listing_sha256(listing: Sequence[formats.ImageFile], classes: Sequence[str]) -> str:
    """Hash of what the tree holds (paths, sizes, labels), so a changed source is noticed."""
    digest = hashlib.sha256(json.dumps(list(classes)).encode())
    for item in listing:
        digest.update(f"{item.file}\t{item.size_bytes}\t{item.label}\n".encode())
    return digest.hexdigest()


def _claim(filesystem: pafs.FileSystem, plan: _SplitPlan, overwrite: bool) -> pa.Table | None:
    """The stored plan to resume from, or None to start afresh; refuses what it may not reuse."""
    info = filesystem.get_file_info(plan.directory)
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type != pafs.FileType.Directory:
        raise PrepareError(f"output {plan.out} exists and is not a folder")
    if overwrite or not filesystem.get_file_info(pafs.FileSelector(plan.directory)):
        return None
    stored = _read_plan(filesystem, f"{plan.directory}/{PLAN_FILE}")
    if stored is None:
        raise PrepareError(
            f"output {plan.out} is not empty and holds no imagefolder prepare to resume (no "
            f"{PLAN_FILE}); pass overwrite=True (--overwrite) to replace it"
        )
    header = json.loads(stored.schema.metadata[_PLAN_KEY])
    if header["listing_sha256"] != plan.listing_sha256:
        raise PrepareError(
            f"output {plan.out} was started from a different source: {header['source']} listed "
            f"{header['listed']} images then, {plan.source} lists {len(plan.listing)} now (or "
            "files changed size); pass --overwrite to prepare it again from the current source"
        )
    if header["settings"] != plan.settings:
        changed = ", ".join(
            f"{key} {header['settings'].get(key)!r} -> {value!r}"
            for key, value in plan.settings.items()
            if header["settings"].get(key) != value
        )
        raise PrepareError(
            f"output {plan.out} was started with other options ({changed}); re-run with the "
            "options it was started with to resume, or pass --overwrite to start again"
        )
    return stored


def _read_plan(filesystem: pafs.FileSystem, path: str) -> pa.Table | None:
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    try:
        with filesystem.open_input_file(path) as file:
            table = pa.ipc.open_file(file).read_all()
    except (OSError, pa.ArrowInvalid):
        return None
    return table if _PLAN_KEY in (table.schema.metadata or {}) else None


def _check_split(
    filesystem: pafs.FileSystem,
    plan: _SplitPlan,
    order: np.ndarray,
    *,
    on_bad_file: str,
    rows_per_task: int,
    max_parallel_shards: int | None,
    progress: ProgressFn | None,
) -> pa.Table:
    """Checks every file in row order; writes the plan (readable files in row order, plus the
    unreadable ones with their reasons in its header) and returns it."""
    files = [plan.listing[int(position)].file for position in order]
    chunk = rows_per_task
    starts = list(range(0, len(files), chunk))
    checked: list = [None] * len(starts)
    step = f"{plan.split} check"
    done = 0

    def on_result(position: int, result: list) -> None:
        nonlocal done
        checked[position] = result
        done += len(result)
        if progress is not None:
            progress(step, done, len(files))

    if progress is not None:
        progress(step, 0, len(files))
    _run_tasks(
        check_files,
        [(plan.source, files[start : start + chunk]) for start in starts],
        max_parallel=max_parallel_shards,
        on_result=on_result,
    )
    outcomes = [outcome for result in checked for outcome in result]
    bad = [
        (file, outcome)
        for file, outcome in zip(files, outcomes, strict=True)
        if isinstance(outcome, str)
    ]
    if bad and on_bad_file == "fail":
        file, reason = bad[0]
        others = f" ({len(bad) - 1} more unreadable)" if len(bad) > 1 else ""
        raise PrepareError(
            f"{plan.source}/{file}: not a readable image ({reason}){others}; nothing was "
            "written (--on-bad-file fail). Remove or replace it, or pass --on-bad-file skip to "
            f"list such files in {BAD_FILES_FILE} and leave them out"
        )
    good = [
        (int(position), outcome)
        for position, outcome in zip(order, outcomes, strict=True)
        if not isinstance(outcome, str)
    ]
    if not good:
        raise PrepareError(f"{plan.source}: none of its {len(files)} images could be read")
    header = {
        "plan_id": plan.plan_id,
        "source": plan.source,
        "listed": len(plan.listing),
        "listing_sha256": plan.listing_sha256,
        "settings": plan.settings,
        "bad_files": [[file, reason] for file, reason in bad],
    }
    table = pa.table(
        {
            "file": [plan.listing[p].file for p, _ in good],
            "label": pa.array([plan.listing[p].label for p, _ in good], pa.int64()),
            "source_index": pa.array([p for p, _ in good], pa.int64()),
            "height_px": pa.array([size[0] for _, size in good], pa.int32()),
            "width_px": pa.array([size[1] for _, size in good], pa.int32()),
        }
    ).replace_schema_metadata({_PLAN_KEY: json.dumps(header)})
    filesystem.create_dir(plan.directory, recursive=True)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    _write_atomically(filesystem, f"{plan.directory}/{PLAN_FILE}", sink.getvalue().to_pybytes())
    return table


def _write_split(
    filesystem: pafs.FileSystem,
    plan: _SplitPlan,
    *,
    name: str,
    classes: list[str],
    options: ShardOptions,
    rows_per_shard: int,
    with_source_index: bool,
    max_parallel_shards: int | None,
    progress: ProgressFn | None,
) -> ShardSetMeta:
    """Writes the shards the plan still lacks, then ``metadata.json``; returns the metadata."""
    stored = plan.stored
    header = json.loads(stored.schema.metadata[_PLAN_KEY])
    files = stored.column("file").to_pylist()
    labels = stored.column("label").to_pylist()
    source_indices = stored.column("source_index").to_pylist()
    heights_px = stored.column("height_px").to_numpy()
    widths_px = stored.column("width_px").to_numpy()
    tasks = [
        ShardTask(
            source=plan.source,
            out=plan.out,
            file_name=f"part-{number:05d}.parquet",
            first_index=start,
            files=tuple(files[start : start + rows_per_shard]),
            labels=tuple(labels[start : start + rows_per_shard]),
            source_indices=(
                tuple(source_indices[start : start + rows_per_shard]) if with_source_index else None
            ),
            plan_id=header["plan_id"],
            options=options,
        )
        for number, start in enumerate(range(0, len(files), rows_per_shard))
    ]
    _remove_unfinished_writes(filesystem, plan.directory)
    if header["bad_files"]:
        # Written from the plan on every run, so an interruption right after the check
        # cannot lose the list.
        _write_atomically(
            filesystem,
            f"{plan.directory}/{BAD_FILES_FILE}",
            "".join(f"{file}\t{reason}\n" for file, reason in header["bad_files"]).encode(),
        )
    records: list = [
        finished_shard(
            filesystem, f"{plan.directory}/{task.file_name}", header["plan_id"], len(task.files)
        )
        for task in tasks
    ]
    missing = [position for position, record in enumerate(records) if record is None]
    step = f"{plan.split} write"
    done = sum(record["count"] for record in records if record is not None)

    def on_result(position: int, record: dict) -> None:
        nonlocal done
        records[missing[position]] = record
        done += record["count"]
        if progress is not None:
            progress(step, done, len(files))

    if progress is not None:
        progress(step, done, len(files))
    _run_tasks(
        write_shard,
        [(tasks[position],) for position in missing],
        max_parallel=max_parallel_shards,
        on_result=on_result,
    )

    stats = PixelStats(3)
    for record in records:
        stats.merge(PixelStats.from_dict(record["pixel_stats"]))
    mean, std = stats.mean_std()
    stored_sizes_px = {
        stored_size_px(int(width), int(height), options)
        for width, height in zip(widths_px, heights_px, strict=True)
    }
    meta = ShardSetMeta(
        name=name,
        split=plan.split,
        classes=classes,
        num_classes=len(classes),
        count=len(files),
        class_counts=np.bincount(labels, minlength=len(classes)).tolist(),
        image_size=(next(iter(stored_sizes_px))[::-1] if len(stored_sizes_px) == 1 else None),
        channels=3,
        encoding=options.encoding,
        mean=mean,
        std=std,
        shards=[ShardInfo(task.file_name, task.first_index, len(task.files)) for task in tasks],
        original_size_px={
            "height": _side_range(heights_px),
            "width": _side_range(widths_px),
        },
        bad_file_count=len(header["bad_files"]),
    )
    write_meta(meta, plan.out)
    return meta


def _side_range(lengths_px: np.ndarray) -> SideRange:
    return SideRange(
        min=int(lengths_px.min()), median=float(np.median(lengths_px)), max=int(lengths_px.max())
    )


def _remove_unfinished_writes(filesystem: pafs.FileSystem, directory: str) -> None:
    """Deletes temporary shard files an interrupted run left behind (local output only)."""
    if filesystem.get_file_info(directory).type != pafs.FileType.Directory:
        return
    for entry in filesystem.get_file_info(pafs.FileSelector(directory)):
        if entry.base_name.endswith(".tmp") and entry.type == pafs.FileType.File:
            filesystem.delete_file(entry.path)


def _write_atomically(filesystem: pafs.FileSystem, path: str, data: bytes) -> None:
    """Writes under a temporary name and renames on local disk; objects appear whole anyway."""
    local = isinstance(filesystem, pafs.LocalFileSystem)
    written = f"{path}.{os.getpid()}.tmp" if local else path
    with filesystem.open_output_stream(written) as stream:
        stream.write(data)
    if local:
        filesystem.move(written, path)


def _connect_ray() -> None:
    """Joins RAY_ADDRESS or a cluster running on this machine, else starts a local Ray.

    Workers' log lines stay on the nodes: the progress line is all the console shows.
    """
    import ray

    if ray.is_initialized():
        return
    try:
        connect_ray(log_to_driver=False, logging_level=logging.ERROR)
    except ConnectionError as error:
        where = os.environ.get("RAY_ADDRESS")
        target = f"RAY_ADDRESS={where}" if where else "the Ray cluster running on this machine"
        raise PrepareError(
            f"cannot reach {target} ({error}); start it, or unset RAY_ADDRESS to prepare on a "
            "local Ray"
        ) from None


def _run_tasks(
    function: Callable,
    arguments: list[tuple],
    *,
    max_parallel: int | None,
    on_result: Callable[[int, object], None],
) -> None:
    """Runs ``function(*args)`` for each args as a 1-CPU Ray task spread over the nodes.

    ``on_result(position, result)`` is called as each task finishes, in completion order. At
    most ``max_parallel`` tasks are submitted at a time (None: all, so an autoscaler sees the
    whole demand). A task's ``ShardError`` becomes a ``PrepareError`` with its message.
    """
    import ray

    remote = ray.remote(num_cpus=1, scheduling_strategy="SPREAD", max_retries=3)(function)
    waiting = list(enumerate(arguments))[::-1]
    limit = max_parallel or max(1, len(arguments))
    running = {}
    try:
        while waiting or running:
            while waiting and len(running) < limit:
                position, args = waiting.pop()
                running[remote.remote(*args)] = position
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                position = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as error:
                    if isinstance(error.cause, ShardError):
                        raise PrepareError(str(error.cause)) from None
                    raise
                on_result(position, result)
    finally:
        for ref in running:
            ray.cancel(ref)


def progress_printer(out=None, *, interval_s: float = 2.0) -> ProgressFn:
    """A ``ProgressFn`` printing plain lines: done/total, images/s and ETA for each step.

    Lines come at most every ``interval_s`` per step, plus the step's first and last; the rate
    counts only images done by this run, so a resumed run's ETA is not flattered by the
    shards it found already written.
    """
    started: dict[str, tuple[float, int]] = {}
    last_line_s: dict[str, float] = {}

    def report(step: str, done: int, total: int) -> None:
        now_s = time.monotonic()
        if step not in started:
            started[step] = (now_s, done)
            if done:
                print(
                    f"[prepare] {step}: {done:,}/{total:,} images already written, resuming",
                    file=out,
                    flush=True,
                )
            last_line_s[step] = now_s
            return
        if done < total and now_s - last_line_s[step] < interval_s:
            return
        last_line_s[step] = now_s
        start_s, start_done = started[step]
        rate = (done - start_done) / max(now_s - start_s, 1e-9)
        line = f"[prepare] {step}: {done:,}/{total:,} images ({100 * done / max(total, 1):.0f}%), {rate:,.0f} images/s"
        if done < total and rate > 0:
            line += f", ETA {_duration((total - done) / rate)}"
        elif done >= total:
            line += f", {_duration(now_s - start_s)}"
        print(line, file=out, flush=True)

    return report


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
