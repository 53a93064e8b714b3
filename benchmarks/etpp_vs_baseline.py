"""EfficientTrain++ curriculum vs the plain baseline: wall time and full-resolution accuracy.

Runs, in one process and on one Ray instance, `jobs/fashion-mnist-etpp.yaml` (or `--job`)
twice: once without its `curriculum` section (the baseline: `train.epochs` at full resolution)
and once as written. Both use the same model, data, workers and evaluation; wall time is each run's
`summary.json` `wall_time_s` (datasets, every Ray Data epoch, training, evaluation,
checkpoints, every method's own overhead), measured after Ray is up.

Data: the full Fashion-MNIST when /usr/share/datasets/fashion-mnist (IDX files) exists,
prepared once with rayaccel's own `prepare_dataset` into ~/.cache/rayaccel/fashion-mnist;
otherwise the bundled 4,000-image fixture.

    python benchmarks/etpp_vs_baseline.py            # full benchmark (10-20 min on 2 cores)
    python benchmarks/etpp_vs_baseline.py --smoke    # harness check on the fixture (~1-2 min)
    python benchmarks/etpp_vs_baseline.py --job jobs/fashion-mnist-etpp-device.yaml
        # the device-resident version against its 24-epoch baseline (about 40 min)

Target (issue 3): >= 1.5x less wall time at equal accuracy (within 0.5 points).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, dataset_dir, job_on_data, run, start_ray

JOB = REPO_ROOT / "jobs" / "fashion-mnist-etpp.yaml"


def jobs(data: Path, storage: Path, smoke: bool, job: Path = JOB) -> dict[str, dict]:
    """The baseline and curriculum jobs as raw mappings (same everything but `curriculum`)."""
    curriculum = job_on_data(job, data, storage)
    if smoke:
        curriculum["train"].update(epochs=1)
        curriculum["train"]["schedule"]["warmup_epochs"] = 0.1
        curriculum["curriculum"]["budget_epochs"] = 0.75
    baseline = copy.deepcopy(curriculum)
    del baseline["curriculum"]
    baseline["run"]["name"] = "bench-baseline"
    curriculum["run"]["name"] = "bench-etpp"
    return {"baseline": baseline, "et++": curriculum}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run on the fixture")
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--job",
        type=Path,
        default=JOB,
        help=f"the curriculum job (default: {JOB.relative_to(REPO_ROOT)})",
    )
    args = parser.parse_args(argv)

    data = dataset_dir(args.smoke)
    storage = args.out or Path(tempfile.mkdtemp(prefix="rayaccel-bench-"))
    start_ray()
    started_s = time.time()
    summaries = {
        name: run(raw, source=str(args.job))
        for name, raw in jobs(data, storage, args.smoke, args.job).items()
    }
    base, etpp = summaries["baseline"], summaries["et++"]
    results = {
        "data": str(data),
        "job": str(args.job),
        "smoke": args.smoke,
        "runs": summaries,
        "wall_time_ratio": base["wall_time_s"] / etpp["wall_time_s"],
        "accuracy_delta_points": 100 * (etpp["final_val_acc"] - base["final_val_acc"]),
        "compute_vs_baseline": etpp["compute_vs_baseline"],
        "total_s": time.time() - started_s,
    }
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def format_table(results: dict) -> str:
    lines = [
        f"data: {results['data']}",
        f"{'run':<9} {'wall_s':>8} {'train_s':>8} {'epochs':>6} {'val_acc':>8} "
        f"{'eval_px':>7} {'compute':>7}",
    ]
    for name, summary in results["runs"].items():
        lines.append(
            f"{name:<9} {summary['wall_time_s']:>8.1f} {summary['train_time_s']:>8.1f} "
            f"{summary['epochs_completed']:>6} {summary['final_val_acc']:>8.4f} "
            f"{summary['eval_resolution_px']:>7} {summary['compute_vs_baseline']:>7.3f}"
        )
    lines.append(
        f"et++ vs baseline: {results['wall_time_ratio']:.2f}x less wall time, "
        f"{results['accuracy_delta_points']:+.2f} accuracy points, "
        f"{results['compute_vs_baseline']:.3f}x the compute"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
