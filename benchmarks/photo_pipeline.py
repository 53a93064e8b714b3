"""Photo pipeline: rayaccel's Ray Data decoding of full-size JPEGs vs torchvision's ImageFolder
+ DataLoader with the same transforms, on the same CPUs.

Data: a class-per-folder tree of real photographs at ImageNet-typical sizes, built by
`scripts/make_photo_tree.py` from Debian's mate-backgrounds photos, and its parquet shards
(`rayaccel data prepare imagefolder`, kept in the cache). Measured, in images/s per CPU:

1. Preparation: `rayaccel data prepare imagefolder` on all CPUs vs on one.
2. Training transforms at 224, 160, 128 and 96 px: RandomResizedCrop (scale 0.08-1), flip and
   timm's `rand-m9-mstd0.5-inc1`, uint8 output:
   - Ray Data: rayaccel's training pipeline (`build_dataset`: windowed epoch order, one task
     per window, `preprocess_cpus=1`), with and without reduced-size JPEG decoding;
   - DataLoader: `torchvision.datasets.ImageFolder` with `RandomResizedCrop`,
     `RandomHorizontalFlip`, timm's RandAugment and `PILToTensor`, `num_workers` = the CPUs,
     batches of 256.
3. The evaluation transform (shorter side to size / 0.875, centre crop) at 224 px, both ways,
   on the training photos.
4. The fixed cost of an epoch boundary on the bundled fixture: the quickstart's
   `first_batch_wait_s` (rank 0's wait for each epoch's first batch) with the windowed order
   and the cached validation split vs `data.shuffle: full` without the cache (the earlier
   pipeline: an all-to-all shuffle and a fresh validation decode every epoch).

Each timed pass is one epoch over the training split, start-up inside the time, the faster of
two passes for each side; an untimed pass first starts Ray Data's worker processes. The JSON
record holds every number printed.

    python scripts/make_photo_tree.py /tmp/photos            # once (about a minute)
    python benchmarks/photo_pipeline.py --photos /tmp/photos
    python benchmarks/photo_pipeline.py --photos /tmp/photos --smoke   # 2 sizes, no prepare
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common import REPO_ROOT, machine, metrics_rows, start_ray, write_record

SIZES_PX = (224, 160, 128, 96)
POLICY = "rand-m9-mstd0.5-inc1"
SCALE = (0.08, 1.0)
CROP_PCT = 0.875
LOADER_BATCH = 256
CACHE = Path.home() / ".cache" / "rayaccel" / "photo-bench"


@dataclass(frozen=True)
class Measured:
    images: int
    seconds: float
    cpus: int

    @property
    def per_cpu(self) -> float:
        return self.images / self.seconds / self.cpus


def prepare(photos: Path, out: Path, cpus: int, *, parallel_shards: int | None) -> Measured:
    """`rayaccel data prepare imagefolder` on a `cpus`-CPU Ray instance, at most
    `parallel_shards` shard tasks at once (None: as many as the CPUs run), timed end to end
    (Ray's start-up included)."""
    shutil.rmtree(out, ignore_errors=True)
    started_s = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "rayaccel",
            "data",
            "prepare",
            "imagefolder",
            str(photos),
            str(out),
            "--max-side-px",
            "500",
            *([] if parallel_shards is None else ["--max-parallel-shards", str(parallel_shards)]),
        ],
        check=True,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "RAY_ADDRESS": "local"},
    )
    seconds = time.perf_counter() - started_s
    count = sum(
        json.loads((out / split / "metadata.json").read_text())["count"]
        for split in ("train", "val")
    )
    return Measured(count, seconds, cpus)


def ray_spec(size_px: int, *, reduced: bool, training: bool, num_classes: int):
    from rayaccel.data.pipeline import DecodeSpec

    if not training:
        return DecodeSpec(
            image_size_px=size_px,
            channels=3,
            num_classes=num_classes,
            on_bad_row="fail",
            crop_pct=CROP_PCT,
            reduced_decode=reduced,
        )
    return DecodeSpec(
        image_size_px=size_px,
        channels=3,
        num_classes=num_classes,
        on_bad_row="fail",
        horizontal_flip=True,
        rrc_scale=SCALE,
        augment_policy=POLICY,
        randaug_fill=(124, 116, 104),
        reduced_decode=reduced,
    )


REPEATS = 2


def best(measure, *args, **kwargs) -> Measured:
    """The faster of `REPEATS` passes (both sides alike: a pass on a shared 2-CPU machine
    is sometimes slowed by other work)."""
    return min((measure(*args, **kwargs) for _ in range(REPEATS)), key=lambda m: m.seconds)


def measure_ray(split: Path, spec, cpus: int, *, training: bool) -> Measured:
    import ray

    from rayaccel.data.metadata import read_meta
    from rayaccel.data.pipeline import build_dataset, start_epoch_clock

    clock = start_epoch_clock()
    dataset = build_dataset(
        str(split),
        read_meta(split),
        spec,
        shuffle_seed=0 if training else None,
        preprocess_cpus=1,
        decode_batch_rows=64,
        window_rows=256,
        clock=clock,
    )
    started_s = time.perf_counter()
    images = 0
    for batch in dataset.iter_batches(batch_size=LOADER_BATCH, batch_format="numpy"):
        images += len(batch["label"])
    seconds = time.perf_counter() - started_s
    ray.kill(clock)
    return Measured(images, seconds, cpus)


def measure_loader(folder: Path, size_px: int, cpus: int, *, training: bool) -> Measured:
    import torch
    from torchvision import datasets, transforms

    from rayaccel.data.randaugment import policy_transform

    if training:
        transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(size_px, scale=SCALE),
                transforms.RandomHorizontalFlip(),
                # timm's transform, with its posterize kept working on Pillow >= 10.
                policy_transform(POLICY, 3, (124, 116, 104)),
                transforms.PILToTensor(),
            ]
        )
    else:
        transform = transforms.Compose(
            [
                transforms.Resize(int(size_px / CROP_PCT)),
                transforms.CenterCrop(size_px),
                transforms.PILToTensor(),
            ]
        )
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(folder), transform=transform),
        batch_size=LOADER_BATCH,
        shuffle=training,
        num_workers=cpus,
    )
    started_s = time.perf_counter()
    images = 0
    for pixels, _ in loader:
        images += len(pixels)
    return Measured(images, time.perf_counter() - started_s, cpus)


def epoch_boundary(storage: Path) -> dict[str, dict]:
    """The quickstart's first-batch wait per epoch (3 epochs), windowed vs full shuffle."""
    results = {}
    variants = {
        "windows + cached val": [],
        "full shuffle, val decoded every epoch": ["data.shuffle=full", "data.cache_val=false"],
    }
    for name, overrides in variants.items():
        run = f"bench-boundary-{len(results)}"
        shutil.rmtree(storage / run, ignore_errors=True)  # a finished folder would resume
        subprocess.run(
            [
                sys.executable,
                "-m",
                "rayaccel",
                "run",
                "jobs/quickstart.yaml",
                "train.epochs=3",
                f"run.storage_path={storage}",
                f"run.name={run}",
                *overrides,
            ],
            check=True,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # A fresh local Ray: the benchmark's own instance is shut down by now.
            env={**os.environ, "RAY_ADDRESS": "local"},
        )
        rows = metrics_rows(storage / run)
        waits = [row["first_batch_wait_s"] for row in rows]
        results[name] = {
            "first_batch_wait_s": waits,
            # The first epoch also starts the pipeline's worker processes.
            "mean_after_first_s": statistics.mean(waits[1:]),
            "epoch_time_s": [row["epoch_time_s"] for row in rows],
            "val_time_s": [row.get("val_time_s") for row in rows],
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--photos", type=Path, required=True, help="scripts/make_photo_tree.py's output"
    )
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument(
        "--smoke", action="store_true", help="224 and 96 px only, no prepare timing"
    )
    parser.add_argument(
        "--json", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "photo_pipeline.json"
    )
    args = parser.parse_args(argv)
    if not (args.photos / "train").is_dir():
        print(
            f"error: {args.photos}/train not found; run scripts/make_photo_tree.py {args.photos} first"
        )
        return 2
    sizes = (224, 96) if args.smoke else SIZES_PX
    shards = CACHE / args.photos.resolve().name
    results: dict = {"machine": machine(), "photos": str(args.photos), "cpus": args.cpus}
    if not args.smoke:
        results["prepare"] = {
            "one_cpu": asdict(prepare(args.photos, shards, 1, parallel_shards=1)),
            "all_cpus": asdict(prepare(args.photos, shards, args.cpus, parallel_shards=None)),
        }
    elif not (shards / "train" / "metadata.json").exists():
        prepare(args.photos, shards, args.cpus, parallel_shards=None)
    train_split = shards / "train"
    num_classes = len(json.loads((train_split / "metadata.json").read_text())["classes"])
    # DataLoader first: its workers fork, best before this process runs Ray's threads.
    loader = {
        px: measure_loader(args.photos / "train", px, args.cpus, training=True) for px in sizes
    }
    loader_eval = measure_loader(args.photos / "val", 224, args.cpus, training=False)
    start_ray(num_cpus=args.cpus)
    warm = ray_spec(96, reduced=True, training=True, num_classes=num_classes)
    measure_ray(train_split, warm, args.cpus, training=True)  # starts the worker processes
    training = {}
    for px in sizes:
        training[px] = {
            "dataloader": asdict(loader[px]),
            **{
                ("ray_reduced" if reduced else "ray_full_decode"): asdict(
                    best(
                        measure_ray,
                        train_split,
                        ray_spec(px, reduced=reduced, training=True, num_classes=num_classes),
                        args.cpus,
                        training=True,
                    )
                )
                for reduced in (False, True)
            },
        }
    results["training"] = training
    evaluation = {"dataloader": asdict(loader_eval)}
    for reduced in (False, True):
        spec = ray_spec(224, reduced=reduced, training=False, num_classes=num_classes)
        key = "ray_reduced" if reduced else "ray_full_decode"
        evaluation[key] = asdict(best(measure_ray, train_split, spec, args.cpus, training=False))
    results["evaluation_224px"] = evaluation
    import ray

    ray.shutdown()
    results["epoch_boundary"] = epoch_boundary(CACHE / "runs")
    print(format_results(results))
    write_record(args.json, results, script=__file__, argv=argv)
    print(f"record: {args.json}")
    return 0


def _rate(m: dict) -> float:
    return m["images"] / m["seconds"] / m["cpus"]


def format_results(results: dict) -> str:
    lines = [f"photo pipeline on {results['photos']} ({results['machine']})"]
    if "prepare" in results:
        one, every = results["prepare"]["one_cpu"], results["prepare"]["all_cpus"]
        lines.append(
            f"prepare: {one['images'] / one['seconds']:,.0f} images/s on 1 CPU, "
            f"{every['images'] / every['seconds']:,.0f} on {every['cpus']} "
            f"({one['seconds'] / every['seconds']:.2f}x)"
        )
    lines += [
        "| px | DataLoader img/s/CPU | Ray Data, full decode | Ray Data, reduced decode "
        "| Ray (reduced) ÷ DataLoader | reduced ÷ full decode |",
        "|---|---|---|---|---|---|",
    ]
    for px, sides in results["training"].items():
        loader, full, reduced = (
            _rate(sides[k]) for k in ("dataloader", "ray_full_decode", "ray_reduced")
        )
        lines.append(
            f"| {px} | {loader:,.0f} | {full:,.0f} | {reduced:,.0f} | {reduced / loader:.2f} "
            f"| {reduced / full:.2f} |"
        )
    ev = results["evaluation_224px"]
    lines.append(
        f"evaluation at 224 px (crop_pct {CROP_PCT}): DataLoader {_rate(ev['dataloader']):,.0f}, "
        f"Ray Data {_rate(ev['ray_full_decode']):,.0f} (full decode), "
        f"{_rate(ev['ray_reduced']):,.0f} (reduced) images/s/CPU"
    )
    for name, boundary in results["epoch_boundary"].items():
        waits = ", ".join(f"{w:.2f}" for w in boundary["first_batch_wait_s"])
        lines.append(
            f"epoch boundary ({name}): first-batch wait per epoch {waits} s; "
            f"mean after the first {boundary['mean_after_first_s']:.2f} s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
