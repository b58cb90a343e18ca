"""A process's start mark survives the clock being set; reports and directories of live
processes stay when it is, and those of ended processes go."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from model_server.config.routing import WorkerStatus
from model_server.monitoring import drift_counts
from model_server.processes import is_running, start_mark

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the mark reads /proc (Linux)")


@pytest.fixture
def other_process() -> Iterator[psutil.Process]:
    """A live process that is not this one (it stands for another server's worker)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield psutil.Process(child.pid)
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def set_clock_forward(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Sets the system clock forward (by hand, or by time synchronisation), as psutil sees
    it: the kernel's boot time, from which it computes start times since the epoch, moves
    by as much."""
    import psutil._pslinux as linux

    def set_forward() -> None:
        booted = linux.boot_time()
        monkeypatch.setattr(linux, "boot_time", lambda: booted + 1.0)

    return set_forward


def ended_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_mark_is_the_same_for_the_life_of_a_process_and_differs_between_processes(
    other_process: psutil.Process,
) -> None:
    mark = start_mark(other_process.pid)
    assert mark is not None and mark == start_mark(other_process.pid)
    assert mark != start_mark(os.getpid())
    assert start_mark(ended_pid()) is None
    assert is_running(other_process.pid, mark)
    assert not is_running(other_process.pid, start_mark(os.getpid()))


def test_an_earlier_versions_start_time_stands_for_its_process_and_not_for_a_pid_taken_since(
    other_process: psutil.Process,
) -> None:
    # Earlier versions wrote the start time since the epoch: a number in a report, text in
    # a directory's name. They are judged as that version judged them, so that a server of
    # this version beside one of an earlier version leaves the other's reports and counts
    # alone.
    legacy = other_process.create_time()
    assert is_running(other_process.pid, legacy) and is_running(other_process.pid, f"{legacy:.2f}")
    gone = ended_pid()
    assert not is_running(gone, legacy) and not is_running(gone, f"{legacy:.2f}")
    # A pid that another process took since: its start differs.
    assert not is_running(other_process.pid, legacy - 5) and not is_running(other_process.pid, "")


def test_the_mark_does_not_move_with_the_clock(
    other_process: psutil.Process, set_clock_forward: Callable[[], None]
) -> None:
    before = f"{psutil.Process(other_process.pid).create_time():.2f}"
    mark = start_mark(other_process.pid)
    set_clock_forward()
    assert f"{psutil.Process(other_process.pid).create_time():.2f}" != before  # what the clock moves
    assert start_mark(other_process.pid) == mark


def test_the_mark_reads_a_command_name_with_spaces_and_parentheses(tmp_path: Path) -> None:
    # The kernel names a process after the file it ran, here "we) ird": the stat line's
    # fields after the name must still be found.
    odd = tmp_path / "we) ird"
    odd.symlink_to(sys.executable)
    child = subprocess.Popen([str(odd), "-c", "import time; time.sleep(60)"])
    try:
        assert psutil.Process(child.pid).name() == "we) ird"
        mark = start_mark(child.pid)
        assert mark is not None
        # The ticks since boot, over the clock's ticks per second and after the boot time,
        # are the start time psutil gives.
        ticks = int(mark.rsplit(":", 1)[1])
        started = ticks / os.sysconf("SC_CLK_TCK") + psutil.boot_time()
        assert started == pytest.approx(psutil.Process(child.pid).create_time(), abs=1e-6)
    finally:
        child.kill()
        child.wait()


def report_of(status: WorkerStatus, process: psutil.Process, started: str | None) -> Path:
    path = status.directory / f"{process.pid}.json"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    report = {"pid": process.pid, "started": started, "worker": "2", "revision": 3, "at": "", "loaded_tags": []}
    path.write_text(json.dumps(report))
    return path


def test_a_live_workers_report_stays_when_the_clock_is_set(
    tmp_path: Path, other_process: psutil.Process, set_clock_forward: Callable[[], None]
) -> None:
    status = WorkerStatus(tmp_path / "routing.yaml")
    try:
        path = report_of(status, other_process, start_mark(other_process.pid))
        set_clock_forward()
        assert [w["pid"] for w in status.workers()] == [other_process.pid]
        assert path.exists()
    finally:
        shutil.rmtree(status.directory, ignore_errors=True)


def test_a_report_whose_pid_another_process_took_is_removed(tmp_path: Path, other_process: psutil.Process) -> None:
    status = WorkerStatus(tmp_path / "routing.yaml")
    try:
        path = report_of(status, other_process, f"{start_mark(os.getpid())}")  # the pid's earlier owner
        assert status.workers() == []
        assert not path.exists()
    finally:
        shutil.rmtree(status.directory, ignore_errors=True)


def test_another_servers_drift_directory_stays_when_the_clock_is_set_and_an_ended_ones_goes(
    other_process: psutil.Process, set_clock_forward: Callable[[], None]
) -> None:
    root = drift_counts.server_directory().parent
    live = root / f"{other_process.pid}-{start_mark(other_process.pid)}"
    ended = root / f"{ended_pid()}-{start_mark(os.getpid())}"
    for directory in (live, ended):
        directory.mkdir()
        (directory / "iris+v1.r1.p1.counts").write_bytes(b"\0" * 8)
    set_clock_forward()
    try:
        own = drift_counts.server_directory()  # what every worker does as it starts
        assert own.name == f"{os.getppid()}-{start_mark(os.getppid())}"
        assert (live / "iris+v1.r1.p1.counts").exists()
        assert not ended.exists()
    finally:
        for directory in (live, ended):
            shutil.rmtree(directory, ignore_errors=True)


def test_an_earlier_versions_drift_directory_stays_while_its_server_runs(other_process: psutil.Process) -> None:
    root = drift_counts.server_directory().parent
    earlier_version = root / f"{other_process.pid}-{other_process.create_time():.2f}"
    reused_pid = root / f"{other_process.pid}-{other_process.create_time() - 5:.2f}"
    for directory in (earlier_version, reused_pid):
        directory.mkdir()
    try:
        drift_counts.server_directory()
        assert earlier_version.exists()
        assert not reused_pid.exists()
    finally:
        for directory in (earlier_version, reused_pid):
            shutil.rmtree(directory, ignore_errors=True)
