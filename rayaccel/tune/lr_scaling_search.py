"""Large-batch LR-scaling search on Ray Tune with ASHA.

Every (batch size, LR multiplier) pair is a short full-resolution training of the base job
(no curriculum). The multipliers of one batch size run as one Tune experiment of parallel
trials, with ASHA stopping the worse half at each rung of epochs (across batch sizes ASHA
would compare unequal numbers of steps); batch sizes run one after the other. A
trial's LR is `multiplier * lr * sqrt(B / base_batch)`, so the grid brackets the square-root
rule. Per batch size the best LR is the trial that trained longest (ASHA kept it) with the
highest final validation accuracy. The rule `lr = lr_base * (B / base_batch)^alpha` is fitted
to those by least squares on log-log (`rayaccel.optim.lr_scaling.fit_power_law`) and capped
at the largest best LR measured: the fit is not trusted beyond the batches it saw.

It is written in the form Early Large Batch reads (`curriculum.lr_alpha`, `curriculum.lr_max`;
`lr_B = min(lr * (B / batch)^lr_alpha, lr_max)`), for `rayaccel run JOB --curriculum FILE`.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

from rayaccel.config import ConfigError
from rayaccel.data.metadata import read_meta
from rayaccel.optim.lr_scaling import fit_power_law
from rayaccel.plan import PlanError, make_plan
from rayaccel.tune.common import (
    SearchFailed,
    Stopwatch,
    asha,
    base_job_raw,
    epoch_results,
    format_table,
    job_trial,
    rank_key,
    run_tuner,
    search_folder,
    set_field,
    trial_errors,
    trial_job,
    write_yaml,
)
from rayaccel.tune.spec import LrScalingSearch

# The curriculum's lr_alpha range (config.py); a fit outside it is clipped in the ELB form.
ALPHA_RANGE = (0.0, 2.0)
BATCH, LR = "train.global_batch_size", "train.optimizer.lr"


# ---------------------------------------------------------------- pure decisions
def trial_grid(
    batch_sizes: list[int], multipliers: list[float], *, lr: float, base_batch: int
) -> list[dict]:
    """The trials' dotted changes: every batch size with every multiple of its sqrt-rule LR."""
    return [
        {BATCH: batch, LR: round(m * lr * math.sqrt(batch / base_batch), 6)}
        for batch in batch_sizes
        for m in multipliers
    ]


def best_lr_per_batch(rows: list[dict]) -> dict[int, float]:
    """Per batch size, the LR of the trial ranked best by `rank_key`."""
    best: dict[int, dict] = {}
    for row in rows:
        batch = row[BATCH]
        if batch not in best or rank_key(row) > rank_key(best[batch]):
            best[batch] = row
    return {batch: best[batch][LR] for batch in sorted(best)}


def fit_rule(best_lrs: dict[int, float], base_batch: int) -> dict:
    """`lr_base`, `alpha` and the cap `lr_max` of the fitted rule."""
    batches = list(best_lrs)
    lr_base, alpha = fit_power_law(batches, [best_lrs[b] for b in batches], base_batch)
    return {
        "base_batch": base_batch,
        "lr_base": lr_base,
        "alpha": alpha,
        # Never below lr_base: Early Large Batch needs lr_max >= its full-size LR.
        "lr_max": max(max(best_lrs.values()), lr_base),
    }


def _clipped_alpha(rule: dict) -> float:
    low, high = ALPHA_RANGE
    return round(min(max(rule["alpha"], low), high), 4)


def clipping_note(rule: dict) -> str:
    """A sentence for the header and the printout when the written exponent is not the fit's.

    With few, noisy trials the best LR can fall as the batch grows (a negative fit); the files
    then carry the clipped exponent, and saying so keeps the header from contradicting them.
    """
    clipped = _clipped_alpha(rule)
    if clipped == round(rule["alpha"], 4):
        return ""
    low, high = ALPHA_RANGE
    return (
        f"The fitted exponent {rule['alpha']:.3f} lies outside [{low:g}, {high:g}], the range "
        f"Early Large Batch and train.lr_scaling accept; the files use {clipped:g}. "
        "Trials this noisy rarely rank LRs reliably: add multipliers or epochs and search again."
    )


def job_overrides(rule: dict) -> list[str]:
    """The fitted rule as `rayaccel run` overrides of the job's own LR scaling
    (`train.lr_scaling`, rule `fitted`), for jobs with or without a curriculum."""
    return [
        f"train.optimizer.lr={rule['lr_base']:.6g}",
        "train.lr_scaling={rule: fitted, "
        f"base_batch: {rule['base_batch']}, alpha: {_clipped_alpha(rule)}, "
        f"lr_max: {rule['lr_max']:.6g}}}",
    ]


def elb_section(rule: dict) -> dict:
    """The fitted rule as Early Large Batch settings (curriculum keys)."""
    return {
        "lr_alpha": _clipped_alpha(rule),
        "lr_max": round(rule["lr_max"], 6),
    }


# ---------------------------------------------------------------- the search
def run_lr_scaling_search(search: LrScalingSearch, source: str, output: str | None) -> dict:
    """Runs the grid with ASHA; writes `results.yaml` and the LR-rule file; returns a summary."""
    watch = Stopwatch()
    folder = search_folder(search.storage_path, search.name)
    base = base_job_raw(search.job, search.job_overrides, search.trial, source)
    base_epochs = base["train"]["epochs"]
    base = set_field(base, "curriculum", None)
    base = set_field(base, "train.epochs", search.epochs)
    base = set_field(base, "train.eval_every_epochs", 1)
    schedule = dict(base["train"]["schedule"])
    if schedule.get("name") == "cosine":
        # Keep the warmup's share of the training.
        schedule["warmup_epochs"] = schedule["warmup_epochs"] * search.epochs / base_epochs
        base = set_field(base, "train.schedule", schedule)
    base = set_field(base, "run.storage_path", str(folder / "trials"))
    base_batch = search.base_batch or base["train"]["global_batch_size"]
    lr = base["train"]["optimizer"]["lr"]
    grid = trial_grid(search.batch_sizes, search.lr_multipliers, lr=lr, base_batch=base_batch)
    train_samples = read_meta(base["data"]["train"]).count
    for changes in grid:
        raw = base
        for key, value in changes.items():
            raw = set_field(raw, key, value)
        what = f"batch {changes[BATCH]}, lr {changes[LR]}"
        try:
            make_plan(trial_job(raw, f"{source} ({what})"), train_samples=train_samples)
        except PlanError as err:
            raise ConfigError([f"{source}: batch_sizes: {what}: {err}"]) from None

    from ray import tune

    # One experiment per batch size: ASHA compares trials at equal epochs, and an epoch of a
    # smaller batch takes more steps, so across batch sizes it would stop the larger ones.
    rows, errors = [], []
    for batch in search.batch_sizes:
        results = run_tuner(
            job_trial,
            param_space={
                "base": base,
                "changes": tune.grid_search([c for c in grid if c[BATCH] == batch]),
            },
            experiment=f"{search.name}-b{batch}",
            folder=folder,
            max_concurrent_trials=search.max_concurrent_trials,
            trial_cpus=search.trial.num_workers * search.trial.cpus_per_worker,
            metric="val_acc",
            scheduler=asha(search.epochs, search.grace_epochs),
        )
        rows += epoch_results(results, [BATCH, LR])
        errors += trial_errors(results)
    best = best_lr_per_batch(rows)
    missing = [b for b in search.batch_sizes if b not in best]
    if missing:
        raise SearchFailed(
            f"no trial with batch sizes {missing} reported a result: " + "; ".join(errors)
        )
    rule = fit_rule(best, base_batch)
    elb = elb_section(rule)
    summary = {
        "kind": "lr_scaling",
        "best_lr_per_batch": best,
        "rule": rule,
        "early_large_batch": elb,
        "job_overrides": job_overrides(rule),
        # An epoch costs the same at every batch size (same images, same pixels).
        "search_cost_epochs": sum(r["epochs"] for r in rows),
        "search_wall_time_s": watch.elapsed_s(),
        "trials": sorted(rows, key=lambda r: (r[BATCH], r[LR])),
        "failed_trials": errors,
    }
    rule_path = Path(output) if output else folder / "lr_rule.yaml"
    note = textwrap.fill(clipping_note(rule), width=95)
    write_yaml(
        rule_path,
        {"curriculum": elb},
        header=(
            f"Fitted by `rayaccel tune {source}` for {search.job}: lr = {rule['lr_base']:.4g} "
            f"* (B / {base_batch})^{rule['alpha']:.3f}, capped at {rule['lr_max']:.4g}.\n"
            + (note + "\n" if note else "")
            + "Early Large Batch form (curriculum.lr_alpha, curriculum.lr_max):\n"
            f"  rayaccel run JOB --curriculum {rule_path} train.optimizer.lr={rule['lr_base']:.4g}"
            f" train.global_batch_size={base_batch}\n"
            "Or as the job's own LR scaling (any global batch, with or without a curriculum):\n"
            "  rayaccel run JOB " + " ".join(f"'{o}'" for o in summary["job_overrides"])
        ),
    )
    write_yaml(folder / "results.yaml", json.loads(json.dumps(summary)))
    summary["rule_file"] = str(rule_path)
    summary["results_file"] = str(folder / "results.yaml")
    return summary


def format_lr_results(summary: dict) -> str:
    best = summary["best_lr_per_batch"]
    rows = [
        {**r, "batch": r[BATCH], "lr": r[LR], "mark": "<- best" if best[r[BATCH]] == r[LR] else ""}
        for r in summary["trials"]
    ]
    table = format_table(
        rows,
        [
            ("batch", "batch", "d"),
            ("lr", "lr", ".4g"),
            ("epochs", "epochs", "d"),
            ("val_acc", "val_acc", ".4f"),
            ("trial_s", "trial_s", ".0f"),
            ("mark", "", "s"),
        ],
    )
    rule = summary["rule"]
    note = clipping_note(rule)
    failed = "".join(f"\nfailed: {line}" for line in summary["failed_trials"])
    return (
        f"{table}{failed}\n"
        f"fitted: lr = {rule['lr_base']:.4g} * (B / {rule['base_batch']})^{rule['alpha']:.3f}, "
        f"cap {rule['lr_max']:.4g}; Early Large Batch: {summary['early_large_batch']}\n"
        + (note + "\n" if note else "")
        + "as job overrides: "
        + " ".join(f"'{o}'" for o in summary["job_overrides"])
        + "\n"
        f"search cost: {summary['search_cost_epochs']:.2f} epochs of the job; wall time "
        f"{summary['search_wall_time_s']:.0f} s\n"
        f"written: {summary['rule_file']} and {summary['results_file']}"
    )
