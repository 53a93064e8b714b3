"""Plots and a comparison table of finished (or running) runs, from their run folders.

`rayaccel report RUN_DIR [RUN_DIR ...]` and the end of `rayaccel run` both come here. The
numbers are computed by pure functions of a run's `metrics.jsonl` rows and `plan.json`, so the
table a user reads, the plots and the benchmarks all agree:

- compute is the paper's model, trained images x resolution^2, counted per epoch from what the
  loop actually trained (`EpochRecord.train_images` at `resolution_px`) and expressed in full-resolution
  epochs: one unit is the plain job's epoch (`plan.baseline_images_per_epoch` images at
  `plan.full_resolution_px`), so a baseline and its accelerated variants share one axis;
- wall time per epoch is the time since the first epoch started (`time_unix_s` minus the first
  epoch's `epoch_time_s`): Ray start-up and dataset construction are not in the plot, but are
  in the table's wall time, which is `summary.json`'s `wall_time_s` when the run finished;
- the final accuracy is the last evaluation at full resolution (a curriculum evaluates its
  low-resolution stages at their own resolution, which is not comparable).

Plots use matplotlib's `Figure` directly (Agg canvas, no pyplot state), so they can be drawn
inside the Ray driver or any thread.
"""

from __future__ import annotations

import io
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from matplotlib.figure import Figure

from rayaccel.core.compute import pixel_compute
from rayaccel.core.records import EpochRecord
from rayaccel.core.storage import RunFolder
from rayaccel.plan import Plan

PLOT_FILES = ("plot_accuracy.png", "plot_plan.png", "plot_throughput.png")
TABLE_FILE = "report.md"


class ReportError(ValueError):
    """A folder that cannot be reported on; the message says which and why."""


@dataclass(frozen=True)
class RunRecord:
    """What a report needs of one run: its label, epochs, plan and summary (if finished)."""

    label: str
    epochs: list[EpochRecord]
    plan: Plan
    summary: dict | None = None


# ---------------------------------------------------------------- pure numbers
def full_epoch_compute_px_images(plan: Plan) -> int:
    """Compute of one epoch of the plain job at full resolution (the unit of the compute axis).

    Plans written before `baseline_images_per_epoch` existed fall back to the last stage's
    images per epoch, which is the full-resolution stage.
    """
    last = plan.stages[-1]
    images = plan.baseline_images_per_epoch or last.steps_per_epoch * last.global_batch
    return pixel_compute(images, plan.full_resolution_px)


def compute_px_images(epochs: list[EpochRecord]) -> list[int]:
    """Cumulative trained images x resolution^2 after each epoch."""
    total = 0
    cumulative = []
    for epoch in epochs:
        total += pixel_compute(epoch.train_images, epoch.resolution_px)
        cumulative.append(total)
    return cumulative


def compute_full_epochs(epochs: list[EpochRecord], plan: Plan) -> list[float]:
    """Cumulative compute after each epoch, in full-resolution epochs of the plain job."""
    unit = full_epoch_compute_px_images(plan)
    return [c / unit for c in compute_px_images(epochs)]


def elapsed_s(epochs: list[EpochRecord]) -> list[float]:
    """Wall time after each epoch, from the start of the first epoch."""
    if not epochs:
        return []
    start = epochs[0].time_unix_s - epochs[0].epoch_time_s
    return [epoch.time_unix_s - start for epoch in epochs]


def final_full_resolution_eval(
    epochs: list[EpochRecord], full_resolution_px: int
) -> EpochRecord | None:
    """The last epoch evaluated at full resolution, or None."""
    for epoch in reversed(epochs):
        if epoch.evaluated and epoch.eval_resolution_px == full_resolution_px:
            return epoch
    return None


def run_stats(record: RunRecord) -> dict:
    """The numbers the comparison table shows for one run."""
    epochs = record.epochs
    summary = record.summary or {}
    final = final_full_resolution_eval(epochs, record.plan.full_resolution_px)
    compute = compute_px_images(epochs)
    finished = bool(summary) and summary.get("epochs_completed") == record.plan.total_epochs
    return {
        "label": record.label,
        "epochs": len(epochs),
        "epochs_planned": record.plan.total_epochs,
        "finished": finished,
        "final_val_acc": final.val_acc if final else None,
        "eval_resolution_px": record.plan.full_resolution_px,
        "wall_time_s": summary.get("wall_time_s") or (elapsed_s(epochs) or [0.0])[-1],
        "train_time_s": sum(e.epoch_time_s for e in epochs),
        "compute_px_images": compute[-1] if compute else 0,
        "compute_full_epochs": compute_full_epochs(epochs, record.plan)[-1] if epochs else 0.0,
        "median_images_per_s": statistics.median(e.images_per_s for e in epochs) if epochs else 0,
    }


def comparison_table(records: list[RunRecord]) -> str:
    """A markdown table of the runs; ratios and accuracy deltas are against the first run."""
    stats = [run_stats(record) for record in records]
    base = stats[0]
    header = (
        "| run | epochs | final val acc (full res) | wall time (s) | training time (s) "
        "| compute (images·px², ×10⁹) | compute (full-res epochs) | median images/s "
        f"| wall time ÷ {base['label']} | compute ÷ {base['label']} "
        f"| accuracy − {base['label']} (points) |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for s in stats:
        epochs = f"{s['epochs']}/{s['epochs_planned']}" + ("" if s["finished"] else " (partial)")
        acc = "—" if s["final_val_acc"] is None else f"{s['final_val_acc']:.4f}"
        delta = (
            f"{100 * (s['final_val_acc'] - base['final_val_acc']):+.2f}"
            if s["final_val_acc"] is not None and base["final_val_acc"] is not None
            else "—"
        )
        lines.append(
            f"| {s['label']} | {epochs} | {acc} @{s['eval_resolution_px']}px "
            f"| {s['wall_time_s']:.1f} | {s['train_time_s']:.1f} "
            f"| {s['compute_px_images'] / 1e9:.4g} | {s['compute_full_epochs']:.2f} "
            f"| {s['median_images_per_s']:,.0f} "
            f"| {_ratio(s['wall_time_s'], base['wall_time_s'])} "
            f"| {_ratio(s['compute_px_images'], base['compute_px_images'])} | {delta} |"
        )
    return "\n".join(lines)


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.3f}" if base else "—"


# ---------------------------------------------------------------- figures
def accuracy_figure(records: list[RunRecord]) -> Figure:
    """Validation accuracy against wall time and against compute, one line per run.

    Hollow markers are evaluations below full resolution (curriculum stages).
    """
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    by_time, by_compute = fig.subplots(1, 2, sharey=True)
    for record in records:
        times = elapsed_s(record.epochs)
        compute = compute_full_epochs(record.epochs, record.plan)
        points = [
            (t, c, epoch.val_acc, epoch.eval_resolution_px)
            for t, c, epoch in zip(times, compute, record.epochs, strict=True)
            if epoch.evaluated
        ]
        if not points:
            continue
        t, c, acc, px = zip(*points, strict=True)
        full = [p == record.plan.full_resolution_px for p in px]
        for axis, xs in ((by_time, t), (by_compute, c)):
            (line,) = axis.plot(xs, acc, label=record.label)
            axis.scatter(
                xs,
                acc,
                facecolors=[line.get_color() if f else "none" for f in full],
                edgecolors=line.get_color(),
                zorder=3,
            )
    by_time.set_xlabel("wall time since the first epoch started (s)")
    by_compute.set_xlabel("compute (full-resolution epochs: images × px²)")
    by_time.set_ylabel("validation accuracy")
    for axis in (by_time, by_compute):
        axis.set_xlim(left=0)
        axis.grid(alpha=0.3)
    if by_compute.get_legend_handles_labels()[0]:
        by_compute.legend(loc="lower right")
    else:
        by_compute.text(
            0.5, 0.5, "no validation split", ha="center", transform=by_compute.transAxes
        )
    fig.suptitle("Validation accuracy (hollow: evaluated below full resolution)")
    return fig


def plan_figure(records: list[RunRecord]) -> Figure:
    """The plan per epoch: resolution, global batch size and learning rate."""
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    resolution, batch, lr = fig.subplots(1, 3)
    for record in records:
        rows = record.plan.epoch_rows()
        edges = range(len(rows) + 1)  # epoch e spans [e, e + 1] on the x axis
        resolution.stairs(
            [r["resolution_px"] for r in rows], edges, baseline=None, label=record.label
        )
        batch.stairs([r["global_batch"] for r in rows], edges, baseline=None, label=record.label)
        # The LR runs continuously through each epoch: draw it from its start to its end.
        xs = [x for row in rows for x in (row["epoch"], row["epoch"] + 1)]
        ys = [y for row in rows for y in (row["lr_start"], row["lr_end"])]
        lr.plot(xs, ys, label=record.label)
    for axis, title in (
        (resolution, "resolution (px)"),
        (batch, "global batch size"),
        (lr, "learning rate"),
    ):
        axis.set_title(title)
        axis.set_xlabel("epochs trained")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    lr.legend(loc="upper right")
    return fig


def throughput_figure(records: list[RunRecord]) -> Figure:
    """Trained images per second of each epoch (replayed images count as trained)."""
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    axis = fig.subplots()
    for record in records:
        numbers = [epoch.epoch + 1 for epoch in record.epochs]
        throughput = [epoch.images_per_s for epoch in record.epochs]
        axis.plot(numbers, throughput, "o-", label=record.label)
    axis.set_xlabel("epoch")
    axis.set_ylabel("trained images/s")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    return fig


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def render(records: list[RunRecord]) -> dict[str, bytes]:
    """The plot files (`PLOT_FILES`) of the runs as PNG bytes, by file name."""
    figures = (accuracy_figure(records), plan_figure(records), throughput_figure(records))
    return {name: png_bytes(fig) for name, fig in zip(PLOT_FILES, figures, strict=True)}


# ---------------------------------------------------------------- run folders
def load_run(location: str, *, label: str | None = None) -> RunRecord:
    """Reads a run folder (local path or URI) written by `rayaccel run`.

    Raises:
        ReportError: if the folder has no plan or no finished epoch yet.
    """
    folder = RunFolder(location.rstrip("/"))
    plan_text = folder.read_text("plan.json")
    if plan_text is None:
        raise ReportError(
            f"{location}: not a run folder (no plan.json); give the folder `rayaccel run` "
            "printed as its run folder, e.g. runs/quickstart"
        )
    try:
        plan = Plan.from_dict(json.loads(plan_text))
        epochs = folder.read_epochs()
    except (ValueError, TypeError, KeyError) as err:
        raise ReportError(f"{location}: unreadable plan.json or metrics.jsonl ({err})") from None
    if not epochs:
        raise ReportError(f"{location}: no finished epoch yet (metrics.jsonl is empty or missing)")
    summary_text = folder.read_text("summary.json")
    return RunRecord(
        label=label or location.rstrip("/").rsplit("/", 1)[-1],
        epochs=epochs,
        plan=plan,
        summary=json.loads(summary_text) if summary_text else None,
    )


def write_report(
    records: list[RunRecord], write: Callable[[str, bytes], None], *, table: bool = True
) -> list[str]:
    """Writes the plots (and the markdown table) through `write(name, data)`; returns the names."""
    files = render(records)
    if table:
        files[TABLE_FILE] = (comparison_table(records) + "\n").encode()
    for name, data in files.items():
        write(name, data)
    return list(files)
