"""The driver's console: event lines, the epoch table, routing of Ray's output, the ETA."""

from __future__ import annotations

import io
import logging
import warnings

import pytest
import torch

from rayaccel.core.events import event_line, format_duration, parse_event
from rayaccel.train.console import RunConsole, epoch_header, epoch_row, result_block, step_text
from rayaccel.train.loop import _Progress

ROW = {
    "epoch": 2,
    "stage": 1,
    "resolution_px": 160,
    "global_batch": 1024,
    "train_loss": 1.23456,
    "val_acc": 0.71234,
    "val_resolution_px": 224,
    "images_per_s": 2345.6,
    "data_wait_s": 0.42,
    "epoch_time_s": 61.04,
}


def test_an_event_survives_the_prefix_ray_puts_before_a_worker_line():
    line = "(RayTrainWorker pid=12) " + event_line("step", epoch=1, loss=0.5)
    assert parse_event(line) == {"kind": "step", "epoch": 1, "loss": 0.5}
    assert parse_event("[rayaccel] epoch 1/8 done") is None
    assert parse_event(event_line("step")[:-3]) is None  # a cut line is not an event


@pytest.mark.parametrize(
    ("seconds", "text"), [(5, "5s"), (65, "1m05s"), (3725, "1h02m"), (-1, "0s")]
)
def test_durations(seconds, text):
    assert format_duration(seconds) == text


def test_an_epoch_row_lines_up_under_the_header_and_names_the_eval_size():
    row = epoch_row(ROW, 8, checkpointed=True)
    header = epoch_header()
    assert row.split()[:9] == [
        "3/8",
        "1",
        "160",
        "1024",
        "1.2346",
        "0.7123",
        "2,346",
        "0.4",
        "61.0",
    ]
    # Every number ends where its column's name ends.
    for name, value in zip(header.split()[:9], row.split()[:9], strict=True):
        assert header.index(name) + len(name) == row.index(value) + len(value)
    assert row.endswith("yes, val at 224px")
    unevaluated = epoch_row({**ROW, "val_acc": None}, 8, checkpointed=False)
    assert unevaluated.split()[5] == "-" and "val at" not in unevaluated


def test_step_text_and_result_block():
    event = {"epoch": 0, "epochs": 8, "step": 10, "steps": 31, "loss": 2.04, "eta_s": 44.0}
    assert step_text({**event, "images_per_s": 691.2}) == (
        "epoch 1/8 step 10/31 loss 2.0400 691 img/s ETA 44s"
    )
    assert step_text({**event, "images_per_s": None, "eta_s": None}).endswith("loss 2.0400")
    summary = {
        "run_folder": "/runs/q",
        "epochs_completed": 8,
        "epochs_planned": 8,
        "final_val_acc": 0.895,
        "eval_resolution_px": 28,
        "compute_vs_baseline": 1.0,
        "compute_vs_baseline_measured": 0.62,
        "wall_time_s": 85.2,
        "train_time_s": 47.7,
        "bad_rows_skipped": 3,
        "checkpoint": "/runs/q/checkpoint_x",
    }
    block = result_block(summary, ray_log="/runs/q/ray.log")
    assert block.splitlines()[0] == "finished: 8/8 epochs, val_acc 0.8950 at 28px"
    assert "1m25s wall" in block and "0.620x measured" in block
    assert "bad rows skipped: 3" in block and "results in /runs/q" in block


def _console(tmp_path, **kwargs) -> tuple[RunConsole, io.StringIO]:
    out = io.StringIO()
    console = RunConsole(
        total_epochs=4, ray_log_path=str(tmp_path / "ray.log"), stream=out, tty=False, **kwargs
    )
    return console, out


def test_ray_lines_go_to_the_log_and_events_become_the_table(tmp_path):
    console, out = _console(tmp_path, plain_every_s=3600)
    with console:
        step = event_line("step", epoch=0, epochs=4, step=5, steps=9, loss=1.0, images_per_s=9.0)
        console.on_worker_output(
            {
                "actor_name": "RayTrainWorker",
                "pid": 7,
                "ip": "10.0.0.1",
                "lines": [
                    "Reporting training result 1: TrainingReport(...)",
                    step,
                    step,  # throttled: one progress line per plain_every_s
                    "[rayaccel] resumed from checkpoint: next epoch 2",
                    "Traceback (most recent call last):",
                ],
            }
        )
        console.on_worker_output(
            {"pid": 9, "lines": [event_line("epoch", row=ROW, checkpoint=False)]}
        )
        logging.getLogger("ray.data").warning("Execution plan of Dataset x")
        warnings.warn("exclude_resources is deprecated", DeprecationWarning, stacklevel=1)
    shown = out.getvalue().splitlines()
    assert shown[0] == "epoch 1/4 step 5/9 loss 1.0000 9 img/s"
    assert shown[1] == "resumed from checkpoint: next epoch 2"
    assert shown[2] == epoch_header() and shown[3].split()[0] == "3/4"
    assert len(shown) == 4
    log = (tmp_path / "ray.log").read_text()
    assert "(RayTrainWorker pid=7, ip=10.0.0.1) Reporting training result 1" in log
    assert "Traceback" in log and "Execution plan of Dataset x" in log
    assert "exclude_resources is deprecated" in log
    assert "[rayaccel:event]" not in log
    # Closed: no logger still writes to ray.log.
    loggers = [logging.getLogger(n) for n in ["ray", *logging.Logger.manager.loggerDict]]
    assert not any(console._file_handler in logger.handlers for logger in loggers)


def test_verbose_shows_rays_lines_with_their_process(tmp_path):
    console, out = _console(tmp_path, verbose=True)
    with console:
        console.on_worker_output({"actor_name": "SplitCoordinator", "pid": 3, "lines": ["hi"]})
    assert out.getvalue() == "(SplitCoordinator pid=3, ip=None) hi\n"


def test_cluster_messages_are_shown_unless_benign(tmp_path):
    console, out = _console(tmp_path)
    with console:
        console._cluster_message(
            {"lines": ["WARNING: 8 PYTHON worker processes have been started"]}
        )
        console._cluster_message(
            {"lines": ["Task was killed due to the node running low on memory."]}
        )
    assert out.getvalue() == "ray: Task was killed due to the node running low on memory.\n"
    assert "PYTHON worker processes" in (tmp_path / "ray.log").read_text()


class _Plan:
    """Two epochs of equal compute: the fraction done is linear in steps."""

    total_epochs = 3

    def compute_fraction_at(self, epoch, step, steps):
        return (epoch + step / steps) / self.total_epochs


def test_the_eta_leaves_out_each_epochs_warm_up(monkeypatch, capsys):
    now = [0.0]
    monkeypatch.setattr("rayaccel.train.loop.time.perf_counter", lambda: now[0])
    progress = _Progress(_Plan(), enabled=True, every_steps=100, events=False)
    loss = torch.tensor(1.0)
    # Every epoch: a 30 s wait for its first step, then 9 steps of 1 s.
    for epoch in range(2):
        now[0] += 30
        progress.step(epoch, 0, loss, images_in_step=8, steps=10)
        for step in range(1, 10):
            now[0] += 1
            progress.step(epoch, step, loss, images_in_step=8, steps=10)
    # 9 steady seconds per 0.9/3 of the plan: 10 s of steps are left, and one boundary at
    # the second epoch's (the first is the run's start-up and is not charged again).
    assert progress.eta_s(2 / 3, epochs_left=1) == pytest.approx(10 + 30)
    line = capsys.readouterr().out.splitlines()[-1]
    assert line == "[rayaccel] epoch 2/3 step 10/10 loss 1.0000 8 img/s ETA 40s"
