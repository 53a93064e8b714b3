"""The fast-training recipe vs the plain baseline: epochs and wall time to a fixed accuracy.

Runs, in one process and on one Ray instance:

    baseline  plain ResNet-9 (width 0.25, ReLU), Ray Data decoding and augmenting on CPU every
              epoch (pad-crop 2 px, random flip), SGD Nesterov at LR 0.4, cosine LR with half
              an epoch of warmup, label smoothing 0.1, batch 256, 8 epochs, 2 workers (half a
              core each, half a core per decode task): the baseline of
              jobs/fashion-mnist-etpp.yaml
    fast      `jobs/fashion-mnist-fast.yaml` as written: the same model width, batch and
              workers, plus data on the device, CELU, pool before activation, ghost BN, frozen
              BN scale, whitening, dirac init, alternating flip, label smoothing 0.2,
              piecewise LR, lookahead, EMA and flip TTA (one core per worker: no decode tasks)

Both evaluate on the test split after every epoch. For each run it prints the first epoch whose
validation accuracy reaches the target and the wall time until that epoch's report (measured
from just before the job is validated, so Ray Train start-up, dataset loading or pipelines,
training and every evaluation count), and the final accuracy.

Data: the full Fashion-MNIST when Debian's package is installed (prepared once into
~/.cache/rayaccel/fashion-mnist), else (or with `--fixture`) the bundled 4,000-image fixture;
`--smoke` always uses the fixture with 2-epoch runs.

    python benchmarks/fast_vs_baseline.py                # full: 20-40 min on 2 CPU cores
    python benchmarks/fast_vs_baseline.py --smoke        # harness check, ~3 min
    python benchmarks/fast_vs_baseline.py --target 0.91 --baseline-epochs 10
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

from common import (
    FIXTURE,
    REPO_ROOT,
    dataset_dir,
    job_on_data,
    machine,
    run,
    start_ray,
    write_record,
)

FAST_JOB = REPO_ROOT / "jobs" / "fashion-mnist-fast.yaml"
# Accuracy to reach on the 10,000 (full) or 1,000 (fixture) test images.
TARGETS = {"full": 0.92, "fixture": 0.85, "smoke": 0.5}


def jobs(data: Path, storage: Path, *, smoke: bool, baseline_epochs: int) -> dict[str, dict]:
    """The baseline and the fast recipe as raw job mappings."""
    fast = job_on_data(FAST_JOB, data, storage)
    fast["run"]["name"] = "bench-fast"
    baseline = copy.deepcopy(fast)
    del baseline["tricks"]
    baseline["data"]["mode"] = "ray"
    baseline["model"] = {"name": "resnet9", "width_multiplier": 0.25}
    baseline["train"].update(
        epochs=baseline_epochs,
        schedule={"name": "cosine", "warmup_epochs": 0.5},
        label_smoothing=0.1,
    )
    baseline["train"]["optimizer"]["lr"] = 0.4
    baseline["scaling"].update(resources_per_worker={"CPU": 0.5}, preprocess_cpus=0.5)
    baseline["run"]["name"] = "bench-baseline"
    if smoke:
        fast["train"].update(epochs=2)
        fast["train"]["schedule"]["points"] = [[0, 0.1], [1, 1], [2, 0]]
        baseline["train"].update(epochs=2)
        baseline["train"]["schedule"]["warmup_epochs"] = 0.2
    return {"baseline": baseline, "fast": fast}


def time_to_target(epochs: list, started_unix_s: float, target: float) -> dict:
    """First epoch (1-based count) reaching `target` and the wall time until its report;
    `epochs` are the run's `EpochRecord`s."""
    for e in epochs:
        if e.evaluated and e.val_acc >= target:
            return {"epochs": e.epoch + 1, "wall_s": e.time_unix_s - started_unix_s}
    return {"epochs": None, "wall_s": None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2-epoch runs on the fixture")
    parser.add_argument(
        "--fixture", action="store_true", help="the bundled fixture even if the full data exists"
    )
    parser.add_argument("--target", type=float, default=None, help="validation accuracy")
    parser.add_argument("--baseline-epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    from rayaccel.core.storage import RunFolder

    data = dataset_dir(args.smoke or args.fixture)
    kind = "smoke" if args.smoke else ("fixture" if data == FIXTURE else "full")
    target = args.target if args.target is not None else TARGETS[kind]
    storage = args.out or Path(tempfile.mkdtemp(prefix="rayaccel-bench-"))
    start_ray()
    runs = {}
    for name, raw in jobs(
        data, storage, smoke=args.smoke, baseline_epochs=args.baseline_epochs
    ).items():
        started_unix_s = time.time()
        summary = run(raw, source=str(FAST_JOB))
        epochs = RunFolder(summary["run_folder"]).read_epochs()
        runs[name] = {
            "epochs_run": len(epochs),
            "final_val_acc": summary["final_val_acc"],
            "wall_time_s": summary["wall_time_s"],
            "to_target": time_to_target(epochs, started_unix_s, target),
            "run_folder": summary["run_folder"],
        }
    results = {"machine": machine(), "data": str(data), "target": target, "runs": runs}
    print(format_table(results))
    if args.json:
        write_record(args.json, results, script=__file__, argv=argv)
    return 0


def format_table(results: dict) -> str:
    target = results["target"]
    lines = [
        results["machine"],
        f"data: {results['data']}; target: {100 * target:.1f}% validation accuracy",
        f"{'run':<9} {'epochs':>6} {'final_acc':>9} {'wall_s':>8} "
        f"{'epochs_to_target':>16} {'s_to_target':>11}",
    ]
    for name, r in results["runs"].items():
        hit = r["to_target"]
        epochs = hit["epochs"] if hit["epochs"] is not None else "-"
        wall = f"{hit['wall_s']:.1f}" if hit["wall_s"] is not None else "not reached"
        lines.append(
            f"{name:<9} {r['epochs_run']:>6} {r['final_val_acc']:>9.4f} {r['wall_time_s']:>8.1f} "
            f"{epochs:>16} {wall:>11}"
        )
    base, fast = results["runs"]["baseline"]["to_target"], results["runs"]["fast"]["to_target"]
    if base["wall_s"] is not None and fast["wall_s"] is not None:
        lines.append(
            f"fast vs baseline to {100 * target:.1f}%: {base['wall_s'] / fast['wall_s']:.2f}x "
            f"less wall time, {fast['epochs']} vs {base['epochs']} epochs"
        )
    else:
        lines.append(f"fast vs baseline to {100 * target:.1f}%: not reached by both runs")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
