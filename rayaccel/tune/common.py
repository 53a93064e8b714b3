"""What every search shares: the base job, trial jobs, the Tune experiment, results on disk.

Trials run in Tune's actors with their own working directory, so every path a trial job holds
is made absolute here, on the driver. A trial job is a plain dict (the resolved job, dumped)
plus dotted changes; the driver validates every job a search can produce before Tune starts,
so bad input is reported at the edge and trials only re-parse what is known to be valid.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from rayaccel.config import ConfigError, JobConfig, parse_job, read_yaml, resolve_data_facts
from rayaccel.core.records import EpochRecord
from rayaccel.core.storage import absolute_location
from rayaccel.data.cluster import connect_ray
from rayaccel.train.model_check import model_problem
from rayaccel.train.runner import free_placement_group, run_job
from rayaccel.tune.spec import TrialResources

# Tune trials reserve only a sliver of a CPU: their training runs in Ray Train's workers,
# which reserve `trial` resources of their own.
TRIAL_DRIVER_CPUS = 0.01


class SearchFailed(RuntimeError):
    """A search could not produce a result; the message says which trials failed and why."""


def set_field(raw: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of a raw job with one dotted field set (sections created as needed)."""
    raw = copy.deepcopy(raw)
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value
    return raw


def nested(dotted_values: dict[str, Any]) -> dict[str, Any]:
    """`{"train.optimizer.lr": 0.1}` -> `{"train": {"optimizer": {"lr": 0.1}}}`."""
    out: dict[str, Any] = {}
    for key, value in dotted_values.items():
        out = set_field(out, key, value)
    return out


def base_job_raw(
    job_path: str, job_overrides: dict[str, Any], trial: TrialResources, source: str
) -> dict[str, Any]:
    """The base job, overridden, given the trial's resources, resolved and with absolute paths.

    Returns it as a plain dict, the form trial jobs are built from.
    """
    raw = read_yaml(job_path)
    for key, value in job_overrides.items():
        raw = set_field(raw, key, value)
    raw["scaling"] = {
        "num_workers": trial.num_workers,
        "use_gpu": trial.gpus_per_worker > 0,
        "resources_per_worker": {"CPU": trial.cpus_per_worker}
        | ({"GPU": trial.gpus_per_worker} if trial.gpus_per_worker > 0 else {}),
        "preprocess_cpus": trial.preprocess_cpus,
    }
    resolved = resolve_data_facts(parse_job(raw, source=job_path), source=job_path)
    for line in resolved.contradictions:
        print(f"[rayaccel] warning: {job_path}: {line}", flush=True)
    job = resolved.job
    problem = model_problem(job, job_path, train_images=resolved.train_images)
    if problem is not None:
        raise ConfigError([problem])
    if job.data.val is None:
        raise ConfigError(
            [
                f"{source}: job: {job_path} has no data.val; searches score trials by "
                "validation accuracy"
            ]
        )
    data = job.data.model_copy(
        update={
            "train": absolute_location(job.data.train),
            "val": absolute_location(job.data.val) if job.data.val is not None else None,
        }
    )
    job = job.model_copy(update={"data": data})
    return job.model_dump(mode="json")


def trial_job(raw: dict[str, Any], source: str) -> JobConfig:
    """Validates a trial job built from the base job (on the driver, before Tune starts),
    its model included (a field search may vary `model.kwargs`)."""
    job = parse_job(raw, source=source)
    problem = model_problem(job, source, train_images=None)
    if problem is not None:
        raise ConfigError([problem])
    return job


def search_folder(storage_path: str, name: str) -> Path:
    return Path(os.path.abspath(storage_path)) / name


def run_tuner(
    trainable,
    *,
    param_space: dict,
    experiment: str,
    folder: Path,
    max_concurrent_trials: int,
    metric: str,
    scheduler=None,
    num_samples: int = 1,
    search_alg=None,
    trial_cpus: float = 0.0,
):
    """Runs one Tune experiment of function trainables that each launch Ray Train runs.

    Returns the `ResultGrid`. Tune needs the Ray dashboard for trials that launch Train (it
    frees their placement groups), which `ray.init()` starts where `ray[default]` is installed.
    """
    import ray

    connect_ray()
    problem = concurrency_problem(
        ray.cluster_resources().get("CPU", 0), max_concurrent_trials, trial_cpus
    )
    if problem:
        print(f"[rayaccel] warning: {problem}", flush=True)
    before = set(ray.util.placement_group_table())
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": TRIAL_DRIVER_CPUS}),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="max",
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=experiment,
            storage_path=str(folder / "tune"),
            verbose=1,
            callbacks=[_FreeStoppedTrials()],
        ),
    )
    try:
        return tuner.fit()
    finally:
        _remove_leaked_placement_groups(before)


class _FreeStoppedTrials(tune.Callback):
    """Frees the worker group of a trial Tune stopped (ASHA) as soon as it ends.

    A stopped trial is killed with its Ray Train run, so the run cannot free its placement
    group itself; its last result names it (the loop reports `placement_group_id`).
    """

    def on_trial_complete(self, iteration, trials, trial, **info):
        free_placement_group((trial.last_result or {}).get("placement_group_id"))

    def on_trial_error(self, iteration, trials, trial, **info):
        free_placement_group((trial.last_result or {}).get("placement_group_id"))


def concurrency_problem(cluster_cpus: float, concurrent_trials: int, trial_cpus: float) -> str:
    """Why concurrent trials could stall on this cluster, or "" when they fit.

    Ray Data lists a dataset's files in a task that reserves one whole CPU, outside the
    trial's reservation; if the trials' workers leave less than that free, every trial
    waits for it forever.
    """
    reserved = concurrent_trials * (trial_cpus + TRIAL_DRIVER_CPUS)
    if cluster_cpus - reserved >= 1:
        return ""
    return (
        f"{concurrent_trials} concurrent trials reserve {reserved:g} of the cluster's "
        f"{cluster_cpus:g} CPUs, leaving less than the 1 CPU Ray Data's file listing needs; "
        "lower max_concurrent_trials or trial.cpus_per_worker unless the cluster autoscales"
    )


def leaked_placement_groups(before: set[str], table: dict[str, dict], job_hex: str) -> list[str]:
    """Placement groups this driver's job created during a search that are still held.

    A placement group id ends with the id of the job that created it (Ray's id layout).
    """
    return [
        pg_id
        for pg_id, info in table.items()
        if pg_id not in before and info["state"] == "CREATED" and pg_id.endswith(job_hex)
    ]


def _remove_leaked_placement_groups(before: set[str]) -> None:
    """Frees what trials stopped by Tune (ASHA) left behind.

    Ray Train's own cleaner frees a killed run's worker placement group through the state
    API, which fails when it cannot tell which Ray instance to ask (several on one machine);
    the group would then hold its CPUs until the driver exits and later trials would wait
    forever. Once `fit()` returned no trial of this search is running, so whatever placement
    group this job created meanwhile and still holds is a leftover.
    """
    import ray

    job_hex = ray.get_runtime_context().get_job_id()
    for pg_id in leaked_placement_groups(before, ray.util.placement_group_table(), job_hex):
        free_placement_group(pg_id)


def trial_errors(results) -> list[str]:
    """One line per failed trial: its id and the last line of its error."""
    lines = []
    for result in results:
        if result.error is not None:
            text = str(result.error).strip().splitlines()
            trial_id = (result.metrics or {}).get("trial_id", result.path.rsplit("/", 1)[-1])
            lines.append(f"trial {trial_id}: {text[-1] if text else repr(result.error)}")
    return lines


def write_yaml(path: Path, data: dict, header: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    path.write_text(comment + yaml.safe_dump(data, sort_keys=False))


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Fixed-width table; `columns` holds (key, header, format spec) per column."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append(
            ["-" if row.get(key) is None else format(row[key], spec) for key, _, spec in columns]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        " ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))
        for line in cells
    )


class Stopwatch:
    """Wall time of a search and its parts, for the report."""

    def __init__(self) -> None:
        self.started_s = time.time()

    def elapsed_s(self) -> float:
        return time.time() - self.started_s


def job_trial(config: dict) -> None:
    """A Tune trial that trains the base job with dotted changes and reports every epoch.

    `config["base"]` is the resolved base job, `config["changes"]` maps dotted fields to the
    values Tune chose. Ray Train's `TuneReportCallback` turns each epoch's report into a Tune
    result, so ASHA can stop the trial between epochs.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    raw = config["base"]
    for key, value in config["changes"].items():
        raw = set_field(raw, key, value)
    raw = set_field(raw, "run.name", f"trial-{tune.get_context().get_trial_id()}")
    run_job(parse_job(raw), callbacks=(TuneReportCallback(),))


def asha(max_epochs: int, grace_epochs: int):
    """ASHA on epochs (one Tune result per epoch); halves the field at each rung."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=max_epochs,
        grace_period=grace_epochs,
        reduction_factor=2,
    )


def epoch_results(grid, keys: list[str]) -> list[dict]:
    """Per finished-or-stopped trial: the chosen values, epochs trained, last val accuracy."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        if "epoch" not in metrics:
            continue
        # Tune's result is the trial's last epoch report plus Tune's own keys (`extra`).
        last = EpochRecord.from_row(metrics)
        if not last.evaluated:
            continue
        changes = result.config["changes"]
        rows.append(
            {
                **{key: changes[key] for key in keys},
                "epochs": last.extra.get("training_iteration", 0),
                "val_acc": last.val_acc,
                "trial_s": last.extra.get("time_total_s"),
            }
        )
    return rows


def rank_key(row: dict) -> tuple:
    """Trials ASHA stopped early rank below every trial that trained longer."""
    return (row["epochs"], row["val_acc"])
