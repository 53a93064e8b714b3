"""Large-batch segmentation: linear LR scaling vs the same with AGVM vs LAMB, in one session.

Runs, in one process and on one Ray instance, `jobs/fashion-seg-agvm.yaml` (timm ResNet-10t
backbone + FPN neck + per-pixel head on the derived Fashion-MNIST segmentation set, 2 workers)
as these variants, all at the same epochs:

    small     the reference: batch 32 at the base LR (what large batches try to match)
    linear    batch 512, SGD, LR scaled linearly from batch 32 (16x), no AGVM
    agvm      the same with AGVM (backbone / neck / head multipliers)
    lamb      batch 512, LAMB, LR scaled by the square-root rule from its own base

and prints, per run, the final validation mean IoU and pixel accuracy (full resolution), the
wall time, the training time, and the AGVM multipliers at the end. AGVM's own cost (two
half-batch passes every `interval` steps) is inside its wall and training times.

Data: the bundled segmentation fixture (`data/fixture/fashion-seg`, 4,000 + 1,000 images);
`--full` derives the set from the full Fashion-MNIST when Debian's package is installed
(60,000 + 10,000 images, prepared once into ~/.cache/rayaccel/fashion-seg).

    python benchmarks/large_batch.py                  # fixture, 4 runs: ~10-30 min on 2 cores
    python benchmarks/large_batch.py --smoke          # harness check: 1 epoch each, 2 variants
    python benchmarks/large_batch.py --epochs 12 --variants linear,agvm
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

from common import REPO_ROOT, SOURCE, machine, run, start_ray, write_record

JOB = REPO_ROOT / "jobs" / "fashion-seg-agvm.yaml"
SEG_FIXTURE = REPO_ROOT / "data" / "fixture" / "fashion-seg"
SEG_CACHE = Path.home() / ".cache" / "rayaccel" / "fashion-seg"
VARIANTS = ("small", "linear", "agvm", "lamb")


def dataset_dir(full: bool) -> Path:
    """The segmentation set: the fixture, or one derived from Debian's full Fashion-MNIST."""
    if not full:
        return SEG_FIXTURE
    if not SOURCE.is_dir():
        raise SystemExit(f"--full needs Debian's dataset-fashion-mnist package ({SOURCE})")
    if not (SEG_CACHE / "train" / "metadata.json").is_file():
        from rayaccel.data.prepare import prepare_dataset

        print(f"[bench] deriving {SOURCE} -> {SEG_CACHE}", flush=True)
        prepare_dataset("fashion-seg", SOURCE, SEG_CACHE, overwrite=True)
    return SEG_CACHE


def jobs(data: Path, storage: Path, *, epochs: int, smoke: bool) -> dict[str, dict]:
    """Every variant as a raw job mapping."""
    from rayaccel.config import read_yaml

    base = read_yaml(JOB)
    base["data"].update(train=str(data / "train"), val=str(data / "test"))
    base["run"].update(storage_path=str(storage))
    base["train"].update(epochs=epochs, log_every_steps=1000)
    schedule = base["train"]["schedule"]
    # Short runs (smoke, --epochs 1) keep the warmup inside the training.
    schedule["warmup_epochs"] = min(schedule["warmup_epochs"], 0.2 * epochs)
    if smoke:
        base["agvm"].update(start_step=0, interval=2)

    def variant(name: str, **train) -> dict:
        raw = copy.deepcopy(base)
        raw["run"]["name"] = f"bench-{name}"
        raw["train"].update(train)
        return raw

    small = variant("small", global_batch_size=32)
    del small["agvm"]
    small["train"]["schedule"]["warmup_epochs"] = 0.2
    linear = variant("linear")
    del linear["agvm"]
    agvm = variant("agvm")
    lamb = variant("lamb")
    del lamb["agvm"]
    lamb["train"]["optimizer"] = {"name": "lamb", "lr": 0.002, "weight_decay": 0.01}
    lamb["train"]["lr_scaling"] = {"rule": "sqrt", "base_batch": 32}
    return {"small": small, "linear": linear, "agvm": agvm, "lamb": lamb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1 epoch of linear and agvm")
    parser.add_argument("--full", action="store_true", help="derive from the full Fashion-MNIST")
    parser.add_argument("--epochs", type=int, default=None, help="default: the job's")
    parser.add_argument("--variants", default=None, help=f"comma list of {','.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    from rayaccel.config import read_yaml
    from rayaccel.core.storage import RunFolder

    variants = (args.variants or ("linear,agvm" if args.smoke else ",".join(VARIANTS))).split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    epochs = args.epochs or (1 if args.smoke else read_yaml(JOB)["train"]["epochs"])
    data = dataset_dir(args.full and not args.smoke)
    storage = args.out or Path(tempfile.mkdtemp(prefix="rayaccel-bench-"))
    start_ray()
    all_jobs = jobs(data, storage, epochs=epochs, smoke=args.smoke)
    runs = {}
    for name in variants:
        summary = run(all_jobs[name], source=str(JOB))
        last = RunFolder(summary["run_folder"]).read_epochs()[-1]
        runs[name] = {
            "global_batch": all_jobs[name]["train"]["global_batch_size"],
            "optimizer": all_jobs[name]["train"]["optimizer"]["name"],
            "final_val_miou": summary["final_val_miou"],
            "final_val_pixel_acc": summary["final_val_acc"],
            "wall_time_s": summary["wall_time_s"],
            "train_time_s": summary["train_time_s"],
            "agvm_mu": {
                k.split("/")[-1]: v
                for k, v in last.method_metrics.items()
                if k.startswith("agvm/mu/")
            },
            "run_folder": summary["run_folder"],
        }
    results = {"machine": machine(), "data": str(data), "epochs": epochs, "runs": runs}
    print(format_table(results))
    if args.json:
        write_record(args.json, results, script=__file__, argv=argv)
    return 0


def format_table(results: dict) -> str:
    runs = results["runs"]
    reference = runs.get("linear") or next(iter(runs.values()))
    lines = [
        results["machine"],
        f"data: {results['data']}; {results['epochs']} epochs each",
        "",
        "| run | batch | optimizer | val mIoU | val pixel acc | wall time (s) | training time (s) "
        "| mIoU − linear (points) | AGVM mu at the end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        mu = ", ".join(f"{k} {v:.3f}" for k, v in r["agvm_mu"].items()) or "—"
        delta = 100 * (r["final_val_miou"] - reference["final_val_miou"])
        lines.append(
            f"| {name} | {r['global_batch']} | {r['optimizer']} | {r['final_val_miou']:.4f} "
            f"| {r['final_val_pixel_acc']:.4f} | {r['wall_time_s']:.1f} | {r['train_time_s']:.1f} "
            f"| {delta:+.2f} | {mu} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
