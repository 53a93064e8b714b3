"""A prepared split's parquet shards checked against its `metadata.json` before anything trains.

A truncated, missing or foreign shard otherwise surfaces minutes later inside a Ray Data task, as
a raw pyarrow error that names no file (`Parquet magic bytes not found in footer`). Only the
footers are read (row count and schema, a few KB per shard), in parallel threads because on
object storage every read is a round trip: 1,000 shards take about a second.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayaccel.core.storage import resolve_path
from rayaccel.data.metadata import ShardInfo, ShardSetMeta

# The columns the pipeline reads (`pipeline.build_dataset`), with the type family each needs.
_COLUMN_KINDS = {
    "image": ("binary", lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)),
    "label": ("integer", pa.types.is_integer),
    "index": ("integer", pa.types.is_integer),
}
_MASK_KIND = ("binary", _COLUMN_KINDS["image"][1])
_MAX_THREADS = 32
# More lines than this say nothing new (a whole folder missing); the rest are counted.
_MAX_PROBLEMS = 10


def shard_problems(location: str, meta: ShardSetMeta) -> list[str]:
    """What is wrong with a split's shards, one line each naming the shard; [] when none.

    Checks that the split has rows, and that every shard `meta` lists exists, has a readable
    parquet footer, holds the rows metadata.json says, and has the columns the pipeline reads
    with their types (plus `mask` for segmentation).

    Args:
        location: The split folder as the job names it (local path or URI).
        meta: Its `metadata.json`.
    """
    shown = os.fspath(location).rstrip("/")
    if meta.count == 0 or not meta.shards:
        return [
            f"{shown}: the split has no rows (metadata.json count {meta.count}); prepare it "
            "again from a source with images, or name another split"
        ]
    filesystem, root = resolve_path(location)
    columns = dict(_COLUMN_KINDS)
    if meta.task == "segmentation":
        columns["mask"] = _MASK_KIND

    def check(shard: ShardInfo) -> str | None:
        problem = _shard_problem(filesystem, f"{root}/{shard.file}", shard, columns)
        return None if problem is None else f"{shown}/{shard.file}: {problem}"

    with ThreadPoolExecutor(min(_MAX_THREADS, len(meta.shards))) as pool:
        problems = [p for p in pool.map(check, meta.shards) if p is not None]
    if len(problems) > _MAX_PROBLEMS:
        more = len(problems) - _MAX_PROBLEMS
        problems = [*problems[:_MAX_PROBLEMS], f"{shown}: ... and {more} more bad shards"]
    return problems


def _shard_problem(
    filesystem: pafs.FileSystem, path: str, shard: ShardInfo, columns: dict
) -> str | None:
    rows = f"rows {shard.first_index}..{shard.first_index + shard.count - 1}"
    try:
        metadata = pq.read_metadata(path, filesystem=filesystem)
    except FileNotFoundError:
        return f"missing; metadata.json lists it for {rows}"
    except (OSError, pa.ArrowInvalid) as err:
        return (
            f"not a readable parquet file ({err}); it is truncated or damaged, prepare the "
            "split again"
        )
    if metadata.num_rows != shard.count:
        return (
            f"holds {metadata.num_rows} rows but metadata.json says {shard.count} ({rows}); "
            "the shard or metadata.json was replaced, prepare the split again"
        )
    schema = metadata.schema.to_arrow_schema()
    for name, (kind, matches) in columns.items():
        if name not in schema.names:
            return f"has no {name!r} column; shards need {_needed(columns)}"
        if not matches(schema.field(name).type):
            return f"column {name!r} is {schema.field(name).type}, expected {kind}"
    return None


def _needed(columns: dict) -> str:
    return ", ".join(f"{name} ({kind})" for name, (kind, _) in columns.items())
