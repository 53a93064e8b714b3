"""Data pipeline: Ray Data preprocessing vs a torch DataLoader, and what replay saves.

1. Throughput of the CPU preprocessing of `jobs/fashion-mnist-etpp.yaml` (read the parquet
   shards, PNG decode, 2-px random crop, horizontal flip; optionally the anti-aliased
   down-sampling of its 14-px stage), one full shuffled pass over the training split:
   - Ray Data: rayaccel's own training pipeline (`build_dataset`: seeded full shuffle,
     `map_batches` tasks of `preprocess_cpus=1`), consumed by the driver;
   - torch DataLoader: the same rows held as encoded bytes in memory, the same
     `decode_batch` function on batches of 256 random rows, `num_workers` = the CPUs.
   Both get the same number of CPUs; images/s per CPU is throughput / CPUs. Start-up (Ray
   Data's planning and shuffle, DataLoader's worker processes) is inside the time.
2. The replay buffer's cut in preprocessing work per trained image: for each stage of the
   job's curriculum plan (2 workers) with replay factor R > 1, one worker's epoch (the plan's
   steps of fresh chunks from the stage's pipeline) is fed through the loop's `ReplayHook`.
   CPU work per trained image without replay is the pipeline's measured CPU-ms per image at
   the stage's size (table 1); with replay it is that times fresh ÷ trained (counted) plus
   the hook's own mixing time per trained image (timed). A first, untimed Ray Data pass
   starts Ray Data's worker processes so table 1 does not charge that to one size.

    python benchmarks/data_pipeline.py            # full Fashion-MNIST (or the fixture)
    python benchmarks/data_pipeline.py --smoke    # fixture (~1 min)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from common import REPO_ROOT, dataset_dir, job_on_data, machine, start_ray, write_record

JOB = REPO_ROOT / "jobs" / "fashion-mnist-etpp.yaml"
LOADER_BATCH_ROWS = 256


@dataclasses.dataclass(frozen=True)
class Measured:
    """One timed pass: how many images, in how many seconds, on how many CPUs."""

    images: int
    seconds: float
    cpus: int

    @property
    def images_per_s_per_cpu(self) -> float:
        return self.images / self.seconds / self.cpus

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000 * self.seconds * self.cpus / self.images


def load_job(data: Path):
    from rayaccel.config import parse_job, resolve_data

    raw = job_on_data(JOB, data, Path("unused-runs"))
    raw["run"]["name"] = "bench-data-pipeline"
    return resolve_data(parse_job(raw, source=str(JOB)), source=str(JOB))


def train_spec(job, *, output_size_px: int | None):
    """The DecodeSpec of the job's training pipeline, optionally down-sampled."""
    from rayaccel.data.pipeline import DecodeSpec

    data = job.data
    return DecodeSpec(
        image_size_px=data.image_size_px,
        channels=data.channels,
        num_classes=data.num_classes,
        on_bad_row=data.on_bad_row,
        random_crop_padding_px=data.augment.random_crop_padding_px,
        horizontal_flip=data.augment.horizontal_flip,
        output_size_px=output_size_px,
    )


def ray_dataset(job, spec):
    from rayaccel.data.metadata import read_meta
    from rayaccel.data.pipeline import build_dataset, start_epoch_clock

    return build_dataset(
        job.data.train,
        read_meta(job.data.train),
        spec,
        shuffle_seed=job.train.seed,
        preprocess_cpus=1,
        decode_batch_rows=job.data.decode_batch_rows,
        window_rows=job.data.shuffle_window_rows,
        shuffle=job.data.shuffle,
        clock=start_epoch_clock(),
    )


def measure_ray_data(job, spec, cpus: int) -> Measured:
    started_s = time.perf_counter()
    images = 0
    for batch in ray_dataset(job, spec).iter_batches(batch_size=256, batch_format="numpy"):
        images += len(batch["label"])
    return Measured(images, time.perf_counter() - started_s, cpus)


class EncodedRows:
    """A map-style dataset of encoded rows; item = a list of row numbers -> a decoded batch."""

    def __init__(self, location: str, spec):
        import pyarrow.parquet as pq

        from rayaccel.data.metadata import read_meta
        from rayaccel.data.pipeline import shard_paths

        fs, paths = shard_paths(location, read_meta(location))
        table = pq.read_table(paths, filesystem=fs, columns=["image", "label", "index"])
        self.columns = {
            n: table.column(n).to_numpy(zero_copy_only=False) for n in table.schema.names
        }
        self.spec = spec

    def __len__(self) -> int:
        return len(self.columns["index"])

    def __getitem__(self, rows):
        import numpy as np

        from rayaccel.data.pipeline import decode_batch

        batch = {name: column[rows] for name, column in self.columns.items()}
        return decode_batch(batch, self.spec, np.random.default_rng())


def measure_dataloader(location: str, spec, cpus: int) -> Measured:
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    started_s = time.perf_counter()
    dataset = EncodedRows(location, spec)
    sampler = BatchSampler(RandomSampler(dataset), LOADER_BATCH_ROWS, drop_last=False)
    # batch_size=None: each item already is a batch; numpy arrays become tensors.
    loader = DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=cpus)
    images = sum(len(batch["label"]) for batch in loader)
    return Measured(images, time.perf_counter() - started_s, cpus)


def measure_replay(job, stage) -> dict:
    """One worker's epoch of a replay stage through the loop's replay hook.

    Counts fresh and trained images and times the hook itself (the replay's own cost, paid
    on the training worker's CPU instead of the preprocessing CPUs).
    """
    import torch

    from rayaccel.methods.base import StepBatch
    from rayaccel.methods.etpp.replay import ReplayHook

    spec = train_spec(job, output_size_px=stage.resolution_px)
    hook = ReplayHook(
        capacity_samples=job.curriculum.replay.capacity_samples,
        dtype=torch.uint8,
        device=torch.device("cpu"),
        seed=job.train.seed,
    )
    hook.on_stage_start(stage)
    hook.on_epoch_start(stage.first_epoch)
    # What one of the plan's workers takes in an epoch: its steps of fresh chunks.
    batches = ray_dataset(job, spec).iter_torch_batches(
        batch_size=stage.fresh_per_worker_batch, drop_last=True
    )
    trained = fresh = 0
    mix_s = 0.0
    for step, batch in enumerate(batches):
        if step >= stage.steps_per_epoch:
            break
        started_s = time.perf_counter()
        mixed = hook.on_batch(StepBatch(batch["image"], batch["label"], batch["index"]))
        mix_s += time.perf_counter() - started_s
        fresh += len(batch["label"])
        trained += len(mixed.labels)
    return {"trained": trained, "fresh": fresh, "mix_s": mix_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="on the fixture")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs for each side (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    from rayaccel.train.runner import build_run

    data = dataset_dir(args.smoke)
    job = load_job(data)
    plan, _ = build_run(job)
    specs = {
        size_px: train_spec(
            job, output_size_px=None if size_px == job.data.image_size_px else size_px
        )
        for size_px in sorted({job.data.image_size_px, *(s.resolution_px for s in plan.stages)})
    }
    # DataLoader first: its workers are forked, best before this process runs Ray's threads.
    loader = {px: measure_dataloader(job.data.train, spec, args.cpus) for px, spec in specs.items()}
    start_ray(num_cpus=args.cpus)
    import ray

    cpus = int(ray.cluster_resources().get("CPU", args.cpus))
    # One untimed pass: the first execution also starts Ray Data's worker processes.
    measure_ray_data(job, specs[job.data.image_size_px], cpus)
    throughput = {
        px: {"ray_data": measure_ray_data(job, spec, cpus), "dataloader": loader[px]}
        for px, spec in specs.items()
    }
    replay = {
        stage.index: measure_replay(job, stage) for stage in plan.stages if stage.replay_factor > 1
    }
    print(f"data pipeline on {data} ({machine()})")
    print(format_throughput(throughput))
    print(format_replay(plan, replay, throughput))
    if args.json:
        results = {
            "data": str(data),
            "throughput": {
                px: {k: dataclasses.asdict(m) for k, m in sides.items()}
                for px, sides in throughput.items()
            },
            "replay": replay,
        }
        write_record(args.json, results, script=__file__, argv=argv)
    return 0


def format_throughput(throughput: dict) -> str:
    lines = [
        "| output px | Ray Data images/s/CPU | DataLoader images/s/CPU | Ray Data ÷ DataLoader "
        "| Ray Data s (images, CPUs) | DataLoader s (images, CPUs) |",
        "|---|---|---|---|---|---|",
    ]
    for size_px, sides in throughput.items():
        ray_data, loader = sides["ray_data"], sides["dataloader"]
        lines.append(
            f"| {size_px} | {ray_data.images_per_s_per_cpu:,.0f} "
            f"| {loader.images_per_s_per_cpu:,.0f} "
            f"| {ray_data.images_per_s_per_cpu / loader.images_per_s_per_cpu:.2f} "
            f"| {ray_data.seconds:.1f} ({ray_data.images:,}, {ray_data.cpus}) "
            f"| {loader.seconds:.1f} ({loader.images:,}, {loader.cpus}) |"
        )
    return "\n".join(lines)


def format_replay(plan, replay: dict, throughput: dict) -> str:
    if not replay:
        return "replay: the plan has no stage with a replay factor > 1"
    lines = [
        "| stage | px | R | trained images | fresh images | fresh ÷ trained "
        "| CPU ms/trained image, no replay | with replay (preprocessing + mixing) | cut |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for index, measured in replay.items():
        stage = plan.stages[index]
        per_image_ms = throughput[stage.resolution_px]["ray_data"].cpu_ms_per_image
        fresh_share = measured["fresh"] / measured["trained"]
        mixing_ms = 1000 * measured["mix_s"] / measured["trained"]
        with_replay = per_image_ms * fresh_share + mixing_ms
        lines.append(
            f"| {index} | {stage.resolution_px} | {stage.replay_factor} | "
            f"{measured['trained']:,} | {measured['fresh']:,} | {fresh_share:.3f} "
            f"| {per_image_ms:.3f} | {with_replay:.3f} ({per_image_ms * fresh_share:.3f} + "
            f"{mixing_ms:.3f}) | {per_image_ms / with_replay:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
