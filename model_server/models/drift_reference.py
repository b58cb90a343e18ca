"""Drift of live inputs and predictions against the training data, per served tag.

Registration stores a reference in the model's metadata (training/drift_reference.py):
for each feature its bins and the share of training rows in each (numbers: the deciles
of the training values, plus a bin for missing values; categories: one bin per category
seen in training, plus "missing" and "other"), and the same for the predictions
(classifiers: the predicted class; regressors: deciles of the predicted value).

How serving counts live batches is in drift_counts.py; the drift answer and the
Prometheus gauges are built in drift_report.py.

PSI, the population stability index, compares the live share `a` of each bin with the
training share `e`: PSI = sum((a - e) * ln(a / e)). Both shares are floored at EPSILON
(1e-4), so that an empty bin counts as a tiny share instead of dividing by zero. By the
usual reading, below 0.1 is stable, 0.1 to 0.2 a moderate shift, above 0.2 a significant
one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from model_server.models.schema import InputSchema

log = logging.getLogger(__name__)

# Key of the drift reference inside a stored model's metadata.
REFERENCE_METADATA = "drift_reference"
REFERENCE_FORMAT = 1
EPSILON = 1e-4
DECILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MODERATE, SIGNIFICANT = 0.1, 0.2
# Fewer rows in a window give no reading: on a few rows every feature looks shifted.
MINIMUM_ROWS = 100
# From this many rows on, numeric bins are found by binary search rather than by comparing
# every value with every edge (batch scoring's batches; the server's stay below it).
SEARCH_FROM_ROWS = 4096

NUMERIC, CATEGORICAL, CLASSES = "numeric", "categorical", "classes"


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
    # For large batches: each numeric column's edges, each categorical column's index of
    # its lookup's keys and their bins.
    _edges: dict[int, tuple[float, ...]] = field(init=False, repr=False, compare=False)
    _indexes: dict[int, tuple[pd.Index, np.ndarray]] = field(init=False, repr=False, compare=False)
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
        set_(self, "_edges", {c: self.features[c].edges for c in numeric})
        indexes = {
            column: (pd.Index(list(lookup), dtype=object), np.fromiter(lookup.values(), np.intp, len(lookup)))
            for column, lookup, _, _ in categorical
        }
        set_(self, "_indexes", indexes)
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
        if matrix.shape[0] >= SEARCH_FROM_ROWS:
            return self._count_large(matrix, output)
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
        parts.append(self._prediction_bins(output))
        return np.bincount(np.concatenate(parts), minlength=self.size)

    def _prediction_bins(self, output: np.ndarray) -> np.ndarray:
        start = self.offsets[-2]
        if self.predictions.kind == CLASSES:
            return output.argmax(axis=1) + start
        values = np.asarray(output, np.float64).reshape(-1)
        index = (values[:, None] >= self._prediction_edges).sum(axis=1) + start
        return np.where(np.isnan(values), start + len(self._prediction_edges) + 1, index)

    def _count_large(self, matrix: np.ndarray, output: np.ndarray) -> np.ndarray:
        """The counts of a large batch (batch scoring), equal to the comparison's, column by
        column. A number's bin is how many edges are not above it, so with g_j the count of
        values >= edge j (g_0: every value but NaN) bin b holds g_b - g_(b+1); +inf, counted
        in the last bin's g, and NaN fall in the missing bin. Categories: a hash lookup of
        the whole column."""
        counts = np.zeros(self.size, np.int64)
        for column in self._numeric:
            values = np.asarray(matrix[:, column], dtype=np.float64)
            nan = int(np.count_nonzero(np.isnan(values)))
            infinite = int(np.count_nonzero(np.isposinf(values)))
            above = [values.size - nan] + [int(np.count_nonzero(values >= edge)) for edge in self._edges[column]]
            start, last = int(self.offsets[column]), len(above) - 1
            counts[start : start + last] = np.subtract(above[:-1], above[1:])
            counts[start + last] = above[-1] - infinite
            counts[start + last + 1] = nan + infinite
        for column, _, missing_bin, other in self._categorical:
            values = matrix[:, column]
            known, bins = self._indexes[column]
            index = known.get_indexer(pd.Index(values, dtype=object, copy=False))  # no inference of a str dtype
            found = np.where(index >= 0, bins[index], other)
            # A value no category matches: "other" for a string, the missing bin for anything else.
            for row in np.flatnonzero(index < 0).tolist():
                if type(values[row]) is not str:
                    found[row] = missing_bin
            counts += np.bincount(found, minlength=self.size)
        counts += np.bincount(self._prediction_bins(output), minlength=self.size)
        return counts


def psi(expected: np.ndarray, counts: np.ndarray) -> float | None:
    """The population stability index of `counts` against the `expected` shares (None when
    nothing was counted)."""
    total = counts.sum()
    if total == 0:
        return None
    actual = np.maximum(counts / total, EPSILON)
    reference = np.maximum(np.asarray(expected, np.float64), EPSILON)
    return float(np.sum((actual - reference) * np.log(actual / reference)))


def _deciles(values: np.ndarray) -> tuple[float, ...]:
    present = values[~np.isnan(values)]
    if present.size == 0:
        return ()
    return tuple(float(e) for e in np.unique(np.quantile(present, DECILES)))
