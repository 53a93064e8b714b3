"""One command that exercises rayaccel's GPU code paths on one CUDA device and prints a table.

Every run so far was on CPUs; a CUDA machine is lent rarely and briefly, so this check is
prepared to run there unattended (benchmarks/gpu_check.sh) in under 8 minutes, one part after
the other, a failing part recording its one-line reason without stopping the others:

    quickstart-bf16   jobs/quickstart.yaml through `run_job` (real Ray Train, 1 worker) with
                      `scaling.use_gpu`, `train.precision=bf16` (autocast), `train.channels_last`
    fp16-scaler       the same job with `train.precision=fp16` (autocast + GradScaler)
    device-data       jobs/fashion-mnist-etpp-device.yaml: `data.mode: device`, uint8 images on
                      the GPU, crops, flips and the curriculum's down-sampling run there
    fft-lowpass       `rayaccel.methods.etpp.frequency.lowpass_crop` on the device against a
                      float64 CPU reference of the same input (max abs difference)
    curriculum-ib     jobs/quickstart-etpp.yaml (resize curriculum, replay, RandAugment) plus
                      InfoBatch pruning
    agvm-half-batch   `rayaccel.methods.agvm.multipliers.half_batch_gradients` in-process on
                      the device: two half-batch backward passes under autocast (fp16 with the
                      grad scaler on CUDA), cosine distances per component
    fast-to-94        jobs/fashion-mnist-fast.yaml (device data + the bag of tricks): the time
                      to 94% validation accuracy on full Fashion-MNIST (data/fashion-mnist or
                      ~/.cache/rayaccel/fashion-mnist when prepared; else the fixture, the
                      table says which, with an 85% target)

Columns: time (the part's wall time, Ray Train start-up included), images/s (training
throughput: the mean over the run's epochs of the loop's `images_per_s`, or in-process images
per second), peak GPU memory, accuracy (final validation accuracy). Peak memory: in-process
parts read `torch.cuda.max_memory_allocated`; Ray Train workers do not report their memory
(EpochRecord has no such field), so for those parts the driver samples the device's used memory
(`torch.cuda.mem_get_info`, every 0.2 s, all processes and CUDA contexts included), marked `~`.

    python benchmarks/gpu_check.py --device cuda --out /tmp/gpucheck     # the GPU machine
    python benchmarks/gpu_check.py --device cpu --tiny                    # CPU mode, ~1 min

`--device cpu --tiny` runs the same code with `use_gpu=false` on 512/256-image subsets of the
fixture for 1-2 epochs, so the test suite keeps it working; the fp16 part then runs a CPU
equivalent (a bf16 autocast step in-process: the fp16 grad scaler is CUDA-only).

On the GPU machine (no Ray, no pydantic, no registry there: the carry brings them, see
benchmarks/gpu_check.sh), from the checkout's root, with the carry in .gpu-carry/:

    bash benchmarks/gpu_check.sh       # the import line, then this script; log + JSON in $OUT

With `--device cuda` the JSON record goes to benchmarks/results/gpu_check.json unless `--json`
says otherwise (gpu_check.sh: $OUT/gpu_check.json, to copy there and render with
`python benchmarks/results_page.py`); the CPU mode writes one only with `--json`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from common import (
    CACHE,
    FIXTURE,
    REPO_ROOT,
    job_on_data,
    machine,
    metrics_rows,
    run,
    start_ray,
    time_to_target,
    write_record,
)

JOBS = REPO_ROOT / "jobs"
PREPARED = REPO_ROOT / "data" / "fashion-mnist"
RESULTS = REPO_ROOT / "benchmarks" / "results" / "gpu_check.json"
TINY_TRAIN_IMAGES, TINY_VAL_IMAGES = 512, 256
TARGETS = {"full": 0.94, "fixture": 0.85}
INFOBATCH = {"prune_ratio": 0.5, "delta": 0.875}
MEMORY_SAMPLE_EVERY_S = 0.2


@dataclasses.dataclass
class Context:
    """What every part needs: the device, the size of the check, where data and runs are."""

    device: str
    tiny: bool
    fixture: Path  # the fixture or its tiny subset (train/ and test/)
    full_data: Path | None  # prepared full Fashion-MNIST, if any
    storage: Path
    fast_epochs: int

    @property
    def use_gpu(self) -> bool:
        return self.device == "cuda"


@dataclasses.dataclass
class Outcome:
    """What one part measured; the runner adds the status and time."""

    images_per_s: float | None = None
    peak_memory_mib: float | None = None
    memory_sampled: bool = False
    accuracy: float | None = None
    note: str = ""


def on_one_worker(raw: dict, ctx: Context, name: str) -> dict:
    """A raw job on one Ray Train worker, on the GPU when checking CUDA; tiny runs one epoch."""
    raw = copy.deepcopy(raw)
    raw["scaling"].update(num_workers=1, use_gpu=ctx.use_gpu)
    cpus = 0.5 if ctx.tiny else 2
    raw["scaling"]["resources_per_worker"] = {"CPU": cpus}
    if "preprocess_cpus" in raw["scaling"]:
        raw["scaling"]["preprocess_cpus"] = 0.5 if ctx.tiny else 2
    raw["run"].update(name=f"gpucheck-{name}", keep_checkpoints=1)
    if ctx.tiny:
        raw["train"]["epochs"] = 1
        if "warmup_epochs" in raw["train"]["schedule"]:
            raw["train"]["schedule"]["warmup_epochs"] = 0.2
    return raw


def ray_outcome(summary: dict) -> Outcome:
    """Throughput and accuracy of a finished `run_job`."""
    from rayaccel.core.storage import RunFolder

    epochs = RunFolder(summary["run_folder"]).read_epochs()
    rates = [e.images_per_s for e in epochs if e.images_per_s]
    return Outcome(
        images_per_s=sum(rates) / len(rates) if rates else None,
        accuracy=summary["final_val_acc"],
    )


def quickstart_bf16(ctx: Context) -> Outcome:
    raw = job_on_data(JOBS / "quickstart.yaml", ctx.fixture, ctx.storage)
    raw["train"].update(precision="bf16", channels_last=True)
    return ray_outcome(run(on_one_worker(raw, ctx, "bf16"), source="quickstart.yaml"))


def fp16_scaler(ctx: Context) -> Outcome:
    if not ctx.use_gpu:
        outcome = autocast_steps(ctx.device, dtype_name="bf16", tiny=ctx.tiny)
        outcome.note = "CPU equivalent: bf16 autocast steps in-process (fp16 scaler is CUDA-only)"
        return outcome
    raw = job_on_data(JOBS / "quickstart.yaml", ctx.fixture, ctx.storage)
    raw["train"].update(precision="fp16", channels_last=True)
    return ray_outcome(run(on_one_worker(raw, ctx, "fp16"), source="quickstart.yaml"))


def device_data(ctx: Context) -> Outcome:
    raw = job_on_data(JOBS / "fashion-mnist-etpp-device.yaml", ctx.fixture, ctx.storage)
    raw["train"]["precision"] = "bf16"
    raw = on_one_worker(raw, ctx, "device-data")
    if ctx.tiny:
        raw["train"]["epochs"] = 2
        raw["curriculum"]["budget_epochs"] = 2
    else:
        raw["train"]["epochs"] = 8
        raw["curriculum"]["budget_epochs"] = 5
    return ray_outcome(run(raw, source="fashion-mnist-etpp-device.yaml"))


def curriculum_infobatch(ctx: Context) -> Outcome:
    raw = job_on_data(JOBS / "quickstart-etpp.yaml", ctx.fixture, ctx.storage)
    raw["train"]["precision"] = "bf16"
    raw["infobatch"] = dict(INFOBATCH)
    raw = on_one_worker(raw, ctx, "curriculum-ib")
    if ctx.tiny:
        # Two epochs, so InfoBatch has epoch 1's losses to prune epoch 2 with, and two stages
        # (each Ray Data pipeline costs seconds here), still with replay and RandAugment.
        raw["train"]["epochs"] = 2
        raw["infobatch"]["delta"] = 1.0  # 0.875 of 2 epochs: epoch 2 would train on all data
        raw["curriculum"]["budget_epochs"] = 1.5
        raw["curriculum"]["stages"] = [
            {"resolution_px": 20, "randaug_magnitude": 2, "replay_factor": 2},
            {"resolution_px": 28, "randaug_magnitude": 4},
        ]
    return ray_outcome(run(raw, source="quickstart-etpp.yaml"))


def fast_to_target(ctx: Context) -> Outcome:
    data = ctx.fixture if ctx.tiny or ctx.full_data is None else ctx.full_data
    kind = "full" if data == ctx.full_data else "fixture"
    target = TARGETS[kind]
    raw = job_on_data(JOBS / "fashion-mnist-fast.yaml", data, ctx.storage)
    raw = on_one_worker(raw, ctx, "fast")
    epochs = raw["train"]["epochs"] if ctx.tiny else ctx.fast_epochs
    raw["train"]["epochs"] = epochs
    raw["train"]["schedule"]["points"] = [[0, 0.1], [min(1, epochs / 2), 1], [epochs, 0]]
    if ctx.tiny:
        raw["tricks"]["whitening"]["sample_images"] = TINY_TRAIN_IMAGES
    started_unix_s = time.time()
    summary = run(raw, source="fashion-mnist-fast.yaml")

    rows = metrics_rows(Path(summary["run_folder"]))
    hit = time_to_target(rows, started_unix_s, target)
    outcome = ray_outcome(summary)
    reached = (
        f"{100 * target:.0f}% in {hit['wall_s']:.1f} s (epoch {hit['epochs']})"
        if hit["wall_s"] is not None
        else f"{100 * target:.0f}% not reached in {epochs} epochs"
    )
    outcome.note = f"{kind} data ({data}): {reached}"
    return outcome


def fft_lowpass(ctx: Context) -> Outcome:
    import torch

    from rayaccel.methods.etpp.frequency import lowpass_crop

    shape, size_px = ((8, 1, 28, 28), 20) if ctx.tiny else ((256, 3, 224, 224), 160)
    images = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    reference = lowpass_crop(images.double(), size_px)
    on_device = images.to(ctx.device)
    lowpass_crop(on_device, size_px)  # warm-up: cuFFT plans
    synchronize(ctx.device)
    started_s = time.perf_counter()
    cropped = lowpass_crop(on_device, size_px)
    synchronize(ctx.device)
    elapsed_s = time.perf_counter() - started_s
    difference = (cropped.cpu().double() - reference).abs().max().item()
    difference_fp32 = (cropped.cpu() - lowpass_crop(images, size_px)).abs().max().item()
    if not difference < 1e-4:
        raise AssertionError(f"max abs difference {difference:.3g} to the float64 CPU crop")
    return Outcome(
        images_per_s=shape[0] / elapsed_s,
        note=f"{shape} -> {size_px} px, max abs diff vs float64 CPU {difference:.2e} "
        f"(vs float32 CPU {difference_fp32:.2e})",
    )


def agvm_half_batch(ctx: Context) -> Outcome:
    import torch
    import torch.nn.functional as F

    from rayaccel.methods.agvm.multipliers import group_parameters, half_batch_gradients
    from rayaccel.models import build_model

    torch.manual_seed(0)
    batch = 16 if ctx.tiny else 512
    model = build_model("resnet9", num_classes=10, in_chans=1, width_multiplier=0.25)
    model = model.to(ctx.device, memory_format=torch.channels_last)
    images = torch.randn(batch, 1, 28, 28, device=ctx.device)
    labels = torch.randint(0, 10, (batch,), device=ctx.device)
    dtype = torch.float16 if ctx.use_gpu else torch.bfloat16
    scaler = torch.amp.GradScaler(ctx.device, enabled=dtype == torch.float16)

    def loss_fn(inputs, targets):
        with torch.autocast(ctx.device, dtype=dtype):
            return F.cross_entropy(model(inputs), targets)

    started_s = time.perf_counter()
    measured = half_batch_gradients(
        model, loss_fn, images, labels, group_parameters(model), scale_loss=scaler.scale
    )
    distances = measured.distances()
    synchronize(ctx.device)
    elapsed_s = time.perf_counter() - started_s
    if not all(math.isfinite(d) and 0 <= d <= 2 for d in distances.values()):
        raise AssertionError(f"cosine distances out of [0, 2]: {distances}")
    shown = ", ".join(f"{k} {v:.3f}" for k, v in distances.items())
    return Outcome(
        images_per_s=batch / elapsed_s,
        note=f"{'fp16 + GradScaler' if scaler.is_enabled() else 'bf16'}; D: {shown}",
    )


def autocast_steps(device: str, *, dtype_name: str, tiny: bool) -> Outcome:
    """A few SGD steps of the narrow ResNet-9 under autocast, in this process."""
    import torch
    import torch.nn.functional as F

    from rayaccel.models import build_model

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    torch.manual_seed(0)
    batch, steps = (32, 3) if tiny else (512, 20)
    model = build_model("resnet9", num_classes=10, in_chans=1, width_multiplier=0.25)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    images = torch.randn(batch, 1, 28, 28, device=device).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.randint(0, 10, (batch,), device=device)
    started_s = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype):
            loss = F.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    synchronize(device)
    elapsed_s = time.perf_counter() - started_s
    if not math.isfinite(loss.item()):
        raise AssertionError(f"loss {loss.item()} after {steps} {dtype_name} steps")
    return Outcome(images_per_s=batch * steps / elapsed_s)


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


PARTS: dict[str, tuple[str, Callable[[Context], Outcome]]] = {
    "quickstart-bf16": ("Ray Train, bf16 autocast, channels_last", quickstart_bf16),
    "fp16-scaler": ("Ray Train, fp16 autocast + GradScaler", fp16_scaler),
    "device-data": ("data.mode device, augment + resize on the device", device_data),
    "fft-lowpass": ("exact FFT low-pass crop vs float64 CPU", fft_lowpass),
    "curriculum-ib": ("ET++ resize curriculum + InfoBatch", curriculum_infobatch),
    "agvm-half-batch": ("AGVM half-batch gradients in-process", agvm_half_batch),
    "fast-to-94": ("fast recipe: time to target accuracy", fast_to_target),
}

# Parts that use the device in this process (the others train in Ray Train workers).
IN_PROCESS = {"fft-lowpass", "agvm-half-batch"}


class DeviceMemorySampler:
    """Peak used memory of the CUDA device (all processes), sampled from a driver thread.

    Ray Train workers are other processes, so `max_memory_allocated` here cannot see them.
    """

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self._stop = threading.Event()
        self.peak_used_bytes = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            free, total = self._torch.cuda.mem_get_info()
            self.peak_used_bytes = max(self.peak_used_bytes, total - free)
            self._stop.wait(MEMORY_SAMPLE_EVERY_S)

    def __enter__(self) -> DeviceMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_part(name: str, ctx: Context) -> dict:
    """Runs one part; any exception becomes a `failed` row with its one-line reason."""
    import torch

    what, check = PARTS[name]
    print(f"[gpu_check] {name}: {what}", flush=True)
    row = {"part": name, "what": what, "status": "ok", "reason": ""}
    started_s = time.perf_counter()
    try:
        if ctx.use_gpu:
            torch.cuda.reset_peak_memory_stats()
            with DeviceMemorySampler() as sampler:
                outcome = check(ctx)
            if name in IN_PROCESS:
                outcome.peak_memory_mib = torch.cuda.max_memory_allocated() / 2**20
            else:
                outcome.peak_memory_mib = sampler.peak_used_bytes / 2**20
                outcome.memory_sampled = True
        else:
            outcome = check(ctx)
    except Exception as error:  # noqa: BLE001 - one failing part must not stop the others
        traceback.print_exc()
        first_line = (str(error).strip().splitlines() or [""])[0][:160]
        row.update(status="failed", reason=f"{type(error).__name__}: {first_line}")
        outcome = Outcome()
    row["time_s"] = time.perf_counter() - started_s
    row.update(dataclasses.asdict(outcome))
    return row


def format_table(results: dict) -> str:
    lines = [
        results["machine"],
        f"device: {results['device']}{' (tiny)' if results['tiny'] else ''}; GPU: {results['gpu']}",
        "| part | status | time s | images/s | peak GPU MiB | val acc | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["parts"]:
        status = "ok" if row["status"] == "ok" else f"FAILED: {row['reason']}"
        rate = f"{row['images_per_s']:.0f}" if row["images_per_s"] else "-"
        memory = "-"
        if row["peak_memory_mib"] is not None:
            memory = f"{'~' if row['memory_sampled'] else ''}{row['peak_memory_mib']:.0f}"
        accuracy = f"{row['accuracy']:.4f}" if row["accuracy"] is not None else "-"
        lines.append(
            f"| {row['part']} | {status} | {row['time_s']:.1f} | {rate} | {memory} | "
            f"{accuracy} | {row['note']} |"
        )
    passed = sum(row["status"] == "ok" for row in results["parts"])
    lines.append(f"{passed}/{len(results['parts'])} parts ok; total {results['total_s']:.1f} s")
    if any(row["memory_sampled"] for row in results["parts"]):
        lines.append("~: device memory used by all processes, sampled every 0.2 s")
    return "\n".join(lines)


def tiny_fixture(out: Path) -> Path:
    """The first rows of the fixture's splits (every class: the rows are shuffled)."""
    import pyarrow.parquet as pq

    from rayaccel.data.metadata import ShardInfo, read_meta, write_meta

    for split, rows in (("train", TINY_TRAIN_IMAGES), ("test", TINY_VAL_IMAGES)):
        meta = read_meta(FIXTURE / split)
        table = pq.read_table(FIXTURE / split / meta.shards[0].file).slice(0, rows)
        labels = table.column("label").to_pylist()
        (out / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / split / "part-00000.parquet")
        subset = dataclasses.replace(
            meta,
            count=rows,
            class_counts=tuple(labels.count(k) for k in range(meta.num_classes)),
            shards=(ShardInfo(file="part-00000.parquet", first_index=0, count=rows),),
        )
        write_meta(subset, out / split)
    return out


def prepared_full_data() -> Path | None:
    for folder in (PREPARED, CACHE):
        if (folder / "train" / "metadata.json").is_file():
            return folder
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="fixture subsets, 1-2 epochs")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated (default: {','.join(PARTS)})"
    )
    parser.add_argument("--fast-epochs", type=int, default=10, help="epochs of fast-to-94")
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: temp)")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help=f"the JSON record (default with --device cuda: {RESULTS.relative_to(REPO_ROOT)})",
    )
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {list(PARTS)}")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device (use --device cpu --tiny)")
    storage = args.out or Path(tempfile.mkdtemp(prefix="rayaccel-gpucheck-"))
    storage.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        device=args.device,
        tiny=args.tiny,
        fixture=tiny_fixture(storage / "tiny-fixture") if args.tiny else FIXTURE,
        full_data=prepared_full_data(),
        storage=storage,
        fast_epochs=args.fast_epochs,
    )
    started_s = time.perf_counter()
    if ctx.use_gpu:
        start_ray(num_cpus=None, num_gpus=torch.cuda.device_count())
    else:
        start_ray(num_cpus=2)
    rows = [run_part(name, ctx) for name in parts]
    results = {
        "machine": machine(),
        "device": args.device,
        "tiny": args.tiny,
        "gpu": torch.cuda.get_device_name(0) if ctx.use_gpu else "none",
        "parts": rows,
        "total_s": time.perf_counter() - started_s,
    }
    print(format_table(results), flush=True)
    record = args.json or (RESULTS if ctx.use_gpu else None)
    if record:
        write_record(record, results, script=__file__, argv=argv)
    return 0 if all(row["status"] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
