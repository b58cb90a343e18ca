"""Outcomes fed back by prediction id: counted once, summed over every worker.

Each worker appends the outcomes it accepts, one fixed-size record per row, to a file of
its own per tag and routing window, in a directory its server's workers share (by
default the one drift counts use, `drift_counts.server_directory`; the setting
`outcomes_directory` names another, such as a volume that every replica mounts).
Whichever worker answers reads every worker's file of the current window, so live
quality is the same whichever worker gives it; a new routing window starts new files.

Replays: the first worker to accept an id creates an empty marker file named after the
id's signature, with an exclusive create (O_CREAT | O_EXCL), in a folder of the hour the
prediction was made; a second create of the same name fails, whichever worker (or
replica sharing the directory) tries it, and that feedback is a duplicate. Ids older than
`feedback_max_age_s` are refused as expired, so markers older than that are never needed
and their hour folders are removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from model_server.monitoring.drift_counts import server_directory

# One accepted outcome. Classifiers fill predicted, truth, p_true (the probability given
# to the true class) and p_positive (binary only, else NaN); regressors fill prediction
# and truth_value.
RECORD = np.dtype(
    [
        ("unit", "<u8"),
        ("keyed", "u1"),
        ("predicted", "<i4"),
        ("truth", "<i4"),
        ("p_true", "<f8"),
        ("p_positive", "<f8"),
        ("prediction", "<f8"),
        ("truth_value", "<f8"),
        ("time_ms", "<i8"),
    ]
)
HOUR_MS = 3_600_000
PRUNE_EVERY_S = 60.0


class OutcomeStore:
    """This worker's outcome files and replay markers, and the sums over every worker."""

    def __init__(self, directory: Path | None = None, max_age_s: float = 30 * 86400) -> None:
        self._directory = directory
        self._private = False
        self.max_age_s = max_age_s
        self.window_key = ""
        self.revision = -1
        self._files: dict[str, int] = {}  # tag -> descriptor of this worker's file in the window
        self._worker = f"{socket.gethostname()}-{os.getpid()}"
        self._pruned = 0.0

    @property
    def directory(self) -> Path:
        if self._directory is None:
            inside_bentoml = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
            base = server_directory() if inside_bentoml else Path(tempfile.mkdtemp(prefix="outcomes-"))
            self._directory = base / "outcomes" if inside_bentoml else base
            self._private = not inside_bentoml
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._directory

    def close(self) -> None:
        for descriptor in self._files.values():
            with contextlib.suppress(OSError):
                os.close(descriptor)
        self._files = {}
        if self._private and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def start_window(self, revision: int, window: str) -> None:
        """Count into new files from now on (the routing's window, Routing.window)."""
        if window == self.window_key:
            return
        previous = self._files
        self._files = {}
        self.window_key, self.revision = window, revision
        for descriptor in previous.values():
            with contextlib.suppress(OSError):
                os.close(descriptor)
        if self._directory is None and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return  # nothing written yet outside a server: no directory to clean
        for path in self.directory.glob(f"*.{self._worker}.outcomes"):
            if f".r{window}." not in path.name:
                with contextlib.suppress(OSError):
                    path.unlink()  # this worker's files of earlier windows

    def add(self, tag: str, records: np.ndarray) -> None:
        """Append accepted outcomes of `tag` to this worker's file (one write: whole records)."""
        if not len(records):
            return
        descriptor = self._files.get(tag)
        if descriptor is None:
            path = self.directory / f"{_file_tag(tag)}.r{self.window_key}.{self._worker}.outcomes"
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._files[tag] = descriptor
        os.write(descriptor, records.astype(RECORD, copy=False).tobytes())

    def read(self, tag: str) -> tuple[np.ndarray, tuple[int, ...]]:
        """Every worker's outcomes of `tag` in the current window, and how many each worker holds."""
        parts, workers = [], []
        for path in sorted(self.directory.glob(f"{_file_tag(tag)}.r{self.window_key}.*.outcomes")):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            whole = len(data) - len(data) % RECORD.itemsize  # a record being written is left for the next read
            records = np.frombuffer(data[:whole], dtype=RECORD)
            parts.append(records)
            workers.append(len(records))
        records = np.concatenate(parts) if parts else np.zeros(0, RECORD)
        return records, tuple(sorted(workers, reverse=True))

    def first_time(self, digest: bytes, time_ms: int) -> bool:
        """Whether this is the first time an id (its signature `digest`) is fed back, here or
        in any worker sharing the directory: an exclusive create of its marker."""
        self._prune()
        folder = self.directory / "seen" / str(time_ms // HOUR_MS) / digest[:1].hex()
        folder.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(folder / digest[1:].hex(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
        return True

    def _prune(self) -> None:
        """Remove the markers of hours older than the maximum age (at most once a minute)."""
        now = time.monotonic()
        if now - self._pruned < PRUNE_EVERY_S:
            return
        self._pruned = now
        oldest = int((time.time() - self.max_age_s) * 1000) // HOUR_MS - 1
        seen = self.directory / "seen"
        if not seen.is_dir():
            return
        for hour in seen.iterdir():
            if hour.name.isdigit() and int(hour.name) < oldest:
                shutil.rmtree(hour, ignore_errors=True)


def _file_tag(tag: str) -> str:
    return tag.replace(":", "+")
