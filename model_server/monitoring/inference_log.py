"""The inference log: answered rows and the feedback on them, as Parquet files, for audit
and retraining (`python -m training --from-log`). Off by default (settings.inference_log).

A request's rows go into a bounded queue, and one writer thread per worker, waking five
times a second (never woken by a request), turns them into Parquet: logging never blocks
or fails a request; rows that find the queue full are dropped and counted
(model_server_inference_log_rows{outcome="dropped"}). Each worker writes its own files,
one per served name and tag at a time, under `predictions/{name}/{version}/`, and the
feedback it received under `feedback/{name}/`; a file is written as `*.parquet.partial`
and renamed to `*.parquet` when it closes, past `rotate_bytes` or `rotate_seconds`, so a
reader only ever sees whole files. After each close, the oldest files of every worker are
removed until the log holds at most `max_bytes` (their rows counted as removed).

Columns of a predictions file: id, time, name, tag, runtime, request_id, key_fingerprint
(the caller key's keyed hash, as in the prediction id; null without a key), one
`input.<feature>` per feature (a number, or the category as text, null when missing), and
`output.predict` (the class or value) with, for a classifier, `output.probability.<class>`.
A feedback file: id, time, name, tag, status, truth (the class as text, or the number).

With `cloudevents_url`, each logged request is also sent as two CloudEvents over HTTP
(binary mode), as KServe's logger does: `org.kubeflow.serving.inference.request` with the
inputs and `org.kubeflow.serving.inference.response` with the outputs and ids, `ce-id`
the request id. Sent by the writer thread, two seconds at most each; failures are counted.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from model_server.config.settings import InferenceLogSettings
from model_server.models.schema import InputSchema
from model_server.monitoring.metrics import Metrics
from model_server.monitoring.prediction_ids import PredictionIds

log = logging.getLogger(__name__)

WRITE_EVERY_S = 1.0  # rows waiting in the writer are written as a row group at least this often
POLL_S = 0.2  # how often the writer wakes to take what the requests queued
CLOUDEVENT_TIMEOUT_S = 2.0


class Answered(NamedTuple):
    """One answered request, as the core hands it to the log."""

    name: str
    tag: str
    runtime: str
    schema: InputSchema
    matrix: np.ndarray
    output: np.ndarray
    ids: tuple[str, ...]
    key: str | None
    request_id: str | None
    time: float


@dataclass(frozen=True)
class FedBack:
    """Feedback items a worker judged: (id, tag, status, truth) each."""

    name: str
    items: list[tuple[str, str, str, Any]]
    time: float


class InferenceLog:
    """This worker's queue and writer thread."""

    def __init__(self, settings: InferenceLogSettings, directory: Path, metrics: Metrics, ids: PredictionIds) -> None:
        self.settings = settings
        self.directory = directory
        self._metrics = metrics
        self._ids = ids
        # Appended by the event loop, emptied by the writer when it wakes (every POLL_S): a
        # request never wakes the writer, which would take the GIL from the event loop.
        self._entries: collections.deque[Answered | FedBack] = collections.deque()
        self._stop = threading.Event()
        # Rows queued (counted by the event loop) and taken (by the writer): each counter has
        # one writer, so no lock; their difference is what waits.
        self._queued = 0
        self._taken = 0
        self._worker = f"{socket.gethostname()}-{os.getpid()}"
        self._files: dict[tuple[str, ...], _File] = {}
        self._sequence = 0
        self._thread = threading.Thread(target=self._write_all, name="inference-log", daemon=True)
        self._thread.start()

    def record(self, answered: Answered) -> None:
        """Queue a request's rows (drawn at the sampling rate), or count them as dropped."""
        rate = self.settings.sample_rate
        if rate < 1 and random.random() >= rate:
            return
        rows = len(answered.ids)
        if self._queued - self._taken + rows > self.settings.queue_rows:
            self._metrics.observe_inference_log("dropped", rows)
            return
        self._queued += rows
        self._entries.append(answered)

    def feedback(self, fed: FedBack) -> None:
        """Queue judged feedback items (never dropped for the queue's bound: they are few and small)."""
        self._entries.append(fed)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, close every file, and stop the thread."""
        self._stop.set()
        self._thread.join(timeout)

    # -- the writer thread -----------------------------------------------------------

    def _write_all(self) -> None:
        while True:
            stopping = self._stop.wait(POLL_S)
            try:
                while self._entries:
                    entry = self._entries.popleft()
                    if isinstance(entry, Answered):
                        self._add_answered(entry)
                    else:
                        self._add_feedback(entry)
                self._flush_due()
            except Exception:
                log.exception("the inference log failed to write")
            if stopping:
                break
        for file in list(self._files.values()):
            self._close(file)

    def _add_answered(self, answered: Answered) -> None:
        rows = len(answered.ids)
        self._taken += rows
        version = answered.tag.partition(":")[2]
        file = self._file(("predictions", answered.name, version), self._prediction_columns)
        file.add(answered, rows)  # turned into columns a row group at a time (_prediction_columns)
        if self.settings.cloudevents_url:
            self._send_events(answered)

    def _add_feedback(self, fed: FedBack) -> None:
        self._file(("feedback", fed.name), _feedback_columns).add(fed, len(fed.items))

    def _prediction_columns(self, entries: list[Any]) -> dict[str, Any]:
        return prediction_columns(entries, [self._fingerprint(entry.key) for entry in entries])

    def _fingerprint(self, key: str | None) -> str | None:
        if key is None:
            return None
        unit, _ = self._ids.unit_of(key, b"")
        return f"{unit:016x}"

    def _file(self, where: tuple[str, ...], columns: Callable[[list[Any]], dict[str, Any]]) -> _File:
        file = self._files.get(where)
        if file is None:
            self._sequence += 1
            folder = self.directory.joinpath(*where)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{self._worker}-{int(time.time() * 1000)}-{self._sequence}.parquet"
            file = self._files[where] = _File(path, where, columns)
        return file

    def _flush_due(self) -> None:
        """Write waiting rows as a row group at least once a second; close files past their
        size or age; then keep the whole log under max_bytes."""
        now = time.monotonic()
        closed = False
        for file in list(self._files.values()):
            if now - file.flushed >= WRITE_EVERY_S:
                file.flush()
            if file.size >= self.settings.rotate_bytes or now - file.opened >= self.settings.rotate_seconds:
                self._close(file)
                closed = True
        if closed:
            self._bound()

    def _close(self, file: _File) -> None:
        self._files.pop(file.where, None)
        written = file.close()
        if written:
            self._metrics.observe_inference_log("written" if file.where[0] == "predictions" else "feedback", written)

    def _bound(self) -> None:
        """Remove the oldest closed files of every worker until the log fits in max_bytes."""
        files = []
        for path in self.directory.rglob("*.parquet"):
            with contextlib.suppress(OSError):
                files.append((path.stat().st_mtime, path.stat().st_size, path))
        total = sum(size for _, size, _ in files) + sum(f.size for f in self._files.values())
        for _, size, path in sorted(files):
            if total <= self.settings.max_bytes:
                break
            rows = _rows_of(path)
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
                self._metrics.observe_inference_log("removed", rows)

    def _send_events(self, answered: Answered) -> None:
        """The request and the answer as CloudEvents, in KServe's logger format."""
        assert self.settings.cloudevents_url is not None
        columns = prediction_columns([answered], [None])
        inputs = {k.removeprefix("input."): _listed(v) for k, v in columns.items() if k.startswith("input.")}
        outputs = {k.removeprefix("output."): _listed(v) for k, v in columns.items() if k.startswith("output.")}
        request_id = answered.request_id or answered.ids[0]
        for kind, body in (("request", {"inputs": inputs}), ("response", {"outputs": outputs, "ids": answered.ids})):
            event = urllib.request.Request(
                self.settings.cloudevents_url,
                data=json.dumps(body, default=_plain).encode(),
                method="POST",
                headers={
                    "content-type": "application/json",
                    "ce-specversion": "1.0",
                    "ce-id": request_id,
                    "ce-type": f"org.kubeflow.serving.inference.{kind}",
                    "ce-source": f"model-server/{answered.name}",
                    "ce-time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(answered.time)),
                    "ce-inferenceservicename": answered.name,
                    "ce-endpoint": answered.tag,
                },
            )
            try:
                with urllib.request.urlopen(event, timeout=CLOUDEVENT_TIMEOUT_S) as answer:
                    answer.read()
                self._metrics.observe_inference_log(f"event_{kind}_sent", 1)
            except OSError:
                self._metrics.observe_inference_log(f"event_{kind}_failed", 1)


class _File:
    """One Parquet file being written (`*.parquet.partial` until closed)."""

    def __init__(self, path: Path, where: tuple[str, ...], columns: Callable[[list[Any]], dict[str, Any]]) -> None:
        self.path, self.where = path, where
        self.opened = self.flushed = time.monotonic()
        self.rows = 0
        self.size = 0
        self._columns = columns  # what turns the waiting entries into one row group's columns
        self._waiting: list[Any] = []
        self._writer: Any = None

    def add(self, entry: Any, rows: int) -> None:
        if rows:
            self._waiting.append(entry)
            self.rows += rows

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.flushed = time.monotonic()
        if not self._waiting:
            return
        table = pa.table(self._columns(self._waiting))
        self._waiting = []
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path.with_suffix(".parquet.partial"), table.schema)
        self._writer.write_table(table)
        with contextlib.suppress(OSError):
            self.size = self.path.with_suffix(".parquet.partial").stat().st_size

    def close(self) -> int:
        """Close the file and make it visible; the rows it holds."""
        self.flush()
        if self._writer is None:
            return 0
        self._writer.close()
        os.replace(self.path.with_suffix(".parquet.partial"), self.path)
        return self.rows


def prediction_columns(entries: list[Answered], fingerprints: list[str | None]) -> dict[str, Any]:
    """The columns of answered requests of one tag: their matrices and outputs joined, and
    each column made at once (not row by row)."""
    schema = entries[0].schema
    counts = [len(entry.ids) for entry in entries]
    matrix = np.concatenate([entry.matrix for entry in entries]) if len(entries) > 1 else entries[0].matrix
    output = np.concatenate([entry.output for entry in entries]) if len(entries) > 1 else entries[0].output
    rows = int(sum(counts))

    def repeated(values: list[Any]) -> np.ndarray:
        return np.repeat(np.array(values, dtype=object), counts)

    columns: dict[str, Any] = {
        "id": [i for entry in entries for i in entry.ids],
        "time": np.repeat(np.array([int(entry.time * 1000) for entry in entries], dtype="datetime64[ms]"), counts),
        "name": repeated([entry.name for entry in entries]),
        "tag": repeated([entry.tag for entry in entries]),
        "runtime": repeated([entry.runtime for entry in entries]),
        "request_id": repeated([entry.request_id for entry in entries]),
        "key_fingerprint": repeated(fingerprints),
    }
    for index, feature in enumerate(schema.features):
        column = matrix[:, index]
        if feature.is_categorical:
            missing = (column == feature.missing) | _is_missing(column)
            values = column.astype(str).astype(object)
            values[missing] = None
            columns[f"input.{feature.name}"] = values
        else:
            columns[f"input.{feature.name}"] = column.astype(np.float64)
    if schema.is_classifier:
        columns["output.predict"] = np.asarray(schema.classes, dtype=object)[np.argmax(output, axis=1)]
        for index, label in enumerate(schema.classes):
            columns[f"output.probability.{label}"] = np.ascontiguousarray(output[:, index], dtype=np.float64)
    else:
        columns["output.predict"] = output.reshape(rows).astype(np.float64)
    return columns


def _feedback_columns(entries: list[FedBack]) -> dict[str, Any]:
    items = [(fed, item) for fed in entries for item in fed.items]
    return {
        "id": [item[0] for _, item in items],
        "time": np.array([int(fed.time * 1000) for fed, _ in items], dtype="datetime64[ms]"),
        "name": [fed.name for fed, _ in items],
        "tag": [item[1] for _, item in items],
        "status": [item[2] for _, item in items],
        "truth": [None if item[3] is None else str(item[3]) for _, item in items],
    }


def _is_missing(column: np.ndarray) -> np.ndarray:
    """Where an object column holds None (or NaN)."""
    return np.array([value is None or value != value for value in column.tolist()], dtype=bool)


def _rows_of(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception:
        return 0


def _listed(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _plain(value: Any) -> Any:
    """JSON for what json cannot encode itself (a NaN stays NaN; times as text)."""
    return str(value)
