"""Search over any job fields (`choice`, `uniform`, `loguniform`) on Ray Tune with ASHA.

`num_samples` trials each draw every field from its domain (seeded), train the base job with
those values and report validation accuracy every epoch; ASHA stops the worse half at each
rung. The best trial is the one that trained longest with the highest final accuracy; its
values are written as a partial job (`best.yaml`) and printed as command-line overrides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayaccel.config import ConfigError
from rayaccel.data.metadata import read_meta
from rayaccel.plan import PlanError, make_plan
from rayaccel.tune.common import (
    SearchFailed,
    Stopwatch,
    asha,
    base_job_raw,
    epoch_results,
    format_table,
    job_trial,
    nested,
    rank_key,
    run_tuner,
    search_folder,
    set_field,
    trial_errors,
    trial_job,
    write_yaml,
)
from rayaccel.tune.spec import Choice, FieldSearch, LogUniform, Uniform


def domain_extremes(domain: Choice | Uniform | LogUniform) -> list[Any]:
    """The values that bound a domain: every choice, or both ends of a range."""
    if isinstance(domain, Choice):
        return list(domain.choice)
    return list(domain.uniform if isinstance(domain, Uniform) else domain.loguniform)


def tune_domain(domain: Choice | Uniform | LogUniform):
    from ray import tune

    if isinstance(domain, Choice):
        return tune.choice(domain.choice)
    if isinstance(domain, Uniform):
        return tune.uniform(*domain.uniform)
    return tune.loguniform(*domain.loguniform)


def best_row(rows: list[dict]) -> dict:
    if not rows:
        raise ValueError("no trial reported a result")
    return max(rows, key=rank_key)


def overrides_text(values: dict[str, Any]) -> str:
    """`key=value` overrides for `rayaccel run` (values as YAML flow scalars)."""
    return " ".join(f"{key}={json.dumps(value)}" for key, value in values.items())


def run_field_search(search: FieldSearch, source: str, output: str | None) -> dict:
    """Runs the search; writes `results.yaml` and `best.yaml`; returns a summary."""
    from ray.tune.search import BasicVariantGenerator

    watch = Stopwatch()
    folder = search_folder(search.storage_path, search.name)
    base = base_job_raw(search.job, search.job_overrides, search.trial, source)
    if search.epochs is not None:
        base = set_field(base, "train.epochs", search.epochs)
    base = set_field(base, "train.eval_every_epochs", 1)
    base = set_field(base, "run.storage_path", str(folder / "trials"))
    epochs = base["train"]["epochs"]
    train_samples = read_meta(base["data"]["train"]).count
    # Every bound of every field must make a valid job (the other fields at their base value).
    for key, domain in search.space.items():
        for value in domain_extremes(domain):
            what = f"space.{key} = {value!r}"
            try:
                job = trial_job(set_field(base, key, value), f"{source} ({what})")
                make_plan(job, train_samples=train_samples)
            except PlanError as err:
                raise ConfigError([f"{source}: {what}: {err}"]) from None

    results = run_tuner(
        job_trial,
        param_space={
            "base": base,
            "changes": {key: tune_domain(domain) for key, domain in search.space.items()},
        },
        experiment=search.name,
        folder=folder,
        max_concurrent_trials=search.max_concurrent_trials,
        trial_cpus=search.trial.num_workers * search.trial.cpus_per_worker,
        metric="val_acc",
        scheduler=asha(epochs, min(search.grace_epochs, epochs)),
        num_samples=search.num_samples,
        search_alg=BasicVariantGenerator(random_state=search.seed),
    )
    keys = list(search.space)
    rows = epoch_results(results, keys)
    try:
        best = best_row(rows)
    except ValueError:
        raise SearchFailed("no trial finished: " + "; ".join(trial_errors(results))) from None
    values = {key: best[key] for key in keys}
    summary = {
        "kind": "fields",
        "best": values,
        "best_val_acc": best["val_acc"],
        "search_cost_epochs": sum(r["epochs"] for r in rows),
        "search_wall_time_s": watch.elapsed_s(),
        "trials": sorted(rows, key=rank_key, reverse=True),
        "failed_trials": trial_errors(results),
    }
    best_path = Path(output) if output else folder / "best.yaml"
    write_yaml(
        best_path,
        nested(values),
        header=(
            f"Best of `rayaccel tune {source}` for {search.job} (val_acc "
            f"{best['val_acc']:.4f} after {best['epochs']} epochs):\n"
            f"  rayaccel run {search.job} {overrides_text(values)}"
        ),
    )
    write_yaml(folder / "results.yaml", json.loads(json.dumps(summary)))
    summary["best_file"] = str(best_path)
    summary["results_file"] = str(folder / "results.yaml")
    summary["overrides"] = overrides_text(values)
    return summary


def format_field_results(summary: dict) -> str:
    keys = list(summary["best"])
    columns = [(key, key, "" if not _numeric(summary, key) else ".4g") for key in keys]
    table = format_table(
        summary["trials"],
        [
            *columns,
            ("epochs", "epochs", "d"),
            ("val_acc", "val_acc", ".4f"),
            ("trial_s", "trial_s", ".0f"),
        ],
    )
    failed = "".join(f"\nfailed: {line}" for line in summary["failed_trials"])
    return (
        f"{table}{failed}\n"
        f"best: {summary['overrides']} (val_acc {summary['best_val_acc']:.4f})\n"
        f"search cost: {summary['search_cost_epochs']} epochs of the job; wall time "
        f"{summary['search_wall_time_s']:.0f} s\n"
        f"written: {summary['best_file']} and {summary['results_file']}"
    )


def _numeric(summary: dict, key: str) -> bool:
    return all(
        isinstance(r[key], int | float) and not isinstance(r[key], bool) for r in summary["trials"]
    )
