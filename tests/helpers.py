"""Paths and small builders shared by the test files.

Test files import it as `helpers`: pytest puts `tests/` on `sys.path` for its `conftest.py`
(rootdir-relative imports, no `__init__.py` packages), whatever subfolder the test lives in.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import yaml

from rayaccel.config import apply_overrides, parse_job, read_yaml, resolve_data_facts
from rayaccel.plan import make_plan

REPO_ROOT = Path(__file__).resolve().parent.parent
JOBS_DIR = REPO_ROOT / "jobs"
SEARCHES_DIR = REPO_ROOT / "searches"
FIXTURE_ROOT = REPO_ROOT / "data" / "fixture"
FIXTURE = FIXTURE_ROOT / "fashion-mnist"
FIXTURE_TRAIN = FIXTURE / "train"
FIXTURE_TEST = FIXTURE / "test"
SEG_FIXTURE = FIXTURE_ROOT / "fashion-seg"
QUICKSTART = str(JOBS_DIR / "quickstart.yaml")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_job(name: str) -> dict:
    """A shipped job file (`jobs/<name>`) as a mapping, to edit before `write_job`."""
    return yaml.safe_load((JOBS_DIR / name).read_text())


def write_job(tmp_path: Path, job: dict, name: str) -> Path:
    """Writes `job` as `tmp_path/<name>.yaml`, training on the bundled fixture and writing its
    run folder to `tmp_path/<name>`; returns the file's path."""
    job["data"].update(train=str(FIXTURE_TRAIN), val=str(FIXTURE_TEST))
    job["run"].update(name=name, storage_path=str(tmp_path))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def fixture_overrides(storage: Path, name: str) -> list[str]:
    """`rayaccel run` overrides: train on the fixture, write the run to `storage/name`."""
    return [
        f"data.train={FIXTURE_TRAIN}",
        f"data.val={FIXTURE_TEST}",
        f"run.storage_path={storage}",
        f"run.name={name}",
    ]


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of a run folder's `metrics.jsonl`, one per epoch."""
    text = (run_dir / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def checkpoints(run_dir: Path) -> list[Path]:
    """A run folder's checkpoint folders, oldest first."""
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


def parse_submit(argv: list[str]):
    """`rayaccel submit`'s arguments parsed as the CLI parses them."""
    import argparse

    from rayaccel.submit import add_submit_arguments

    parser = argparse.ArgumentParser(prog="rayaccel submit")
    add_submit_arguments(parser)
    return parser.parse_args(argv)


def load_benchmark(name: str):
    """A script of `benchmarks/` imported as a module (`benchmarks/<name>.py`)."""
    import importlib
    import sys

    # Scripts import `common` from their own folder, as `python benchmarks/x.py` allows.
    if str(REPO_ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    # A registered module: dataclasses in a script look their module up in sys.modules.
    return importlib.import_module(name)


def write_subset(split_dir: Path, out_dir: Path, rows: int) -> Path:
    """The first `rows` rows of a split (one shard) as a split folder of their own in `out_dir`.

    The bundled fixture's rows are in random class order, so the first rows hold every class.
    Mean and std stay the whole split's.
    """
    import dataclasses

    import pyarrow.parquet as pq

    from rayaccel.data.metadata import ShardInfo, read_meta, write_meta

    meta = read_meta(split_dir)
    table = pq.read_table(split_dir / meta.shards[0].file).slice(0, rows)
    assert table.num_rows == rows, f"{split_dir} has fewer than {rows} rows in its first shard"
    labels = table.column("label").to_pylist()
    out_dir.mkdir(parents=True)
    pq.write_table(table, out_dir / "part-00000.parquet")
    subset = dataclasses.replace(
        meta,
        count=rows,
        class_counts=tuple(labels.count(k) for k in range(meta.num_classes)),
        shards=(ShardInfo(file="part-00000.parquet", first_index=0, count=rows),),
    )
    write_meta(subset, out_dir)
    return out_dir


# Where no data set is, on any machine: the data folders of jobs planned from their facts.
ABSENT_DATA = Path("/nonexistent/rayaccel-data")


def data_absent_overrides(raw: dict) -> list[str]:
    """Overrides pointing a raw job's data folders at `ABSENT_DATA` when it states its data
    set's facts (`data.card`, `data.facts`), so it is planned from them whether or not a copy
    of the data is on this machine; none for jobs on the bundled fixture."""
    data = raw["data"]
    if data.get("card") is None and data.get("facts") is None:
        return []
    return [f"data.train={ABSENT_DATA / 'train'}", f"data.val={ABSENT_DATA / 'val'}"]


def search_overrides(job_overrides: dict) -> list[str]:
    """A search file's `job_overrides` as command-line overrides (JSON values are YAML)."""
    return [f"{key}={json.dumps(value)}" for key, value in job_overrides.items()]


def shipped_plan(job_path: Path, overrides: dict | None = None):
    """The plan of a shipped job (with search overrides) as `rayaccel plan` makes it.

    Jobs whose data is not in the repository (ImageNet, full Fashion-MNIST, CIFAR-10) are
    planned from their `data.card` with their data absent; jobs on the bundled fixture from
    its real metadata.
    """
    raw = apply_overrides(read_yaml(job_path), search_overrides(overrides or {}))
    raw = apply_overrides(raw, data_absent_overrides(raw))
    job = parse_job(raw, source=str(job_path))
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)  # the fixture's paths are relative to the repository
    try:
        resolved = resolve_data_facts(job, source=str(job_path), plan_only=True)
    finally:
        os.chdir(cwd)
    return make_plan(resolved.job, train_samples=resolved.train_images)


# The odd files of `write_photo_tree`, by what is odd about them (paths relative to the tree).
PHOTO_TREE_ODD_FILES = {
    "png": "beach/rgb.png",
    "grey": "forest/grey.jpg",
    "cmyk": "forest/cmyk.jpg",
    "rgba": "city/rgba.png",
    "rotated": "city/rotated.jpg",
    "corrupt": "beach/truncated.jpg",
}


def write_photo_tree(root: Path, per_class: int = 12, seed: int = 0) -> list[str]:
    """A small class-per-folder tree of JPEG "photos" (smooth gradients plus noise, so JPEG
    behaves as on photos) of varied sizes and aspect ratios, 20-90 px a side, plus the files of
    `PHOTO_TREE_ODD_FILES`: an RGB PNG, a greyscale and a CMYK JPEG, an RGBA PNG, a JPEG whose
    EXIF orientation turns it by 90 degrees, and a truncated JPEG. Returns every file written,
    relative to `root`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)

    def photo(width_px: int, height_px: int) -> Image.Image:
        rows = np.linspace(0, 1, height_px)[:, None, None]
        columns = np.linspace(0, 1, width_px)[None, :, None]
        tint = rng.random(3)[None, None, :]
        pixels = 255 * (0.6 * rows * tint + 0.4 * columns * (1 - tint))
        pixels = pixels + rng.normal(0, 12, (height_px, width_px, 3))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    written = []
    for name in ("beach", "city", "forest"):
        for i in range(per_class):
            file = f"{name}/{i:02d}.jpg"
            (root / name).mkdir(parents=True, exist_ok=True)
            size = (int(rng.integers(20, 91)), int(rng.integers(20, 91)))
            photo(*size).save(root / file, quality=90)
            written.append(file)
    odd = PHOTO_TREE_ODD_FILES
    photo(44, 30).save(root / odd["png"])
    photo(40, 28).convert("L").save(root / odd["grey"], quality=90)
    photo(36, 50).convert("CMYK").save(root / odd["cmyk"], quality=90)
    rgba = photo(30, 42).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / odd["rgba"])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: stored sideways, shown turned 90 degrees clockwise
    photo(64, 32).save(root / odd["rotated"], quality=90, exif=exif.tobytes())
    whole = root / "beach" / "whole.jpg"
    photo(80, 60).save(whole, quality=90)
    # Header intact, image data cut: only a full decode notices.
    (root / odd["corrupt"]).write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return sorted([*written, *odd.values()])


def read_tensorboard(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard folder (all its event files) as (step, value) lists,
    read by TensorBoard's own loader; values rounded to 6 places (stored as float32)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return {
        tag: [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def read_mlflow_runs(db_path: Path, experiment: str = "rayaccel") -> tuple:
    """An MLflow client of a run folder's store (`mlflow/mlflow.db`) and the experiment's runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db_path}")
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
