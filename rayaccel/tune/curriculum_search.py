"""Curriculum search, EfficientTrain++ Algorithm 2, on Ray Tune.

The curriculum has `num_stages` stages of equal compute (the job's `curriculum.budget_epochs`,
or `beta * train.epochs`, split evenly). Stage resolutions are decided greedily, first to last.
For stage k every candidate resolution is one Tune trial, all in parallel, and each trial:

1. trains stage k of the curriculum `[decided..., candidate, full, ..., full]` as a Ray Train
   run that starts from the best checkpoint of stage k-1 (the prefix is never retrained; the
   stages after k are placeholders at full resolution, so the LR schedule, which follows the
   fraction of compute spent, is the one a whole curriculum of that shape would have);
2. fine-tunes that result at full resolution for `proxy_epochs` epochs (cosine from
   `proxy_lr` to 0, the model and optimizer state carried over) and reports the final
   validation accuracy as the candidate's score.

The best-scoring candidate (the lower resolution on a tie, as it is cheaper) is kept, and its
stage-k checkpoint is where every stage-(k+1) trial starts. A candidate whose curriculum would
cost more than `beta * (1 + cost_tolerance)` of the baseline once epochs are rounded to whole
numbers is not tried. The search's own cost is the compute of all its trainings, in
equivalent full-resolution epochs of the base job.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rayaccel.config import ConfigError, parse_job
from rayaccel.core.compute import pixel_compute
from rayaccel.core.storage import resolve_path
from rayaccel.data.metadata import read_meta
from rayaccel.methods.etpp.config import CustomCurriculum
from rayaccel.methods.etpp.curriculum import etpp_magnitudes, etpp_replay_factors
from rayaccel.plan import Plan, PlanError, make_plan
from rayaccel.train.checkpoint import STATE_FILE, TrainState
from rayaccel.train.runner import run_job
from rayaccel.tune.common import (
    SearchFailed,
    Stopwatch,
    base_job_raw,
    format_table,
    run_tuner,
    search_folder,
    set_field,
    trial_errors,
    trial_job,
    write_yaml,
)
from rayaccel.tune.spec import CurriculumSearch


# ---------------------------------------------------------------- pure decisions
def trial_resolutions(
    decided_px: list[int], candidate_px: int, num_stages: int, full_px: int
) -> list[int]:
    """The curriculum a stage trial trains under: decided prefix, candidate, then full size."""
    rest = num_stages - len(decided_px) - 1
    if rest < 0:
        raise ValueError(f"all {num_stages} stages are decided already: {decided_px}")
    return [*decided_px, candidate_px, *[full_px] * rest]


def curriculum_section(
    base: dict[str, Any],
    resolutions_px: list[int],
    magnitudes: list[float],
    *,
    full_px: int,
    budget_epochs: float,
) -> dict[str, Any]:
    """A custom curriculum mapping with the base curriculum's settings and the given stages.

    Replay factors follow the ET++ rule for each resolution (more replay at smaller sizes).
    """
    shared = {
        key: value
        for key, value in base.items()
        if key in CustomCurriculum.model_fields and key not in ("preset", "stages")
    }
    replay = etpp_replay_factors(resolutions_px, full_px)
    return {
        "preset": "custom",
        **shared,
        "budget_epochs": budget_epochs,
        "stages": [
            {"resolution_px": px, "randaug_magnitude": magnitude, "replay_factor": factor}
            for px, magnitude, factor in zip(resolutions_px, magnitudes, replay, strict=True)
        ],
    }


def stage_magnitudes(base: dict[str, Any], num_stages: int) -> list[float]:
    """RandAugment magnitude per stage: the base custom curriculum's when it has as many
    stages, else the ET++ linear ramp from 0 up to the base's strongest stage (9 for et++)."""
    stages = base.get("stages") or []
    magnitudes = [float(s.get("randaug_magnitude", 0.0)) for s in stages]
    if base.get("preset") == "custom" and len(stages) == num_stages:
        return magnitudes
    return etpp_magnitudes(num_stages, max(magnitudes) if magnitudes else 9.0)


def stage_cost_epochs(plan: Plan, stage_index: int) -> float:
    """Compute of one stage in equivalent full-resolution epochs of the baseline job."""
    stage = plan.stages[stage_index]
    per_epoch = pixel_compute(plan.baseline_images_per_epoch, plan.full_resolution_px)
    return stage.compute_px_images / per_epoch


def within_budget(cost_relative: float, beta: float, tolerance: float) -> bool:
    """The cost constraint of Algorithm 2, with room for rounding to whole epochs."""
    return cost_relative <= beta * (1 + tolerance) + 1e-9


@dataclass(frozen=True)
class CandidateResult:
    stage: int
    resolution_px: int
    score: float | None
    stage_val_acc: float | None
    checkpoint: str | None
    cost_epochs: float
    wall_time_s: float | None = None
    chosen: bool = False


def select_best(results: list[CandidateResult]) -> CandidateResult:
    """The highest proxy score; the lower (cheaper) resolution wins a tie."""
    scored = [r for r in results if r.score is not None and r.checkpoint is not None]
    if not scored:
        raise ValueError("no candidate finished with a score")
    return max(scored, key=lambda r: (r.score, -r.resolution_px))


# ---------------------------------------------------------------- checkpoints
def restart_checkpoint(source: str, destination: str) -> str:
    """A copy of a checkpoint positioned at the start of a new plan (for the fine-tune).

    Keeps the model, optimizer, grad scaler and RNG states; resets the plan position and drops
    method state (the fine-tune has no replay buffer). Paths may be local or URIs.
    """
    import torch

    fs, root = resolve_path(source)
    with fs.open_input_stream(f"{root}/{STATE_FILE}") as stream:
        payload = torch.load(io.BytesIO(stream.read()), map_location="cpu", weights_only=False)
    payload["train_state"] = TrainState().__dict__
    payload["methods"] = {}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    fs, root = resolve_path(destination)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{STATE_FILE}") as stream:
        stream.write(buffer.getvalue())
    return destination


# ---------------------------------------------------------------- the Tune trial
def stage_trial(config: dict) -> None:
    """One candidate of one stage: train the stage, fine-tune at full size, report the score."""
    from ray import tune

    spec = config["trials"][str(config["resolution_px"])]
    watch = Stopwatch()
    stage = run_job(
        parse_job(spec["stage_job"]),
        start_checkpoint=spec["start_checkpoint"],
        stop_epoch=spec["stop_epoch"],
    )
    start = restart_checkpoint(stage["checkpoint"], spec["proxy_start"])
    proxy = run_job(parse_job(spec["proxy_job"]), start_checkpoint=start)
    tune.report(
        {
            "score": proxy["final_val_acc"],
            "stage_val_acc": stage["final_val_acc"],
            "stage_checkpoint": stage["checkpoint"],
            "search_wall_time_s": watch.elapsed_s(),
        }
    )


# ---------------------------------------------------------------- the search
def run_curriculum_search(search: CurriculumSearch, source: str, output: str | None) -> dict:
    """Runs the whole search; writes `results.yaml` and the curriculum file, returns a summary."""
    watch = Stopwatch()
    folder = search_folder(search.storage_path, search.name)
    base = base_job_raw(search.job, search.job_overrides, search.trial, source)
    base_curriculum = base.get("curriculum")
    if base_curriculum is None:
        raise ConfigError(
            [
                f"{source}: job: {search.job} has no curriculum section; a curriculum search "
                "takes mode, budget_epochs, max_global_batch, lr_max and replay from it"
            ]
        )
    full_px = base["data"]["image_size_px"]
    too_large = [px for px in search.candidates_px if px > full_px]
    if too_large:
        raise ConfigError(
            [f"{source}: candidates_px: must be <= data.image_size_px={full_px}, got {too_large}"]
        )
    epochs = base["train"]["epochs"]
    beta = search.beta or base_curriculum["budget_epochs"] / epochs
    budget_epochs = round(beta * epochs, 6)
    magnitudes = stage_magnitudes(base_curriculum, search.num_stages)
    train_samples = read_meta(base["data"]["train"]).count
    proxy_lr = search.proxy_lr or base["train"]["optimizer"]["lr"] / 10
    trials_dir = folder / "trials"

    decided: list[int] = []
    start_checkpoint: str | None = None
    history: list[CandidateResult] = []
    stage_walls: list[float] = []
    for k in range(search.num_stages):
        specs, costs, skipped = {}, {}, []
        for candidate in search.candidates_px:
            resolutions = trial_resolutions(decided, candidate, search.num_stages, full_px)
            section = curriculum_section(
                base_curriculum,
                resolutions,
                magnitudes,
                full_px=full_px,
                budget_epochs=budget_epochs,
            )
            name = f"s{k}-{candidate}px"
            stage_raw = set_field(base, "curriculum", section)
            stage_raw = set_field(stage_raw, "run.name", name)
            stage_raw = set_field(stage_raw, "run.storage_path", str(trials_dir))
            plan = _plan(stage_raw, train_samples, source, f"stage {k} at {candidate} px")
            if not within_budget(plan.compute_relative_to_baseline(), beta, search.cost_tolerance):
                skipped.append(candidate)
                continue
            proxy_raw = _proxy_job(base, name, trials_dir, search.proxy_epochs, proxy_lr)
            _plan(proxy_raw, train_samples, source, "the proxy fine-tune")
            specs[str(candidate)] = {
                "stage_job": stage_raw,
                "stop_epoch": plan.stages[k].end_epoch,
                "start_checkpoint": start_checkpoint,
                "proxy_job": proxy_raw,
                "proxy_start": str(trials_dir / f"{name}-proxy-start"),
            }
            costs[candidate] = stage_cost_epochs(plan, k) + search.proxy_epochs
        if not specs:
            raise SearchFailed(
                f"stage {k}: every candidate {skipped} costs more than beta={beta:.3f} x "
                f"(1 + cost_tolerance={search.cost_tolerance}) of the baseline; raise beta or "
                "cost_tolerance"
            )
        stage_watch = Stopwatch()
        grid = run_tuner(
            stage_trial,
            param_space={
                "resolution_px": _grid([int(c) for c in specs]),
                "trials": specs,
            },
            experiment=f"{search.name}-stage{k}",
            folder=folder,
            max_concurrent_trials=search.max_concurrent_trials,
            trial_cpus=search.trial.num_workers * search.trial.cpus_per_worker,
            metric="score",
        )
        stage_walls.append(stage_watch.elapsed_s())
        results = []
        for result in grid:
            if result.error is not None or not result.metrics:
                continue
            px = result.config["resolution_px"]
            results.append(
                CandidateResult(
                    stage=k,
                    resolution_px=px,
                    score=result.metrics.get("score"),
                    stage_val_acc=result.metrics.get("stage_val_acc"),
                    checkpoint=result.metrics.get("stage_checkpoint"),
                    cost_epochs=costs[px],
                    wall_time_s=result.metrics.get("search_wall_time_s"),
                )
            )
        try:
            best = select_best(results)
        except ValueError:
            raise SearchFailed(
                f"stage {k}: no candidate finished: " + "; ".join(trial_errors(grid))
            ) from None
        history.extend(
            CandidateResult(**{**asdict(r), "chosen": r == best})
            for r in sorted(results, key=lambda r: r.resolution_px)
        )
        # Failed trials spent compute too, but how much is unknown; only finished ones count.
        decided.append(best.resolution_px)
        start_checkpoint = best.checkpoint
        print(
            f"[rayaccel] stage {k}: chose {best.resolution_px} px (proxy val_acc "
            f"{best.score:.4f}) from {sorted(r.resolution_px for r in results)}",
            flush=True,
        )

    found = curriculum_section(
        base_curriculum, decided, magnitudes, full_px=full_px, budget_epochs=budget_epochs
    )
    final_plan = _plan(set_field(base, "curriculum", found), train_samples, source, "the result")
    cost_epochs = sum(r.cost_epochs for r in history)
    summary = {
        "kind": "curriculum",
        "curriculum_px": decided,
        "beta": beta,
        "curriculum_compute_vs_baseline": final_plan.compute_relative_to_baseline(),
        "search_cost_epochs": cost_epochs,
        "search_cost_vs_curriculum_trainings": cost_epochs / budget_epochs,
        "search_wall_time_s": watch.elapsed_s(),
        "stage_wall_times_s": stage_walls,
        "trials": [asdict(r) for r in history],
    }
    curriculum_path = Path(output) if output else folder / "curriculum.yaml"
    write_yaml(
        curriculum_path,
        {"curriculum": found},
        header=(
            f"Found by `rayaccel tune {source}` (EfficientTrain++ Algorithm 2) for {search.job}:\n"
            f"stages {decided} px, {final_plan.compute_relative_to_baseline():.3f}x the "
            f"baseline's compute (beta {beta:.3f}); search cost {cost_epochs:.2f} equivalent "
            f"epochs, {summary['search_wall_time_s']:.0f} s.\n"
            f"  rayaccel run {search.job} --curriculum {curriculum_path}"
        ),
    )
    write_yaml(folder / "results.yaml", json.loads(json.dumps(summary)))
    summary["curriculum_file"] = str(curriculum_path)
    summary["results_file"] = str(folder / "results.yaml")
    return summary


def format_curriculum_results(summary: dict) -> str:
    rows = [{**r, "mark": "<- chosen" if r["chosen"] else ""} for r in summary["trials"]]
    table = format_table(
        rows,
        [
            ("stage", "stage", "d"),
            ("resolution_px", "res_px", "d"),
            ("stage_val_acc", "stage_val_acc", ".4f"),
            ("score", "proxy_val_acc", ".4f"),
            ("cost_epochs", "cost_epochs", ".2f"),
            ("wall_time_s", "trial_s", ".0f"),
            ("mark", "", "s"),
        ],
    )
    return (
        f"{table}\n"
        f"curriculum: {summary['curriculum_px']} px, "
        f"{summary['curriculum_compute_vs_baseline']:.3f}x the baseline's compute "
        f"(beta {summary['beta']:.3f})\n"
        f"search cost: {summary['search_cost_epochs']:.2f} equivalent full-resolution epochs "
        f"({summary['search_cost_vs_curriculum_trainings']:.2f} trainings of the curriculum); "
        f"wall time {summary['search_wall_time_s']:.0f} s "
        f"(stages: {', '.join(f'{s:.0f} s' for s in summary['stage_wall_times_s'])})\n"
        f"written: {summary['curriculum_file']} and {summary['results_file']}"
    )


def _grid(values: list):
    from ray import tune

    return tune.grid_search(values)


def _proxy_job(base: dict, name: str, trials_dir: Path, epochs: int, lr: float) -> dict[str, Any]:
    raw = set_field(base, "curriculum", None)
    raw = set_field(raw, "train.epochs", epochs)
    raw = set_field(raw, "train.optimizer.lr", lr)
    raw = set_field(raw, "train.schedule", {"name": "cosine", "warmup_epochs": 0})
    raw = set_field(raw, "run.name", f"{name}-proxy")
    return set_field(raw, "run.storage_path", str(trials_dir))


def _plan(raw: dict, train_samples: int, source: str, what: str) -> Plan:
    job = trial_job(raw, f"{source} ({what})")
    try:
        return make_plan(job, train_samples=train_samples)
    except PlanError as err:
        raise ConfigError([f"{source}: {what}: {err}"]) from None
