"""Drift of live inputs and predictions against the training data, per served tag.

Registration stores a reference in the model's metadata (training/drift_reference.py):
for each feature its bins and the share of training rows in each (numbers: the deciles
of the training values, plus a bin for missing values; categories: one bin per category
seen in training, plus "missing" and "other"), and the same for the predictions
(classifiers: the predicted class; regressors: deciles of the predicted value).

Serving counts each live batch into the same bins, after the model call, in the thread
that ran it (the model thread, or the event loop for a short inline call): one broadcast
comparison for the numeric columns and one dictionary pass per categorical column, then
one `np.bincount`. Each worker process adds its counts to a small memory-mapped file of
its own in a directory of its server (named after the workers' parent process, so a new
server starts empty and two servers never mix). Any worker sums every worker's files,
so the answer is the same whichever worker gives it.
The window is one routing: a new revision, or other variants under the same revision,
starts new files.

PSI, the population stability index, compares the live share `a` of each bin with the
training share `e`: PSI = sum((a - e) * ln(a / e)). Both shares are floored at EPSILON
(1e-4), so that an empty bin counts as a tiny share instead of dividing by zero. By the
usual reading, below 0.1 is stable, 0.1 to 0.2 a moderate shift, above 0.2 a significant
one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil

from .errors import ModelServerError
from .schema import InputSchema

if TYPE_CHECKING:
    from .registry import LoadedModel
    from .server import ModelServer

log = logging.getLogger(__name__)

# Key of the drift reference inside a stored model's metadata.
REFERENCE_METADATA = "drift_reference"
REFERENCE_FORMAT = 1
EPSILON = 1e-4
DECILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MODERATE, SIGNIFICANT = 0.1, 0.2
TOP_FEATURES = 5

NUMERIC, CATEGORICAL, CLASSES = "numeric", "categorical", "classes"
HEADER = 2  # a counts file starts with the window's start (ms since the epoch) and the rows counted


class NoDriftReference(ModelServerError):
    """A tag has no drift reference (stored before references existed), or counting is off."""

    status = 409


@dataclass(frozen=True)
class Bins:
    """The bins of one feature or of the predictions, and the training share of each.

    numeric: edges e1 < ... < ek give the bins (< e1), [e1, e2), ..., (>= ek), then missing;
    categorical: one bin per category, then missing, then other (a category training never saw);
    classes: one bin per class.
    """

    name: str
    kind: str
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    expected: tuple[float, ...] = ()

    @property
    def size(self) -> int:
        if self.kind == NUMERIC:
            return len(self.edges) + 2
        if self.kind == CATEGORICAL:
            return len(self.categories) + 2
        return len(self.categories)

    def labels(self) -> list[str]:
        if self.kind == CATEGORICAL:
            return [*self.categories, "missing", "other"]
        if self.kind == CLASSES:
            return list(self.categories)
        edges = [f"{e:.6g}" for e in self.edges]
        if not edges:
            return ["any value", "missing"]
        between = [f"[{low}, {high})" for low, high in zip(edges, edges[1:], strict=False)]
        return [f"< {edges[0]}", *between, f">= {edges[-1]}", "missing"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "edges": list(self.edges),
            "categories": list(self.categories),
            "expected": list(self.expected),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Bins:
        bins = cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            edges=tuple(float(e) for e in data.get("edges", ())),
            categories=tuple(str(c) for c in data.get("categories", ())),
            expected=tuple(float(e) for e in data.get("expected", ())),
        )
        if bins.kind not in (NUMERIC, CATEGORICAL, CLASSES) or len(bins.expected) != bins.size:
            raise ValueError(f"bins of '{bins.name}' are malformed")
        return bins


@dataclass(frozen=True)
class DriftReference:
    """A tag's training distributions, and what counting a batch into them needs."""

    rows: int
    features: tuple[Bins, ...]
    predictions: Bins
    schema: InputSchema = field(repr=False, compare=False)
    # Derived once: where each bin's count lives in the flat counts vector, and the
    # numeric columns' edges as one padded matrix for a single broadcast comparison.
    offsets: np.ndarray = field(init=False, repr=False, compare=False)
    size: int = field(init=False, repr=False, compare=False)
    _numeric: list[int] = field(init=False, repr=False, compare=False)
    _padded: np.ndarray = field(init=False, repr=False, compare=False)
    _raw_base: np.ndarray = field(init=False, repr=False, compare=False)
    _to_flat: np.ndarray = field(init=False, repr=False, compare=False)
    _categorical: list[tuple[int, dict[str, int], int, int]] = field(init=False, repr=False, compare=False)
    _prediction_edges: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sizes = [b.size for b in self.features] + [self.predictions.size]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
        set_ = object.__setattr__
        set_(self, "offsets", offsets)
        set_(self, "size", int(offsets[-1]))
        # The numeric columns' edges, padded with +inf to one width m. A value's raw bin is
        # how many edges are not above it: the bin index for a number (padding never
        # counts), m for NaN (every comparison is False). `_to_flat` maps column j's raw
        # bin r, at j * (m + 1) + r, to its place in the flat vector (NaN: the missing bin).
        numeric = list(self.schema.numeric_columns)
        width = max([len(self.features[c].edges) for c in numeric], default=0) + 1
        padded = np.full((len(numeric), width), np.inf)
        to_flat = np.zeros(len(numeric) * (width + 1), np.intp)
        for row, column in enumerate(numeric):
            edges = self.features[column].edges
            padded[row, : len(edges)] = edges
            start = row * (width + 1)
            to_flat[start : start + len(edges) + 1] = offsets[column] + np.arange(len(edges) + 1)
            to_flat[start + width] = offsets[column] + len(edges) + 1
        set_(self, "_numeric", numeric)
        set_(self, "_padded", np.ascontiguousarray(padded[:, :, None]))  # columns x edges x 1
        set_(self, "_raw_base", (np.arange(len(numeric), dtype=np.intp) * (width + 1) + width)[:, None])
        set_(self, "_to_flat", to_flat)
        categorical = []
        for column in self.schema.categorical_columns:
            bins, start = self.features[column], int(offsets[column])
            lookup = {category: start + i for i, category in enumerate(bins.categories)}
            missing = start + len(bins.categories)
            marker = self.schema.features[column].missing
            if marker is not None:
                lookup[marker] = missing
            categorical.append((column, lookup, missing, missing + 1))
        set_(self, "_categorical", categorical)
        set_(self, "_prediction_edges", np.asarray(self.predictions.edges, dtype=np.float64))

    @classmethod
    def build(cls, schema: InputSchema, matrix: np.ndarray, output: np.ndarray) -> DriftReference:
        """The reference of training rows `matrix` (as the server sees rows) and the model's
        `output` on them: bins from the data, then the share of rows in each."""
        numbers = matrix[:, schema.numeric_columns].astype(np.float64)
        features: list[Bins] = []
        for i, feature in enumerate(schema.features):
            if feature.is_categorical:
                features.append(Bins(feature.name, CATEGORICAL, categories=feature.categories))
            else:
                column = numbers[:, schema.numeric_columns.index(i)]
                features.append(Bins(feature.name, NUMERIC, edges=_deciles(column)))
        if schema.is_classifier:
            predictions = Bins("predictions", CLASSES, categories=schema.classes)
        else:
            predictions = Bins("predictions", NUMERIC, edges=_deciles(np.asarray(output, np.float64)))
        unfilled = cls(int(matrix.shape[0]), tuple(features), predictions, schema)
        shares = unfilled.count(matrix, output) / max(1, matrix.shape[0])
        filled = [unfilled.share_of(b, i, shares) for i, b in enumerate([*features, predictions])]
        return cls(int(matrix.shape[0]), tuple(filled[:-1]), filled[-1], schema)

    def share_of(self, bins: Bins, index: int, shares: np.ndarray) -> Bins:
        part = shares[self.offsets[index] : self.offsets[index + 1]]
        return Bins(bins.name, bins.kind, bins.edges, bins.categories, tuple(round(float(s), 8) for s in part))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, as BentoML's model metadata stores it."""
        return {
            "format": REFERENCE_FORMAT,
            "rows": self.rows,
            "features": [b.to_dict() for b in self.features],
            "predictions": self.predictions.to_dict(),
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], schema: InputSchema) -> DriftReference | None:
        """The reference stored with a tag, or None (stored before references existed, or
        not matching the tag's schema: logged)."""
        data = metadata.get(REFERENCE_METADATA)
        if not data:
            return None
        try:
            features = tuple(Bins.from_dict(f) for f in data["features"])
            if [b.name for b in features] != schema.names:
                raise ValueError("its features differ from the input schema's")
            return cls(int(data["rows"]), features, Bins.from_dict(data["predictions"]), schema)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring a malformed drift reference: %s", exc)
            return None

    def count(self, matrix: np.ndarray, output: np.ndarray) -> np.ndarray:
        """How many of the batch's rows fall in each bin: one flat vector, features in
        schema order, then the predictions."""
        parts = []
        if self._numeric:
            numbers = matrix if len(self._numeric) == matrix.shape[1] else matrix[:, self._numeric]
            # Columns x rows, contiguous, so the comparison's inner loop runs along the rows.
            columns = np.ascontiguousarray(numbers.T, dtype=np.float64)
            above = np.add.reduce(columns[:, None, :] < self._padded, axis=1, dtype=np.intp)
            parts.append(self._to_flat[(self._raw_base - above).ravel()])
        for column, lookup, missing_bin, other in self._categorical:
            values = matrix[:, column]
            parts.append(
                np.fromiter(
                    (lookup.get(v, other) if type(v) is str else missing_bin for v in values), np.intp, len(values)
                )
            )
        start = self.offsets[-2]
        if self.predictions.kind == CLASSES:
            parts.append(output.argmax(axis=1) + start)
        else:
            values = np.asarray(output, np.float64).reshape(-1)
            index = (values[:, None] >= self._prediction_edges).sum(axis=1) + start
            parts.append(np.where(np.isnan(values), start + len(self._prediction_edges) + 1, index))
        return np.bincount(np.concatenate(parts), minlength=self.size)


def psi(expected: np.ndarray, counts: np.ndarray) -> float | None:
    """The population stability index of `counts` against the `expected` shares (None when
    nothing was counted)."""
    total = counts.sum()
    if total == 0:
        return None
    actual = np.maximum(counts / total, EPSILON)
    reference = np.maximum(np.asarray(expected, np.float64), EPSILON)
    return float(np.sum((actual - reference) * np.log(actual / reference)))


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
        """Remove a private directory (outside BentoML); a server's stays for its workers."""
        if self._private and self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def start_window(self, revision: int, models: dict[str, LoadedModel], window: str | None = None) -> None:
        """Count from now on into new files for the routing's `window` (Routing.window;
        the revision alone when not given); this worker's files of earlier windows are
        removed."""
        if not self.enabled:
            return
        key = window or str(revision)
        previous = self._files
        self._files = {
            tag: self._open(tag, key, model.drift.size) for tag, model in models.items() if model.drift is not None
        }
        self.revision, self.window_key = revision, key
        for tag in previous:
            for path in self.directory.glob(f"{_file_tag(tag)}.r*.p{os.getpid()}.counts"):
                if not path.name.startswith(f"{_file_tag(tag)}.r{key}."):
                    with contextlib.suppress(OSError):
                        path.unlink()

    def add(self, model: LoadedModel, matrix: np.ndarray, output: np.ndarray) -> None:
        """Count one batch the model answered (in the thread that ran the model call)."""
        counts = self._files.get(model.tag)
        if counts is None or model.drift is None:
            return
        found = model.drift.count(matrix, output)
        with self._lock:
            counts[1] += matrix.shape[0]
            counts[HEADER:] += found

    def window(self, model: LoadedModel) -> Window:
        """The tag's counts in the current window, summed over every worker's file."""
        if not self.enabled:
            raise NoDriftReference("drift counting is off on this server (setting drift_counting: false)")
        if model.drift is None:
            raise NoDriftReference(no_reference(model.tag))
        size = model.drift.size
        started, counts, workers = 0, np.zeros(size, np.int64), []
        for values in self._read(model.tag, self.window_key, size):
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
        if pid.isdigit() and int(pid) != parent and _process_started(int(pid)) != started:
            shutil.rmtree(other, ignore_errors=True)
    return root / f"{parent}-{_process_started(parent)}"


def _process_started(pid: int) -> str:
    """When process `pid` started, as text ("" when there is no such process)."""
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return ""


def no_reference(tag: str) -> str:
    return (
        f"'{tag}' has no drift reference: it was registered before drift references existed. Add one with "
        f"`python -m training refresh {tag}` (a tag trained on your own table or imported also needs "
        "`--rows FILE`, its training rows), then restart the server."
    )


def report(server: ModelServer, name: str, version: str | None = None) -> dict[str, Any]:
    """The drift answer of a served name: each tag's window, counts and PSI (every tag that
    serves it, or the pinned `version`'s). ModelNotFound, or NoDriftReference when no tag
    asked for has a reference."""
    served = server.describe(name)  # ModelNotFound
    if version is not None:
        tags = [server.resolve(name, version).model.tag]
    else:
        tags = [server.resolve(name, v).model.tag for v in served.versions]
    models = [server.state.models[tag] for tag in tags]
    answers, refusals = [], []
    for model in models:
        try:
            answers.append(tag_report(model, server.drift.window(model)))
        except NoDriftReference as exc:
            refusals.append(str(exc))
            answers.append({"tag": model.tag, "reference": False, "message": str(exc)})
    if len(refusals) == len(models):
        raise NoDriftReference(" ".join(dict.fromkeys(refusals)))
    return {
        "model": name,
        "routing_revision": server.drift.revision,
        "thresholds": {"moderate": MODERATE, "significant": SIGNIFICANT},
        "epsilon": EPSILON,
        "tags": answers,
    }


def tag_report(model: LoadedModel, window: Window) -> dict[str, Any]:
    """One tag's window, its bins (expected share, count) and the PSI of each feature and
    of the predictions."""
    reference = model.drift
    assert reference is not None
    every = [*reference.features, reference.predictions]
    described: list[dict[str, Any]] = []
    for i, bins in enumerate(every):
        counts = window.counts[reference.offsets[i] : reference.offsets[i + 1]]
        described.append(
            {
                "name": bins.name,
                "kind": bins.kind,
                "psi": _rounded(psi(np.asarray(bins.expected), counts)),
                "bins": [
                    {"bin": label, "expected": share, "count": int(count)}
                    for label, share, count in zip(bins.labels(), bins.expected, counts, strict=True)
                ],
            }
        )
    features, predictions = described[:-1], described[-1]
    ranked = sorted((f for f in features if f["psi"] is not None), key=lambda f: -float(f["psi"]))
    return {
        "tag": model.tag,
        "reference": True,
        "window": {"since": window.since, "rows": window.rows, "rows_per_worker": list(window.worker_rows)},
        "reference_rows": reference.rows,
        "psi": {
            "predictions": predictions["psi"],
            "features": {f["name"]: f["psi"] for f in features},
        },
        "top_drifting": [{"feature": f["name"], "psi": f["psi"]} for f in ranked[:TOP_FEATURES]],
        "features": features,
        "predictions": predictions,
    }


def metrics_text(server: ModelServer) -> str:
    """Drift gauges in Prometheus' text format, computed now from every worker's counts
    (appended to BentoML's /metrics at each scrape)."""
    if not server.drift.enabled:
        return ""
    import prometheus_client
    from prometheus_client.core import GaugeMetricFamily

    labels = ["model", "tag"]
    rows = GaugeMetricFamily("model_server_drift_rows", "Rows counted for drift in the current window.", labels=labels)
    started = GaugeMetricFamily(
        "model_server_drift_window_start_seconds",
        "When the current drift window started (the routing revision's start), seconds since the epoch.",
        labels=labels,
    )
    features = GaugeMetricFamily(
        "model_server_feature_psi",
        "PSI of each feature's live values against the training data, in the current window.",
        labels=[*labels, "feature"],
    )
    predictions = GaugeMetricFamily(
        "model_server_prediction_psi",
        "PSI of the live predictions against the predictions on the training data, in the current window.",
        labels=labels,
    )
    for tag, model in server.state.models.items():
        if model.drift is None:
            continue
        window = server.drift.window(model)
        rows.add_metric([model.name, tag], window.rows)
        started.add_metric([model.name, tag], window.started_ms / 1000)
        if not window.rows:
            continue
        reference = model.drift
        for i, bins in enumerate([*reference.features, reference.predictions]):
            value = psi(np.asarray(bins.expected), window.counts[reference.offsets[i] : reference.offsets[i + 1]])
            if value is None:
                continue
            if i < len(reference.features):
                features.add_metric([model.name, tag, bins.name], value)
            else:
                predictions.add_metric([model.name, tag], value)

    class Collected:
        def collect(self) -> Iterator[Any]:
            yield from (rows, started, features, predictions)

    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(Collected())  # type: ignore[arg-type]
    return prometheus_client.generate_latest(registry).decode()


def _deciles(values: np.ndarray) -> tuple[float, ...]:
    present = values[~np.isnan(values)]
    if present.size == 0:
        return ()
    return tuple(float(e) for e in np.unique(np.quantile(present, DECILES)))


def _file_tag(tag: str) -> str:
    return tag.replace(":", "+")


def _rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 6)
