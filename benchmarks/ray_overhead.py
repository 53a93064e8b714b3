"""Ray overhead: the same epochs through `rayaccel run` (1 worker) vs a plain PyTorch loop.

Both sides train the baseline of `jobs/fashion-mnist-etpp.yaml` (ResNet-9 width 0.25, SGD
Nesterov, global batch 256, cosine LR, label smoothing 0.1, fp32) with 1 worker, 1 torch
thread, no augmentation (so both see exactly the same pixels) and no validation:

- `rayaccel`: `run_job` (the code path of `rayaccel run`), Ray Data decoding the parquet
  shards every epoch on its own CPU and streaming uint8 batches to one Ray Train worker,
  which also writes a checkpoint and reports metrics every epoch;
- plain: one process, the parquet decoded once up front with rayaccel's own `decode_batch`
  into uint8 tensors, then a bare loop with the same model, initial weights (seed),
  optimizer, batch size, steps per epoch, LR schedule (`Plan.lr_at`), normalisation and
  memory layout of the inputs (NCHW, or channels-last on both sides with `--channels-last`).
  The layout matters: with grey images the decoded array's strides made the bare loop's
  convolutions take the channels-last kernels while the rayaccel loop took the NCHW ones,
  which made rayaccel look 25% slower than it is (measured 2026-11-23).

Per steady-state epoch (epoch 1 excluded: start-up, first pipeline execution) it prints the
plain loop's time and two rayaccel times: the loop's own `epoch_time_s` (waiting for data
plus training), and the interval between consecutive epoch reports (adds checkpointing,
the report barrier and the next epoch's pipeline start-up). Target: <= 1.10x per epoch.
It also prints where the loop's time went: its `data_wait_s` (blocked on the next batch) and
`worker_cpu_s` (CPU seconds of the worker process); loop time that is neither waiting for
data nor CPU time of the worker is time the worker was runnable but had no core.

    python benchmarks/ray_overhead.py               # full Fashion-MNIST (or fixture), 4 epochs
    python benchmarks/ray_overhead.py --fixture     # the 4,000-image fixture, 4 epochs (~3 min)
    python benchmarks/ray_overhead.py --smoke       # fixture, 2 epochs (~1 min)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, dataset_dir, job_on_data, machine, run, start_ray, write_record

JOB = REPO_ROOT / "jobs" / "fashion-mnist-etpp.yaml"
TARGET_RATIO = 1.10


def overhead_job(data: Path, storage: Path, *, epochs: int, channels_last: bool = False) -> dict:
    """The 1-worker, no-augmentation, no-validation baseline both sides train."""
    raw = job_on_data(JOB, data, storage)
    raw["train"]["channels_last"] = channels_last
    del raw["curriculum"]
    raw["data"].pop("val")
    raw["data"]["augment"] = {"random_crop_padding_px": 0, "horizontal_flip": False}
    raw["train"].update(epochs=epochs, log_every_steps=10_000)
    raw["train"]["schedule"]["warmup_epochs"] = min(0.5, epochs / 4)
    raw["scaling"] = {
        "num_workers": 1,
        "resources_per_worker": {"CPU": 1},
        "preprocess_cpus": 1,
    }
    raw["run"]["name"] = "bench-ray-overhead"
    return raw


def decode_split(location: str):
    """Every image of a split decoded once (rayaccel's `decode_batch`, no augmentation)."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from rayaccel.data.metadata import read_meta
    from rayaccel.data.pipeline import DecodeSpec, decode_batch, shard_paths

    meta = read_meta(location)
    fs, paths = shard_paths(location, meta)
    table = pq.read_table(paths, filesystem=fs, columns=["image", "label", "index"])
    spec = DecodeSpec(
        image_size_px=meta.image_size[0],
        channels=meta.channels,
        num_classes=meta.num_classes,
        on_bad_row="fail",
    )
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.schema.names}
    decoded = decode_batch(batch, spec, np.random.default_rng(0))
    return torch.from_numpy(decoded["image"]), torch.from_numpy(decoded["label"])


def plain_epochs(job, images, labels) -> tuple[list[float], list[float]]:
    """Trains the job's plan in a bare single-process loop; returns each epoch's seconds
    of wall time and of process CPU time."""
    import torch
    import torch.nn.functional as F

    from rayaccel.models import build_model
    from rayaccel.optim.build import build_optimizer, set_lr
    from rayaccel.train.loop import in_memory_format
    from rayaccel.train.runner import build_run

    plan, spec = build_run(job)
    torch.set_num_threads(spec.loop.torch_threads)
    torch.manual_seed(spec.loop.seed)
    model = build_model(
        spec.model.name,
        num_classes=spec.model.num_classes,
        in_chans=spec.model.in_chans,
        **spec.model.kwargs,
    )
    if spec.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, spec.optimizer)
    mean = torch.tensor(spec.data.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(spec.data.std).view(1, -1, 1, 1) * 255
    order = torch.Generator().manual_seed(spec.loop.seed)
    times_s, cpu_s = [], []
    for epoch in range(plan.total_epochs):
        stage = plan.stage_of(epoch)
        batch = stage.per_worker_batch
        model.train()
        started_s = time.perf_counter()
        cpu_started_s = time.process_time()
        permutation = torch.randperm(len(labels), generator=order)
        for step in range(stage.steps_per_epoch):
            set_lr(optimizer, plan.lr_at(epoch, step))
            chosen = permutation[step * batch : (step + 1) * batch]
            # The layout the rayaccel loop gives its inputs: the decoded array's own strides
            # would silently pick the other convolution kernels for grey images.
            inputs = in_memory_format(
                (images[chosen].float() - mean) / std, spec.model.channels_last
            )
            logits = model(inputs)
            loss = F.cross_entropy(
                logits, labels[chosen], label_smoothing=spec.loop.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times_s.append(time.perf_counter() - started_s)
        cpu_s.append(time.process_time() - cpu_started_s)
        print(f"[bench] plain epoch {epoch + 1}: {times_s[-1]:.1f} s", flush=True)
    return times_s, cpu_s


def compare(plain_s: list[float], epochs: list, plain_cpu_s: list[float] | None = None) -> dict:
    """Per-epoch times of both sides (`epochs`: the run's `EpochRecord`s) and the
    steady-state ratios (epoch 1 excluded)."""
    loop_s = [e.epoch_time_s for e in epochs]
    interval_s = [b.time_unix_s - a.time_unix_s for a, b in zip(epochs, epochs[1:], strict=False)]
    steady_plain = statistics.mean(plain_s[1:])
    steady_loop = statistics.mean(loop_s[1:])
    steady_interval = statistics.mean(interval_s)
    wait_s = [e.data_wait_s for e in epochs]
    cpu_s = [e.worker_cpu_s for e in epochs]
    return {
        "plain_cpu_s": plain_cpu_s or [None] * len(plain_s),
        "rayaccel_data_wait_s": wait_s,
        "rayaccel_worker_cpu_s": cpu_s,
        "steady_plain_cpu_s": _steady(plain_cpu_s or []),
        "steady_data_wait_s": _steady(wait_s),
        "steady_worker_cpu_s": _steady(cpu_s),
        "plain_epoch_s": plain_s,
        "rayaccel_loop_epoch_s": loop_s,
        "rayaccel_report_interval_s": [None, *interval_s],
        "steady_plain_s": steady_plain,
        "steady_loop_s": steady_loop,
        "steady_interval_s": steady_interval,
        "loop_ratio": steady_loop / steady_plain,
        "interval_ratio": steady_interval / steady_plain,
    }


def _steady(values: list) -> float | None:
    """Mean from epoch 2 on, or None when a run did not record the value (older runs)."""
    values = values[1:]
    return statistics.mean(values) if values and None not in values else None


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def format_table(results: dict) -> str:
    lines = [
        f"Ray overhead on {results['data']} ({results['machine']}), {results['images']:,} "
        f"training images, 1 worker, 1 torch thread, "
        f"{'channels-last' if results.get('channels_last') else 'NCHW'} layout on both sides",
        "| epoch | plain loop (s) | plain CPU (s) | rayaccel loop epoch_time_s (s) "
        "| rayaccel report interval (s) | rayaccel data wait (s) | rayaccel worker CPU (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for epoch, columns in enumerate(
        zip(
            results["plain_epoch_s"],
            results["plain_cpu_s"],
            results["rayaccel_loop_epoch_s"],
            results["rayaccel_report_interval_s"],
            results["rayaccel_data_wait_s"],
            results["rayaccel_worker_cpu_s"],
            strict=True,
        )
    ):
        lines.append(f"| {epoch + 1} | " + " | ".join(_seconds(c) for c in columns) + " |")
    lines.append(
        f"| steady (2..) | {results['steady_plain_s']:.1f} "
        f"| {_seconds(results['steady_plain_cpu_s'])} | {results['steady_loop_s']:.1f} "
        f"({results['loop_ratio']:.3f}x) | {results['steady_interval_s']:.1f} "
        f"({results['interval_ratio']:.3f}x) | {_seconds(results['steady_data_wait_s'])} "
        f"| {_seconds(results['steady_worker_cpu_s'])} |"
    )
    verdict = "meets" if results["interval_ratio"] <= TARGET_RATIO else "misses"
    lines.append(
        f"rayaccel vs plain PyTorch per steady-state epoch: {results['loop_ratio']:.3f}x in the "
        f"loop, {results['interval_ratio']:.3f}x report to report ({verdict} the "
        f"<= {TARGET_RATIO:.2f}x target)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2 epochs on the fixture")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per side (>= 2)")
    parser.add_argument(
        "--fixture", action="store_true", help="the 4,000-image fixture even if the full set exists"
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="train.channels_last: true on both sides"
    )
    parser.add_argument("--out", type=Path, default=None, help="run folder parent (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    epochs = 2 if args.smoke else args.epochs
    if epochs < 2:
        parser.error("--epochs: needs >= 2 (epoch 1 is excluded as start-up)")

    from rayaccel.config import parse_job, resolve_data

    data = dataset_dir(args.smoke or args.fixture)
    storage = args.out or Path(tempfile.mkdtemp(prefix="rayaccel-bench-"))
    raw = overhead_job(data, storage, epochs=epochs, channels_last=args.channels_last)
    job = resolve_data(parse_job(raw, source=str(JOB)), source=str(JOB))
    images, labels = decode_split(job.data.train)
    plain_s, plain_cpu_s = plain_epochs(job, images, labels)
    start_ray()
    summary = run(raw, source=str(JOB))
    from rayaccel.core.storage import RunFolder

    epochs = RunFolder(summary["run_folder"]).read_epochs()
    results = {
        "data": str(data),
        "machine": machine(),
        "images": len(labels),
        "channels_last": args.channels_last,
        **compare(plain_s, epochs, plain_cpu_s),
    }
    print(format_table(results))
    if args.json:
        write_record(args.json, results, script=__file__, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
