"""Time to accuracy: baseline vs EfficientTrain++ vs InfoBatch vs both, same model and budget.

Runs, in one process and on one Ray instance, four variants of `jobs/fashion-mnist-etpp.yaml`
(ResNet-9 width 0.25, 2 workers, `train.epochs` = 6 as the budget of every variant):

    baseline          the job without its `curriculum` section (6 epochs at 28 px)
    et++              the job as written (3-stage curriculum, 0.67x the compute)
    infobatch         the baseline plus `infobatch: {prune_ratio: 0.5, delta: 0.875}`
    et++ & infobatch  the job as written plus the same `infobatch` section

and prints, from each run folder (`rayaccel.report`): wall time (`summary.json`, from before
the datasets are built to the end, every method's overhead included), compute (trained
images x resolution^2, counted from what each epoch really trained, so pruned samples are not
counted), the final full-resolution validation accuracy, and the ratios to the baseline.

Data: the full Fashion-MNIST when Debian's package is installed (/usr/share/datasets/
fashion-mnist, prepared once into ~/.cache/rayaccel/fashion-mnist), else the bundled
4,000-image fixture; `--smoke` always uses the fixture with 2-epoch budgets.

    python benchmarks/time_to_accuracy.py                      # full: ~40-60 min on 2 cores
    python benchmarks/time_to_accuracy.py --smoke              # harness check, ~2-3 min
    python benchmarks/time_to_accuracy.py --variants baseline,et++
    rayaccel report RUNS/bench-tta-baseline RUNS/bench-tta-etpp ...   # plots of the runs
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

from common import (
    REPO_ROOT,
    comparison,
    dataset_dir,
    job_on_data,
    machine,
    run,
    start_ray,
    write_record,
)

JOB = REPO_ROOT / "jobs" / "fashion-mnist-etpp.yaml"
INFOBATCH = {"prune_ratio": 0.5, "delta": 0.875}
# Variant name -> (keeps the curriculum, adds InfoBatch, run folder name).
VARIANTS = {
    "baseline": (False, False, "bench-tta-baseline"),
    "et++": (True, False, "bench-tta-etpp"),
    "infobatch": (False, True, "bench-tta-infobatch"),
    "et++ & infobatch": (True, True, "bench-tta-etpp-infobatch"),
}


def jobs(data: Path, storage: Path, *, smoke: bool, variants: list[str]) -> dict[str, dict]:
    """The variants as raw job mappings, identical except `curriculum` and `infobatch`."""
    written = job_on_data(JOB, data, storage)
    if smoke:
        # Two epochs, so InfoBatch has scores from epoch 1 to prune epoch 2 with.
        written["train"].update(epochs=2)
        written["train"]["schedule"]["warmup_epochs"] = 0.2
        written["curriculum"]["budget_epochs"] = 1.5
    raws = {}
    for name in variants:
        keeps_curriculum, adds_infobatch, run_name = VARIANTS[name]
        raw = copy.deepcopy(written)
        if not keeps_curriculum:
            del raw["curriculum"]
        if adds_infobatch:
            raw["infobatch"] = dict(INFOBATCH)
        raw["run"]["name"] = run_name
        raws[name] = raw
    return raws


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run on the fixture")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, the first is the baseline of the ratios (default: all: "
        f"{','.join(VARIANTS)})",
    )
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")

    data = dataset_dir(args.smoke)
    storage = args.out or Path(tempfile.mkdtemp(prefix="rayaccel-bench-"))
    raws = jobs(data, storage, smoke=args.smoke, variants=variants)
    start_ray()
    started_s = time.time()
    summaries = {name: run(raw, source=str(JOB)) for name, raw in raws.items()}
    table = comparison({name: s["run_folder"] for name, s in summaries.items()})
    print(f"time to accuracy on {data} ({machine()}; {time.time() - started_s:.0f} s in all)")
    print(table)
    if args.json:
        results = {"data": str(data), "smoke": args.smoke, "runs": summaries, "table": table}
        write_record(args.json, results, script=__file__, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
