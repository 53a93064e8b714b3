"""Progress events: how the workers and Ray Train's controller tell the driver's console
what happened, through the one channel every Ray process already has to the driver.

A Ray worker's stdout reaches the driver line by line (Ray's log monitor); the driver's
console (`rayaccel.train.console`) reads those lines, renders the ones that carry an event
and sends every other line to the run's `ray.log`. An event is one line: a mark and a JSON
object with its `kind` (`step`: rank 0's progress, `epoch`: a finished epoch's record). Where
no console reads them (a Ray Tune trial, a benchmark) the loop prints readable lines instead.
"""

from __future__ import annotations

import json
from typing import Any

EVENT_MARK = "[rayaccel:event] "


def event_line(kind: str, **fields: Any) -> str:
    """One event as a single line of text."""
    return EVENT_MARK + json.dumps({"kind": kind, **fields}, separators=(",", ":"))


def parse_event(line: str) -> dict | None:
    """The event a line carries (anywhere in it: Ray may prefix a worker's line), or None."""
    at = line.find(EVENT_MARK)
    if at < 0:
        return None
    try:
        event = json.loads(line[at + len(EVENT_MARK) :])
    except ValueError:
        return None
    return event if isinstance(event, dict) and "kind" in event else None


def format_duration(seconds: float) -> str:
    """`1h02m`, `4m05s`, `12s`: a duration as a console shows it."""
    seconds = max(int(seconds), 0)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
