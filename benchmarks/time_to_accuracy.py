"""Speed-up at equal accuracy: each method against the baseline's whole frontier, over seeds.

A method that trains for less compute ends a little lower than the baseline of the same
nominal budget, and a baseline cut to fewer epochs also trains for less and also ends a
little lower, so one fixed baseline overstates any method. This benchmark runs the baseline
at several epoch budgets (its frontier: accuracy against wall time) and every variant, each
with several seeds, and reports for each variant:

- the mean +- sd over seeds of its final accuracy and wall time;
- its **speed-up at equal accuracy**: the frontier's wall time at the variant's mean accuracy
  (interpolated linearly between the budgets' mean points; above the frontier's best or below
  its cheapest it is a bound, printed with >= or <=) divided by the variant's mean wall time,
  and the sd of the same ratio taken seed by seed;
- its time to a fixed target (`--target`: the first evaluated epoch at or above it), and the
  frontier budgets' too.

Runs are additive: every (variant, budget, seed) has its own run folder under `--out`; a
finished one (its summary says every planned epoch ran) is read, not run again, and an
interrupted one is discarded and run again from the start (resumed, its wall time would cover
only its last attempt). So a full table can be built over several invocations
(`--max-runs N` runs at most N missing ones, then reports what exists).

Variants of `--job` (default jobs/fashion-mnist-etpp.yaml, whose Ray Data pipeline every
method composes with; jobs/fashion-mnist-etpp-device.yaml keeps the data on the workers, so no
CPU pipeline competes with training, but InfoBatch needs the pipeline):

    baseline@B         the job without its curriculum, `train.epochs` = B
    et++               the job as written (its curriculum)
    infobatch          the baseline at the job's epochs plus InfoBatch (r = 0.5)
    et++ & infobatch   both
    progressive        EfficientNetV2 progressive learning, 16 -> 28 px in 4 stages
    fast               jobs/fashion-mnist-fast.yaml (the speed-record tricks) on the same data
    composed           jobs/fashion-mnist-composed.yaml (curriculum, InfoBatch, EMA, flip TTA)
    composed -X        the ablation: the composed job without its section X (curriculum,
                       infobatch, tricks.ema, tricks.tta), to show what each component adds

    python benchmarks/time_to_accuracy.py --out runs/tta                        # everything
    python benchmarks/time_to_accuracy.py --out runs/tta --max-runs 4            # a few more runs
    python benchmarks/time_to_accuracy.py --out runs/tta --variants et++ --seeds 0,1,2
    python benchmarks/time_to_accuracy.py --out runs/tta --variants "composed,composed -infobatch"
    python benchmarks/time_to_accuracy.py --smoke                               # harness check
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import (
    REPO_ROOT,
    dataset_dir,
    job_on_data,
    machine,
    metrics_rows,
    run,
    start_ray,
    time_to_target,
    write_record,
)

JOB = REPO_ROOT / "jobs" / "fashion-mnist-etpp.yaml"
FAST_JOB = REPO_ROOT / "jobs" / "fashion-mnist-fast.yaml"
COMPOSED_JOB = REPO_ROOT / "jobs" / "fashion-mnist-composed.yaml"
# The composed job's components the ablation leaves out one at a time (dotted paths).
ABLATED = ("curriculum", "infobatch", "tricks.ema", "tricks.tta")
BUDGETS = (4, 6, 8, 12, 16, 24)
INFOBATCH = {"prune_ratio": 0.5, "delta": 0.875}
PROGRESSIVE = {
    "preset": "progressive",
    "num_stages": 4,
    "size_px": [16, 28],
    "randaug_magnitude": [0, 0],
}


def _without_curriculum(raw: dict) -> dict:
    raw.pop("curriculum", None)
    return raw


def _with(section: str, value: dict, *, keep_curriculum: bool) -> Callable[[dict], dict]:
    def edit(raw: dict) -> dict:
        if not keep_curriculum:
            _without_curriculum(raw)
        raw[section] = copy.deepcopy(value)
        return raw

    return edit


def _without(path: str) -> Callable[[dict], dict]:
    def edit(raw: dict) -> dict:
        *parents, key = path.split(".")
        section = raw
        for name in parents:
            section = section[name]
        del section[key]
        if parents and not section:  # `tricks:` with nothing left in it
            del raw[parents[0]]
        return raw

    return edit


# Variant -> how its job is made: from the base job (`--job`), or from a shipped job of its own
# (VARIANT_JOBS) on the same data.
VARIANTS: dict[str, Callable[[dict], dict]] = {
    "et++": lambda raw: raw,
    "infobatch": _with("infobatch", INFOBATCH, keep_curriculum=False),
    "et++ & infobatch": _with("infobatch", INFOBATCH, keep_curriculum=True),
    "progressive": _with("curriculum", PROGRESSIVE, keep_curriculum=False),
    "fast": lambda raw: raw,
    "composed": lambda raw: raw,
    **{f"composed -{path}": _without(path) for path in ABLATED},
}
VARIANT_JOBS = {
    "fast": FAST_JOB,
    **{name: COMPOSED_JOB for name in VARIANTS if name.startswith("composed")},
}


def slug(name: str) -> str:
    return name.replace(" & ", "-").replace(" -", "-minus-").replace("+", "p").replace("@", "-")


def run_jobs(
    data: Path, storage: Path, *, job: Path, budgets: list[int], variants: list[str],
    seeds: list[int], smoke: bool,
) -> dict[tuple[str, int], dict]:  # fmt: skip
    """Every run as a raw job, keyed (variant or `baseline@B`, seed)."""
    base = job_on_data(job, data, storage)
    if smoke:
        base["train"].update(epochs=2, log_every_steps=100)
        base["train"]["schedule"]["warmup_epochs"] = 0.2
        if "curriculum" in base:
            base["curriculum"]["budget_epochs"] = 1.5
    raws = {}
    for seed in seeds:
        for budget in budgets:
            raw = _without_curriculum(copy.deepcopy(base))
            raw["train"]["epochs"] = budget
            raws[(f"baseline@{budget}", seed)] = raw
        for name in variants:
            if name in VARIANT_JOBS:
                raw = job_on_data(VARIANT_JOBS[name], data, storage)
                if smoke:
                    raw["train"].update(epochs=2, log_every_steps=100)
                    raw["train"]["schedule"] = {"name": "cosine", "warmup_epochs": 0.2}
                    raw.get("tricks", {}).pop("whitening", None)
                    if "curriculum" in raw:
                        raw["curriculum"]["budget_epochs"] = 1.5
                raw = VARIANTS[name](raw)
            else:
                raw = VARIANTS[name](copy.deepcopy(base))
                if smoke and name == "progressive":
                    raw["curriculum"]["num_stages"] = 2  # one epoch per stage
            raws[(name, seed)] = raw
    for (name, seed), raw in raws.items():
        raw["train"]["seed"] = seed
        raw["run"]["name"] = f"tta-{slug(name)}-s{seed}"
    return raws


def finished(folder: Path) -> dict | None:
    """The summary of a run that trained every planned epoch; None otherwise."""
    path = folder / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary["epochs_completed"] >= summary["epochs_planned"] else None


def discard_unfinished(folder: Path) -> bool:
    """Removes the folder of a run that did not finish, so it runs again from the start: the
    wall time is the measurement, and a resumed run's covers only its last attempt."""
    if not folder.exists() or finished(folder) is not None:
        return False
    shutil.rmtree(folder)
    return True


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The baseline's frontier from its (wall_s, accuracy) means: sorted by wall time, each
    point kept only if it is more accurate than every cheaper one (a longer budget that ends
    lower is dominated)."""
    kept: list[tuple[float, float]] = []
    for wall_s, acc in sorted(points):
        if not kept or acc > kept[-1][1]:
            kept.append((wall_s, acc))
    return kept


def wall_at(front: list[tuple[float, float]], acc: float) -> tuple[float, str]:
    """The frontier's wall time at accuracy `acc` and how exact it is: `=` interpolated,
    `>=` above the frontier's best (its longest budget is a lower bound), `<=` below its
    cheapest point (an upper bound)."""
    if acc >= front[-1][1]:
        return front[-1][0], ("=" if acc == front[-1][1] else ">=")
    if acc <= front[0][1]:
        return front[0][0], ("=" if acc == front[0][1] else "<=")
    for (w0, a0), (w1, a1) in zip(front, front[1:], strict=False):
        if a0 <= acc <= a1:
            return w0 + (w1 - w0) * (acc - a0) / (a1 - a0), "="
    raise AssertionError("unreachable: acc lies within the frontier")


def analyse(runs: dict[tuple[str, int], dict], target: float) -> dict:
    """Means per group, the frontier, each variant's speed-up at equal accuracy."""
    groups: dict[str, list[dict]] = {}
    for (name, _seed), result in sorted(runs.items()):
        groups.setdefault(name, []).append(result)
    rows = {}
    for name, results in groups.items():
        acc, acc_sd = mean_sd([r["final_val_acc"] for r in results])
        wall, wall_sd = mean_sd([r["wall_time_s"] for r in results])
        hits = [r["to_target"]["wall_s"] for r in results]
        reached = [h for h in hits if h is not None]
        rows[name] = {
            "seeds": [r["seed"] for r in results],
            "acc_mean": acc,
            "acc_sd": acc_sd,
            "wall_s_mean": wall,
            "wall_s_sd": wall_sd,
            "to_target_s_mean": statistics.fmean(reached) if len(reached) == len(hits) else None,
            "to_target_reached": f"{len(reached)}/{len(hits)}",
        }
    base = {n: r for n, r in rows.items() if n.startswith("baseline@")}
    front = frontier([(r["wall_s_mean"], r["acc_mean"]) for r in base.values()])
    for name, row in rows.items():
        if name.startswith("baseline@") or not front:
            continue
        wall_s, bound = wall_at(front, row["acc_mean"])
        row["frontier_wall_s"] = wall_s
        row["speedup"] = wall_s / row["wall_s_mean"]
        row["speedup_bound"] = bound
        per_seed = [wall_at(front, r["final_val_acc"])[0] / r["wall_time_s"] for r in groups[name]]
        row["speedup_per_seed"] = per_seed
        row["speedup_sd"] = mean_sd(per_seed)[1]
    return {"target": target, "frontier": front, "rows": rows}


def format_table(analysis: dict) -> str:
    target = analysis["target"]
    lines = [
        f"| run | seeds | final acc (mean ± sd) | wall s (mean ± sd) | frontier wall s at that "
        f"acc | speed-up at equal acc (± sd over seeds) | s to {100 * target:.1f}% (reached) |",
        "|---|---|---|---|---|---|---|",
    ]

    def order(name: str) -> tuple:
        return (0, int(name.split("@")[1])) if name.startswith("baseline@") else (1, name)

    for name in sorted(analysis["rows"], key=order):
        r = analysis["rows"][name]
        if "speedup" in r:
            bound = "" if r["speedup_bound"] == "=" else r["speedup_bound"] + " "
            frontier_s = f"{bound}{r['frontier_wall_s']:.1f}"
            speedup = f"**{bound}{r['speedup']:.2f}x** ± {r['speedup_sd']:.2f}"
        else:
            frontier_s = speedup = "—"
        to_target = (
            f"{r['to_target_s_mean']:.1f}" if r["to_target_s_mean"] is not None else "not all"
        )
        lines.append(
            f"| {name} | {len(r['seeds'])} | {100 * r['acc_mean']:.2f}% ± "
            f"{100 * r['acc_sd']:.2f} | {r['wall_s_mean']:.1f} ± {r['wall_s_sd']:.1f} | "
            f"{frontier_s} | {speedup} | {to_target} ({r['to_target_reached']}) |"
        )
    return "\n".join(lines)


def plot(analysis: dict, path: Path) -> None:
    """Accuracy against wall time: the baseline frontier as a line, variants with error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = analysis["rows"]
    base = sorted(
        (r["wall_s_mean"], r["acc_mean"], r["wall_s_sd"], r["acc_sd"], n)
        for n, r in rows.items()
        if n.startswith("baseline@")
    )
    if base:
        ax.errorbar(
            [b[0] for b in base],
            [100 * b[1] for b in base],
            xerr=[b[2] for b in base],
            yerr=[100 * b[3] for b in base],
            fmt="o-",
            color="grey",
            label="baseline (epoch budgets)",
        )
        for wall, acc, *_, name in base:
            ax.annotate(name.split("@")[1] + " ep", (wall, 100 * acc), fontsize=7)
    for name, r in rows.items():
        if name.startswith("baseline@"):
            continue
        ax.errorbar(
            r["wall_s_mean"],
            100 * r["acc_mean"],
            xerr=r["wall_s_sd"],
            yerr=100 * r["acc_sd"],
            fmt="s",
            capsize=3,
            label=name,
        )
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("final validation accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, default=JOB, help="the base job (with a curriculum)")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="baseline epochs")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--target", type=float, default=0.94, help="accuracy for time-to-target")
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: temp)")
    parser.add_argument("--max-runs", type=int, default=None, help="run at most this many")
    parser.add_argument("--smoke", action="store_true", help="tiny runs on the fixture")
    parser.add_argument("--json", type=Path, default=None, help="also write the record here")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    data = dataset_dir(args.smoke)
    storage = (args.out or Path(tempfile.mkdtemp(prefix="rayaccel-tta-"))).resolve()
    raws = run_jobs(
        data, storage, job=args.job, budgets=budgets, variants=variants, seeds=seeds,
        smoke=args.smoke,
    )  # fmt: skip
    # Every job is checked before the first run starts (a variant that cannot work with the
    # base job, e.g. InfoBatch on device-resident data, is named now, not hours later).
    from rayaccel.config import ConfigError, parse_job

    try:
        for (name, seed), raw in raws.items():
            parse_job(raw, source=f"{args.job} ({name}, seed {seed})")
    except ConfigError as err:
        print("\n".join(err.problems), file=sys.stderr)
        return 2
    runs: dict[tuple[str, int], dict] = {}
    ran = 0
    for (name, seed), raw in raws.items():
        folder = storage / raw["run"]["name"]
        summary = finished(folder)
        if summary is None:
            if args.max_runs is not None and ran >= args.max_runs:
                continue
            if discard_unfinished(folder):
                print(f"[bench] discarded the unfinished run in {folder}", flush=True)
            if ran == 0:
                start_ray()
            print(f"[bench] running {name} seed {seed} -> {folder}", flush=True)
            summary = run(raw, source=str(args.job))
            ran += 1
        rows = metrics_rows(folder)
        runs[(name, seed)] = {
            "seed": seed,
            "final_val_acc": summary["final_val_acc"],
            "wall_time_s": summary["wall_time_s"],
            "epochs": summary["epochs_completed"],
            "compute_vs_baseline": summary.get("compute_vs_baseline_measured"),
            "to_target": time_to_target(rows, summary.get("started_unix_s"), args.target),
            "run_folder": str(folder),
        }
    missing = len(raws) - len(runs)
    analysis = analyse(runs, args.target)
    table = format_table(analysis)
    print(f"time to accuracy on {data} ({machine()}; ran {ran}, {missing} still missing)")
    print(table)
    plot(analysis, storage / "frontier.png")
    print(f"[bench] plot: {storage / 'frontier.png'}")
    if args.json:
        results = {
            "data": str(data),
            "smoke": args.smoke,
            "missing_runs": missing,
            "runs": {f"{name} s{seed}": r for (name, seed), r in runs.items()},
            "frontier": analysis["frontier"],
            "variants": analysis["rows"],
            "table": table,
        }
        write_record(args.json, results, script=__file__, argv=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
