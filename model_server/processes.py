"""Which process a pid names: a mark of when it started that the system clock cannot move.

Worker reports (`config.routing.WorkerStatus`) and the drift counts' server directories
(`monitoring.drift_counts.server_directory`) hold the pid of a process with this mark, so
that a pid a new process reuses is not taken for the old one. The mark must stay the same
for the life of the process: a process's start time in seconds since the epoch
(`psutil.Process.create_time`) is its start in clock ticks since boot plus the boot time,
and the kernel moves the boot time whenever the clock is set or synchronised. Then every
live process looks new, and its reports and directories are removed as if it had ended.
`is_running(pid, mark)` says whether the process that wrote a mark still runs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import psutil

PROC = Path("/proc")
# Earlier versions wrote start times rounded to hundredths of a second in directory names.
LEGACY_TOLERANCE_S = 0.01


def start_mark(pid: int) -> str | None:
    """A mark of when process `pid` started, the same for its whole life and unlike that of
    any other process that has had or will have that pid on this machine; None when there
    is no such process. On Linux: the boot's id and the start in clock ticks since boot."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except FileNotFoundError:
        if PROC.joinpath("self").exists():
            return None  # Linux, and no such process
        return _portable_mark(pid)
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks_since_boot = fields[19]  # field 22 of proc_pid_stat(5), "starttime"
    return f"{_boot_id()}:{ticks_since_boot}"


def is_running(pid: int, mark: object) -> bool:
    """Whether the process that `start_mark` gave `mark` still runs as `pid`.

    Reports and directories written by an earlier version of the server hold its start
    time since the epoch instead (a number, no ':'), judged as that version judged them,
    so that a new server beside an old one on the same machine leaves the old one's alone
    and a pid that another process took since is still told apart."""
    if isinstance(mark, str) and ":" in mark:
        return start_mark(pid) == mark
    try:
        return abs(psutil.Process(pid).create_time() - float(mark)) < LEGACY_TOLERANCE_S  # type: ignore[arg-type]
    except (psutil.Error, TypeError, ValueError):
        return False


@functools.cache
def _boot_id() -> str:
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "boot"


def _portable_mark(pid: int) -> str | None:
    """Elsewhere than Linux: the start time psutil gives (which the clock can move)."""
    try:
        return f"epoch:{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return None
