"""Counting live batches into each served tag's drift bins, summed over every worker.

Serving counts each live batch into the same bins, after the model call: one broadcast
comparison for the numeric columns and one dictionary pass per categorical column, then
one `np.bincount`. A batch the model thread ran is counted there at once. The small
batches of short inline calls on the event loop (one request each at low load) are
counted together: they wait, at most `COUNT_AFTER` seconds or until `COUNT_ROWS` rows
are waiting, and are counted as one batch, since counting one row costs nearly as much
as counting hundreds. Each worker process adds its counts to a small memory-mapped file of
its own in a directory of its server (named after the workers' parent process, so a new
server starts empty and two servers never mix). Any worker sums every worker's files,
so the answer is the same whichever worker gives it; a worker's own waiting rows are
counted before it answers, another worker's within `COUNT_AFTER` seconds.
The window is one routing: a new revision, or other variants under the same revision,
starts new files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from model_server.errors import NoDriftReference
from model_server.models.drift_reference import DriftReference
from model_server.processes import is_running, start_mark

log = logging.getLogger(__name__)

HEADER = 2  # a counts file starts with the window's start (ms since the epoch) and the rows counted
# Rows of inline calls wait at most this long, or until this many wait, to be counted together.
COUNT_AFTER = 0.05
COUNT_ROWS = 512


@dataclass(frozen=True)
class Window:
    """Counts of one tag summed over every worker, since the window started."""

    started_ms: int  # 0: no worker has started one yet
    rows: int
    counts: np.ndarray
    worker_rows: tuple[int, ...] = ()  # rows each worker process counted, most first

    @property
    def since(self) -> str | None:
        if not self.started_ms:
            return None
        return datetime.fromtimestamp(self.started_ms / 1000, UTC).isoformat(timespec="milliseconds")


class DriftCounter:
    """This worker's counts of every served tag in the current window, and the sums over
    every worker's counts.

    The files live in `directory`; by default the server's own (server_directory), shared
    by its workers, or a private temporary one outside BentoML.
    """

    def __init__(self, enabled: bool = True, directory: Path | None = None) -> None:
        self.enabled = enabled
        self._directory = directory
        self._files: dict[str, np.ndarray] = {}  # tag -> this worker's counts in the current window
        self._private = False
        # Two threads may count one tag (the old batcher's last call and a new one's, while
        # a runtime changes); numpy may release the GIL inside `+=`.
        self._lock = threading.Lock()
        # Inline calls' batches waiting to be counted together: (tag, reference, inputs, outputs).
        self._waiting: list[tuple[str, DriftReference, np.ndarray, np.ndarray]] = []
        self._waiting_rows = 0
        self._timer_loop: asyncio.AbstractEventLoop | None = None  # the loop whose timer will count them
        self.revision = -1
        self.window_key = ""  # the routing's window (Routing.window): its files' names hold it

    @property
    def directory(self) -> Path:
        if self._directory is None:
            # In a BentoML worker (which has set PROMETHEUS_MULTIPROC_DIR) the workers of one
            # server share a directory; outside one, each counter has a private one.
            inside_bentoml = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
            self._directory = server_directory() if inside_bentoml else Path(tempfile.mkdtemp(prefix="drift-"))
            self._private = not inside_bentoml
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._directory

    def close(self) -> None:
        """Count what waits; remove a private directory (outside BentoML); a server's stays
        for its workers."""
        self.count_waiting()
        if self._private and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def start_window(
        self, revision: int, references: dict[str, DriftReference | None], window: str | None = None
    ) -> None:
        """Count from now on into new files for the routing's `window` (Routing.window;
        the revision alone when not given), for each served tag with a reference; this
        worker's files of earlier windows are removed."""
        if not self.enabled:
            return
        self.count_waiting()  # rows answered under the old routing count in its window
        key = window or str(revision)
        previous = self._files
        self._files = {
            tag: self._open(tag, key, reference.size) for tag, reference in references.items() if reference is not None
        }
        self.revision, self.window_key = revision, key
        for tag in previous:
            for path in self.directory.glob(f"{_file_tag(tag)}.r*.p{os.getpid()}.counts"):
                if not path.name.startswith(f"{_file_tag(tag)}.r{key}."):
                    with contextlib.suppress(OSError):
                        path.unlink()

    def add(self, tag: str, reference: DriftReference, matrix: np.ndarray, output: np.ndarray) -> None:
        """Count one batch the tag answered: at once in the model thread (or outside a
        loop); on the event loop, with the other small batches of the next `COUNT_AFTER`
        seconds."""
        if tag not in self._files:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or matrix.shape[0] >= COUNT_ROWS:
            self._count(tag, reference, matrix, output)
            return
        with self._lock:
            self._waiting.append((tag, reference, matrix, output))
            self._waiting_rows += matrix.shape[0]
            full = self._waiting_rows >= COUNT_ROWS
        if full:
            self.count_waiting()
        elif self._timer_loop is not loop:
            self._timer_loop = loop
            loop.call_later(COUNT_AFTER, self._on_timer)

    def count_waiting(self) -> None:
        """Count the batches waiting, one count per tag."""
        with self._lock:
            waiting, self._waiting, self._waiting_rows = self._waiting, [], 0
        if not waiting:
            return
        groups: dict[tuple[str, int], list[tuple[str, DriftReference, np.ndarray, np.ndarray]]] = {}
        for item in waiting:
            groups.setdefault((item[0], id(item[1])), []).append(item)
        for items in groups.values():
            tag, reference = items[0][0], items[0][1]
            try:
                if len(items) == 1:
                    self._count(tag, reference, items[0][2], items[0][3])
                else:
                    matrix = np.concatenate([item[2] for item in items])
                    self._count(tag, reference, matrix, np.concatenate([item[3] for item in items]))
            except Exception:  # a failed count is logged; it never fails a request or a read
                log.exception("counting %s's batches for drift failed", tag)

    def _on_timer(self) -> None:
        self._timer_loop = None
        self.count_waiting()

    def _count(self, tag: str, reference: DriftReference, matrix: np.ndarray, output: np.ndarray) -> None:
        counts = self._files.get(tag)
        if counts is None:
            return
        found = reference.count(matrix, output)
        with self._lock:
            counts[1] += matrix.shape[0]
            counts[HEADER:] += found

    def window(self, tag: str, reference: DriftReference | None) -> Window:
        """The tag's counts in the current window, summed over every worker's file."""
        if not self.enabled:
            raise NoDriftReference("drift counting is off on this server (setting drift_counting: false)")
        if reference is None:
            raise NoDriftReference(no_reference(tag))
        self.count_waiting()
        size = reference.size
        started, counts, workers = 0, np.zeros(size, np.int64), []
        for values in self._read(tag, self.window_key, size):
            started = int(values[0]) if not started else min(started, int(values[0]))
            workers.append(int(values[1]))
            counts += values[HEADER:]
        return Window(started, sum(workers), counts, tuple(sorted(workers, reverse=True)))

    def _read(self, tag: str, window: str, size: int) -> Iterator[np.ndarray]:
        for path in self.directory.glob(f"{_file_tag(tag)}.r{window}.p*.counts"):
            try:
                values = np.fromfile(path, dtype=np.int64)
            except OSError:
                continue  # removed meanwhile
            if values.shape[0] == size + HEADER:
                yield values

    def _open(self, tag: str, window: str, size: int) -> np.ndarray:
        """This worker's counts file of `tag` in `window`: kept when it exists (the
        same window), else new, starting now."""
        path = self.directory / f"{_file_tag(tag)}.r{window}.p{os.getpid()}.counts"
        # A plain array over the mapping: np.memmap's own slicing costs several times more.
        if path.exists() and path.stat().st_size == (size + HEADER) * 8:
            return np.memmap(path, dtype=np.int64, mode="r+", shape=(size + HEADER,)).view(np.ndarray)
        counts = np.memmap(path, dtype=np.int64, mode="w+", shape=(size + HEADER,)).view(np.ndarray)
        counts[0] = int(time.time() * 1000)
        return counts


def server_directory() -> Path:
    """The counts directory of this worker's server: named after the workers' parent
    process (pid and start time), in a per-user 0700 folder of the system's temporary
    directory. Not BentoML's Prometheus directory, which another server started on the same
    BentoML home empties. Directories of servers that have ended are removed."""
    root = Path(tempfile.gettempdir()) / f"model-server-drift-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    if root.stat().st_uid != os.getuid():
        raise PermissionError(f"{root} belongs to another user")
    parent = os.getppid()
    for other in root.iterdir():
        pid, _, started = other.name.partition("-")
        if pid.isdigit() and int(pid) != parent and not is_running(int(pid), started):
            shutil.rmtree(other, ignore_errors=True)
    return root / f"{parent}-{start_mark(parent) or ''}"


def no_reference(tag: str) -> str:
    return (
        f"'{tag}' has no drift reference: it was registered before drift references existed. Add one with "
        f"`python -m training refresh {tag}` (a tag trained on your own table or imported also needs "
        "`--rows FILE`, its training rows), then restart the server."
    )


def _file_tag(tag: str) -> str:
    return tag.replace(":", "+")
