"""Ray heads started with `ray start --head` for a test, and stopped by killing exactly their
processes (`ray stop` would kill every Ray process on the machine, other sessions' too).

Shared by `test_submit.py` (a head with a job server) and `test_autoscaling.py` (a head
whose autoscaler launches fake nodes).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

BIN_DIR = Path(sys.executable).parent
RAY_CLI = str(BIN_DIR / "ray")
KILL_GRACE_S = 3.0


def head_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(name, None)
    env["RAY_AUTH_MODE"] = "disabled"
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    return env


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) for every process, read from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry)] = (int(fields[1]), int(fields[2]))
    return table


def head_processes(group: int) -> set[int]:
    """The head's process group plus all descendants: Ray workers (and the job drivers
    they spawn) run in process groups of their own, under the raylet."""
    table = process_table()
    found = {pid for pid, (_, pgid) in table.items() if pgid == group}
    while True:
        children = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        if not children:
            return found
        found |= children


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_head(group: int) -> None:
    pids = head_processes(group)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + KILL_GRACE_S
        while time.monotonic() < deadline and any(is_running(p) for p in pids):
            time.sleep(0.1)
