"""The driver's console for one run: rayaccel's lines on the terminal, Ray's in `ray.log`.

A run's processes (training workers, Ray Train's controller, Ray Data's coordinators, the
raylet) print to their own stdout and stderr, and Ray's log monitor streams every line to
the driver, where Ray prints it with a `(ActorName pid=...)` prefix. That is a hundred lines
of Ray's bookkeeping per short run (every training report twice, each dataset's execution
plan per epoch, deprecation warnings) in which the run's own progress is lost. So while a
run is on, the console takes over that stream and Ray's Python loggers on the driver:

- event lines (`rayaccel.core.events`) become the display: a live progress bar on a
  terminal (rich), a plain progress line at most every `plain_every_s` otherwise (a log
  file, `ray job submit`), and one table row per finished epoch;
- a worker's own `[rayaccel] ...` line (a resume, a weight-loading report) is shown as is;
- everything else (tracebacks included) goes to `ray.log` in the run folder, which the
  result block and a failure message name. `verbose` shows it on the console as well,
  each line with Ray's process prefix.

Ray's stream is taken over through its driver-side dispatcher of worker output
(`ray._private.ray_logging.global_worker_stdstream_dispatcher`, where `ray.init` installs
its printer): the only place every process's lines arrive. The cluster's error messages
(a worker killed for memory, a request no node can take) come through Ray's
`print_to_stdstream` instead; they are shown on one line each, in full in `ray.log`. Where
a Ray version lacks these, the console leaves Ray's printer alone.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from typing import IO, Any

from rayaccel.core.events import format_duration, parse_event

# The handler name under which `ray.init(log_to_driver=True)` registers its printer.
RAY_PRINTER = "ray_print_logs"
# Lines a worker prints for the user (not events): shown on the console without the tag.
USER_LINE_TAG = "[rayaccel] "
# Cluster messages (Ray's "raylet" errors: a worker killed for memory, an unschedulable
# request) are shown, except these that a healthy run on a small machine also gets.
BENIGN_CLUSTER_MESSAGES = ("PYTHON worker processes have been started",)

_COLUMNS = (
    ("epoch", 7),
    ("stage", 5),
    ("px", 4),
    ("batch", 6),
    ("train_loss", 10),
    ("val_acc", 8),
    ("img/s", 7),
    ("data_wait_s", 11),
    ("epoch_s", 7),
)


def epoch_header() -> str:
    """The epoch table's header row."""
    return " ".join(f"{name:>{width}}" for name, width in _COLUMNS) + "  checkpoint"


def epoch_row(row: dict[str, Any], total_epochs: int, *, checkpointed: bool) -> str:
    """One finished epoch (a `metrics.jsonl` row) as a row of the epoch table."""

    def number(key: str, spec: str) -> str:
        value = row.get(key)
        return "-" if value is None else format(value, spec)

    cells = (
        f"{row['epoch'] + 1}/{total_epochs}",
        str(row.get("stage", 0)),
        str(row.get("resolution_px") or "-"),
        str(row.get("global_batch") or "-"),
        number("train_loss", ".4f"),
        number("val_acc", ".4f"),
        number("images_per_s", ",.0f"),
        number("data_wait_s", ".1f"),
        number("epoch_time_s", ".1f"),
    )
    text = " ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True))
    extras = []
    if checkpointed:
        extras.append("yes")
    if row.get("val_miou") is not None:
        extras.append(f"val_miou {row['val_miou']:.4f}")
    val_px = row.get("val_resolution_px")
    if row.get("val_acc") is not None and val_px and val_px != row.get("resolution_px"):
        extras.append(f"val at {val_px}px")
    return text + ("  " + ", ".join(extras) if extras else "")


def step_text(event: dict[str, Any]) -> str:
    """A progress point: `epoch 3/8 step 20/31 loss 0.8487 1,318 img/s ETA 0m16s`."""
    text = (
        f"epoch {event['epoch'] + 1}/{event['epochs']} step {event['step']}/{event['steps']} "
        f"loss {event['loss']:.4f}"
    )
    if event.get("images_per_s") is not None:
        text += f" {event['images_per_s']:,.0f} img/s"
    if event.get("eta_s") is not None:
        text += f" ETA {format_duration(event['eta_s'])}"
    return text


def result_block(summary: dict[str, Any], *, ray_log: str | None) -> str:
    """What a finished run prints last: the accuracy, the time, where everything is."""
    epochs = f"{summary['epochs_completed']}/{summary['epochs_planned']} epochs"
    if summary.get("final_val_acc") is not None:
        accuracy = (
            f"val_acc {summary['final_val_acc']:.4f} at {summary['eval_resolution_px']}px"
            + (
                f", val_miou {summary['final_val_miou']:.4f}"
                if summary.get("final_val_miou") is not None
                else ""
            )
        )
    else:
        accuracy = "no evaluation"
    compute = f"{summary['compute_vs_baseline']:.3f}x planned"
    if summary.get("compute_vs_baseline_measured") is not None:
        compute += f", {summary['compute_vs_baseline_measured']:.3f}x measured"
    lines = [
        f"finished: {epochs}, {accuracy}",
        f"  time: {format_duration(summary['wall_time_s'])} wall, "
        f"{summary['train_time_s']:.1f} s training; compute vs the baseline: {compute}",
    ]
    if summary.get("bad_rows_skipped"):
        lines.append(f"  bad rows skipped: {summary['bad_rows_skipped']}")
    lines.append(f"  checkpoint: {summary.get('checkpoint') or 'none'}")
    lines.append(
        "  results in "
        + summary["run_folder"]
        + " (summary.json, metrics.jsonl, plots"
        + (", ray.log" if ray_log else "")
        + "; `rayaccel report` compares runs)"
    )
    return "\n".join(lines)


class RunConsole:
    """The console of one run on the driver (see the module docstring).

    Use as a context manager around the run: `open` before `ray.init` (Ray's start-up
    lines go to `ray.log` too), `attach` once Ray is connected, `close` at the end, also
    when the run fails. Ray's log thread calls `on_worker_output` from its own thread.

    Args:
        total_epochs: Epochs of the plan (the table's `epoch` column).
        ray_log_path: Local file for Ray's output; `upload` (if given) receives its bytes at
            the end (a run folder that is a URI).
        stream: Where rayaccel's lines go (stdout).
        verbose: Ray's own output on the console too.
        tty: Whether `stream` is a terminal (live progress bar); None asks the stream.
        plain_every_s: Without a terminal, the least seconds between two progress lines.
        keep_after_close: The run is the process's last Ray work (the CLI): lines Ray
            delivers after the run (its log monitor lags) are appended to `ray.log` instead
            of being printed, and Ray's printer is not put back.
    """

    def __init__(
        self,
        *,
        total_epochs: int,
        ray_log_path: str,
        upload: Callable[[bytes], None] | None = None,
        stream: IO[str] | None = None,
        verbose: bool = False,
        tty: bool | None = None,
        plain_every_s: float = 20.0,
        keep_after_close: bool = False,
    ):
        self.total_epochs = total_epochs
        self.ray_log_path = ray_log_path
        self.upload = upload
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.tty = self.stream.isatty() if tty is None else tty
        self.plain_every_s = plain_every_s
        self.keep_after_close = keep_after_close
        self._lock = threading.RLock()
        self._log: IO[str] | None = None
        self._file_handler: logging.Handler | None = None
        self._swapped: list[tuple[logging.Logger, logging.Handler]] = []
        self._ray_printer: tuple[str, Callable] | None = None
        self._dispatcher: Any = None
        self._ray_worker: Any = None
        self._print_to_stdstream: Callable | None = None
        self._showwarning = None
        self._header_shown = False
        self._last_plain_s = -float("inf")
        self._progress: Any = None
        self._task: Any = None
        self._progress_epoch: int | None = None

    # ------------------------------------------------------------ lifetime
    def __enter__(self) -> RunConsole:
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def open(self) -> None:
        """Starts `ray.log` and moves Ray's driver-side loggers and Python warnings to it."""
        os.makedirs(os.path.dirname(self.ray_log_path) or ".", exist_ok=True)
        self._log = open(self.ray_log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._file_handler = logging.StreamHandler(self._log)
        # Ray Data's loggers are at DEBUG (its own file keeps those); INFO is what Ray prints.
        self._file_handler.setLevel(logging.INFO)
        self._file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s")
        )
        self.capture_loggers()
        self._showwarning = warnings.showwarning
        warnings.showwarning = self._warning_to_log

    def capture_loggers(self) -> None:
        """Ray's loggers write to `ray.log` instead of the terminal (call again after imports
        or `ray.init` that configure more of them; a logger is moved once)."""
        if self.verbose or self._file_handler is None:
            if self._file_handler is not None and not self._swapped:
                logging.getLogger("ray").addHandler(self._file_handler)
                self._swapped.append((logging.getLogger("ray"), self._file_handler))
            return
        done = {id(handler) for _, handler in self._swapped}
        names = ["ray", *(n for n in logging.Logger.manager.loggerDict if n.startswith("ray."))]
        for name in names:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if id(handler) in done or handler is self._file_handler:
                    continue
                if isinstance(handler, logging.FileHandler) or not isinstance(
                    handler, logging.StreamHandler
                ):
                    continue
                if handler.stream not in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                    continue
                logger.removeHandler(handler)
                self._swapped.append((logger, handler))
            if name == "ray" or not logger.propagate:
                if self._file_handler not in logger.handlers:
                    logger.addHandler(self._file_handler)
                    self._swapped.append((logger, self._file_handler))

    def attach(self) -> None:
        """Takes over the stream of Ray's processes' output (Ray must be connected)."""
        self.capture_loggers()
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher
        except ImportError:  # a Ray without it: its printer stays
            return
        self._dispatcher = global_worker_stdstream_dispatcher
        # An earlier run in this process (tests, notebooks) left its late-output sink.
        self._dispatcher.remove_handler("rayaccel_late_output")
        with self._dispatcher._lock:
            for pair in self._dispatcher.handlers:
                if pair[0] == RAY_PRINTER:
                    self._ray_printer = pair
        if self._ray_printer is not None:
            self._dispatcher.remove_handler(RAY_PRINTER)
        self._dispatcher.add_handler("rayaccel_console", self.on_worker_output)
        import ray._private.worker as ray_worker

        if hasattr(ray_worker, "print_to_stdstream"):
            self._ray_worker = ray_worker
            original = getattr(ray_worker.print_to_stdstream, "_ray_original", None)
            self._print_to_stdstream = original or ray_worker.print_to_stdstream
            sink = functools.partial(RunConsole._cluster_message, self)
            sink._ray_original = self._print_to_stdstream
            ray_worker.print_to_stdstream = sink

    def close(self) -> None:
        """Gives Ray its printer and loggers back, ends the progress bar, closes `ray.log`."""
        if self._dispatcher is not None:
            self._dispatcher.remove_handler("rayaccel_console")
            if self.keep_after_close and self.upload is None:
                self._dispatcher.add_handler("rayaccel_late_output", self._late_output)
            elif self._ray_printer is not None:
                self._dispatcher.add_handler(*self._ray_printer)
            self._dispatcher = None
        if self._print_to_stdstream is not None and not self.keep_after_close:
            self._ray_worker.print_to_stdstream = self._print_to_stdstream
            self._print_to_stdstream = None
        with self._lock:
            self._stop_progress()
        # Every logger this console changed: the ray.log handler it added is removed, a
        # terminal handler it took away is given back.
        for logger, handler in self._swapped:
            if handler is self._file_handler:
                logger.removeHandler(handler)
            else:
                logger.addHandler(handler)
        self._swapped = []
        if self._showwarning is not None:
            warnings.showwarning = self._showwarning
            self._showwarning = None
        if self._log is not None:
            self._log.close()
            self._log = None
            if self.upload is not None:
                with open(self.ray_log_path, "rb") as file:
                    self.upload(file.read())

    # ------------------------------------------------------------ input
    def on_worker_output(self, data: dict[str, Any]) -> None:
        """One batch of a Ray process's output lines (Ray's log thread)."""
        source = data.get("actor_name") or data.get("task_name") or "worker"
        prefix = f"({source} pid={data.get('pid')}, ip={data.get('ip')}) "
        for line in data.get("lines", ()):
            event = parse_event(line)
            if event is not None:
                self.on_event(event)
                continue
            if self.verbose:
                self.say(prefix + line)
            elif line.startswith(USER_LINE_TAG):
                self.say(line[len(USER_LINE_TAG) :])
            self._write_log(prefix + line)

    def _cluster_message(self, data: dict[str, Any], ignore_prefix: bool = False) -> None:
        """A message Ray's driver gets from the cluster (`listen_error_messages`)."""
        lines = [line for line in data.get("lines", ()) if line.strip()]
        if self._log is None:  # after the run: into the log file, if it is local
            self._late_output(data)
            return
        for line in lines:
            self._write_log(f"({data.get('pid')}) {line}")
        text = " ".join(lines[0].split()) if lines else ""
        if self.verbose or (text and not any(m in text for m in BENIGN_CLUSTER_MESSAGES)):
            self.say(f"ray: {text[:300]}")

    def on_event(self, event: dict[str, Any]) -> None:
        """Renders one event: a progress point or a finished epoch."""
        with self._lock:
            if event["kind"] == "step":
                self._show_step(event)
            elif event["kind"] == "epoch":
                row = event["row"]
                if not self._header_shown:
                    self._print(epoch_header())
                    self._header_shown = True
                self._print(
                    epoch_row(row, self.total_epochs, checkpointed=bool(event.get("checkpoint")))
                )

    # ------------------------------------------------------------ output
    def say(self, line: str) -> None:
        """One rayaccel line on the console (above the progress bar on a terminal)."""
        with self._lock:
            self._print(line)

    def finish(self, text: str) -> None:
        """The run's last lines, after the progress bar is gone."""
        with self._lock:
            self._stop_progress()
            self._print(text)

    def _print(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def _write_log(self, line: str) -> None:
        if self._log is not None:
            self._log.write(line.rstrip("\n") + "\n")

    def _late_output(self, data: dict[str, Any]) -> None:
        with open(self.ray_log_path, "a", encoding="utf-8") as log:
            for line in data.get("lines", ()):
                log.write(f"({data.get('actor_name') or 'worker'} pid={data.get('pid')}) {line}\n")

    def _warning_to_log(self, message, category, filename, lineno, file=None, line=None):
        self._write_log(warnings.formatwarning(message, category, filename, lineno, line))

    def _show_step(self, event: dict[str, Any]) -> None:
        if not self.tty:
            now_s = time.monotonic()
            if now_s - self._last_plain_s >= self.plain_every_s:
                self._last_plain_s = now_s
                self._print(step_text(event))
            return
        if self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(file=self.stream),
                transient=True,
            )
            self._progress.start()
        info = step_text(event).split(" loss ", 1)[1]
        description = f"epoch {event['epoch'] + 1}/{event['epochs']}"
        if self._task is None or self._progress_epoch != event["epoch"]:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(description, total=event["steps"], info="")
            self._progress_epoch = event["epoch"]
        self._progress.update(self._task, completed=event["step"], info="loss " + info)

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None


def local_log_path(run_folder: str) -> tuple[str, bool]:
    """Where `ray.log` is written: in a local run folder, else a temporary file (True: to be
    uploaded into the run folder at the end)."""
    if "://" not in run_folder or run_folder.startswith("file://"):
        folder = run_folder.removeprefix("file://")
        return os.path.join(folder, "ray.log"), False
    handle, path = tempfile.mkstemp(prefix="rayaccel-ray-", suffix=".log")
    os.close(handle)
    return path, True
