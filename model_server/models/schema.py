"""The input schema a model was trained on, and validation of requests against it.

Training stores the schema in the model's metadata; serving rebuilds it and checks
every request before the model runs, so a bad request is a 400 naming the field
and the rule, never a 500.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

from model_server.constants import MISSING_TEXT
from model_server.errors import MAX_DETAILS, InvalidInput, echo, problem

# A value may exceed the largest magnitude seen in training by this factor, no more.
PLAUSIBLE_FACTOR = 1e6

CLASSIFICATION = "classification"
REGRESSION = "regression"
NUMERIC = "numeric"
CATEGORICAL = "categorical"
# Unknown categories: refused with a 400 naming the allowed values, or passed to the
# model's encoder (which ignores them) with a warning in the answer.
REJECT = "reject"
ACCEPT = "accept"


@dataclass(frozen=True)
class Feature:
    """One input column: its name and kind; the range (numeric) or the categories seen in
    training; and for a categorical one, what a missing value (null or MISSING_TEXT in a
    request) is passed to the model as (None: NaN)."""

    name: str
    dtype: str
    min: float = 0.0
    max: float = 0.0
    kind: str = NUMERIC
    categories: tuple[str, ...] = ()
    missing: str | None = None

    @property
    def is_categorical(self) -> bool:
        return self.kind == CATEGORICAL


@dataclass(frozen=True)
class InputSchema:
    """Features in training order, the task, and class names for classifiers."""

    task: str
    features: tuple[Feature, ...]
    classes: tuple[str, ...] = ()
    target: str = ""
    frame_input: bool = False  # the model takes a DataFrame with named columns
    feature_index: dict[str, int] = field(init=False, repr=False, compare=False)
    bounds: np.ndarray = field(init=False, repr=False, compare=False)
    names: list[str] = field(init=False, repr=False, compare=False)
    converters: list[Callable[[Any], Any]] = field(init=False, repr=False, compare=False)
    categorical_columns: list[int] = field(init=False, repr=False, compare=False)
    numeric_columns: list[int] = field(init=False, repr=False, compare=False)
    numeric_bounds: np.ndarray = field(init=False, repr=False, compare=False)
    numeric_min: np.ndarray = field(init=False, repr=False, compare=False)
    numeric_max: np.ndarray = field(init=False, repr=False, compare=False)
    # Per categorical column: its training categories and its missing marker, as a set.
    known_values: dict[int, frozenset[Any]] = field(init=False, repr=False, compare=False)
    _known_index: dict[int, pd.Index] = field(init=False, repr=False, compare=False)  # the same, for large batches

    def __post_init__(self) -> None:
        index = {f.name: i for i, f in enumerate(self.features)}
        object.__setattr__(self, "feature_index", index)
        object.__setattr__(self, "names", [f.name for f in self.features])
        # Values beyond these magnitudes are not data but noise that overflows the
        # model's arithmetic (scaling 1e308 gives infinity): a 400, not a 500.
        bounds = np.array([PLAUSIBLE_FACTOR * max(1.0, abs(f.min), abs(f.max)) for f in self.features])
        object.__setattr__(self, "bounds", bounds)
        converters = [_category(f.missing) if f.is_categorical else _number for f in self.features]
        object.__setattr__(self, "converters", converters)
        categorical = [i for i, f in enumerate(self.features) if f.is_categorical]
        object.__setattr__(self, "categorical_columns", categorical)
        numeric = [i for i, f in enumerate(self.features) if not f.is_categorical]
        object.__setattr__(self, "numeric_columns", numeric)
        object.__setattr__(self, "numeric_bounds", bounds[numeric])
        # The training range of each numeric column: a value outside it is answered, with a warning.
        object.__setattr__(self, "numeric_min", np.array([self.features[i].min for i in numeric], dtype=np.float64))
        object.__setattr__(self, "numeric_max", np.array([self.features[i].max for i in numeric], dtype=np.float64))
        known = {
            i: frozenset(f.categories) | ({f.missing} if f.missing is not None else set())
            for i, f in enumerate(self.features)
            if f.is_categorical
        }
        object.__setattr__(self, "known_values", known)
        object.__setattr__(self, "_known_index", {i: pd.Index(list(v), dtype=object) for i, v in known.items()})

    @property
    def has_categorical(self) -> bool:
        """Whether any feature is categorical: then rows are object arrays (str and float)."""
        return bool(self.categorical_columns)

    @property
    def is_classifier(self) -> bool:
        return self.task == CLASSIFICATION

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "target": self.target,
            # BentoML's metadata takes no None: an absent `missing` reads back as None.
            "features": [
                {**{k: v for k, v in asdict(f).items() if v is not None}, "categories": list(f.categories)}
                for f in self.features
            ],
            "classes": list(self.classes),
            "frame_input": self.frame_input,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSchema:
        return cls(
            task=data["task"],
            target=data.get("target", ""),
            # Schemas stored before categorical features existed are all numeric.
            features=tuple(Feature(**{**f, "categories": tuple(f.get("categories", ()))}) for f in data["features"]),
            classes=tuple(data.get("classes", ())),
            frame_input=bool(data.get("frame_input", False)),
        )

    def sample_matrix(self) -> np.ndarray:
        """One plausible row, as the model takes it: the middle of each numeric range and
        the first category seen in training (a warm-up call on a newly loaded tag)."""
        row = [
            (f.categories[0] if f.categories else "") if f.is_categorical else (f.min + f.max) / 2
            for f in self.features
        ]
        return self.rows_to_matrix([row], 1, ACCEPT)

    def positions(self, order: list[str] | None) -> list[int] | None:
        """Where each of this schema's features sits in `order` (another tag's order of the
        same features), or None when the orders agree (or no order is given)."""
        if order is None or order is self.names or order == self.names:
            return None
        where = {name: i for i, name in enumerate(order)}
        return [where[name] for name in self.names]

    def rows_to_matrix(
        self, instances: Any, max_rows: int, unknown_categories: str = REJECT, order: list[str] | None = None
    ) -> np.ndarray:
        """Turn JSON `instances` (records or rows) into a matrix in this schema's order, or
        raise InvalidInput.

        Records are objects keyed by feature name; rows are arrays in `order` (the name's
        published order, the same features), by default this schema's training order.
        `null` means a missing value, which the model's own imputer fills in.
        """
        return self.checked_rows(instances, max_rows, unknown_categories, order)[0]

    def checked_rows(
        self, instances: Any, max_rows: int, unknown_categories: str = REJECT, order: list[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """`rows_to_matrix`, and where the numeric values lie outside the training range
        (a mask over the numeric columns, None when every value is inside it)."""
        if not isinstance(instances, list):
            raise InvalidInput.at(["instances"], "must be a list of records or rows", "type")
        if not instances:
            raise InvalidInput.at(["instances"], "must hold at least one record or row", "empty")
        if len(instances) > max_rows:
            raise InvalidInput.at(
                ["instances"], f"holds {len(instances)} rows; at most {max_rows} are allowed", "too_long"
            )
        first = instances[0]
        if isinstance(first, dict):
            matrix, problems = self._records(instances)
        elif isinstance(first, list):
            positions = self.positions(order)
            plain = None if self.has_categorical else self._plain_rows(instances, positions)
            if plain is not None:
                matrix, problems = plain, []
            else:
                matrix, problems = self._rows(instances, positions)
        else:
            raise InvalidInput.at(
                ["instances", 0], "must be an object keyed by feature name or an array of values", "type"
            )
        if problems:
            raise InvalidInput.from_problems(problems)
        outside = self._check_plausible(self._numbers(matrix), ["instances"])
        if unknown_categories == REJECT:
            self._check_categories(matrix, ["instances"])
        return matrix, outside

    def check_matrix(self, matrix: np.ndarray, max_rows: int, unknown_categories: str = REJECT) -> np.ndarray:
        """Validate a 2-D input decoded from tensors against the schema: numbers, or for a
        model with categorical features an object array of numbers and strings.

        NaN (or None or MISSING_TEXT in a categorical column) is a missing value, as null is
        in JSON.
        """
        return self.checked_matrix(matrix, max_rows, unknown_categories)[0]

    def checked_matrix(
        self, matrix: np.ndarray, max_rows: int, unknown_categories: str = REJECT
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """`check_matrix`, and where the numeric values lie outside the training range (as
        `checked_rows`)."""
        width = len(self.features)
        if matrix.ndim != 2 or matrix.shape[1] != width:
            raise InvalidInput.at(["shape"], f"must be [rows, {width}], got {list(matrix.shape)}", "shape")
        if matrix.shape[0] == 0:
            raise InvalidInput.at(["shape"], "must hold at least one row", "empty")
        if matrix.shape[0] > max_rows:
            raise InvalidInput.at(
                ["shape"], f"holds {matrix.shape[0]} rows; at most {max_rows} are allowed", "too_long"
            )
        if not self.has_categorical:
            matrix = matrix.astype(np.float64, copy=False)
        numbers = self._numbers(matrix)
        bad = np.isinf(numbers)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise InvalidInput.from_problems([_not_finite([row, self.features[self.numeric_columns[col]].name])])
        for col in self.categorical_columns:
            _fill_missing(matrix[:, col], self.features[col])
        outside = self._check_plausible(numbers, [])
        if unknown_categories == REJECT:
            self._check_categories(matrix, [])
        return matrix, outside

    def range_warnings(self, matrix: np.ndarray, outside: np.ndarray) -> list[str]:
        """One warning per numeric feature with values outside the training range (`outside`
        from `checked_rows` or `checked_matrix`): the model answers them, but it never saw
        such values, so the answer is an extrapolation."""
        numbers = self._numbers(matrix)
        rows = numbers.shape[0]
        warnings = []
        for c in np.flatnonzero(outside.any(axis=0)):
            feature = self.features[self.numeric_columns[c]]
            where = np.flatnonzero(outside[:, c])
            span = f"the training range {feature.min:.6g} to {feature.max:.6g}"
            first = numbers[where[0], c]
            if rows == 1:
                warnings.append(f"{feature.name}: {first:.6g} is outside {span}")
            else:
                first_row = f"the first: row {where[0]}, {first:.6g}"
                warnings.append(f"{feature.name}: {len(where)} of {rows} rows are outside {span} ({first_row})")
        return warnings

    def check_columns(
        self, columns: list[TableColumn], unknown_categories: str = REJECT
    ) -> tuple[np.ndarray, dict[int, list[dict[str, Any]]]]:
        """Validate a table's rows, one column per feature in training order (batch
        scoring): the matrix as the model takes it, and the problems of each invalid row.

        Each row is judged as the server judges a request of that one row, by the same
        rules, messages and types, and in the same steps: the values (a cell refused by the
        JSON converter of its feature, or an infinite number), then the plausible range,
        then the categories seen in training (`unknown_categories`: reject). A problem's
        `loc` is the feature's name (the API's, without "instances" and the row). Invalid
        rows hold a missing value in every cell, for the caller to leave out.
        """
        rows = len(columns[0].values) if columns else 0
        # Column-major: each column is written, checked and counted in one contiguous run.
        matrix = np.empty((rows, len(self.features)), dtype=object if self.has_categorical else np.float64, order="F")
        found: dict[int, list[dict[str, Any]]] = {}
        for col, (feature, column) in enumerate(zip(self.features, columns, strict=True)):
            matrix[:, col] = column.values
            if not feature.is_categorical:
                for row in np.flatnonzero(np.isinf(column.values)).tolist():
                    found.setdefault(row, []).append(_not_finite([feature.name]))
            convert = self.converters[col]
            for row, value in column.others.items():
                converted = convert(value)
                if type(converted) is _Refusal:
                    found.setdefault(row, []).append(problem([feature.name], converted.reason, "type"))
                else:
                    matrix[row, col] = converted
            if feature.is_categorical:
                _fill_missing(matrix[:, col], feature)
        self._blank(matrix, found)
        numbers = self._numbers(matrix)
        bounds = self.numeric_bounds
        beyond = np.abs(numbers) > bounds
        for row, c in np.argwhere(beyond).tolist() if beyond.any() else ():
            found.setdefault(row, []).append(
                _beyond_range([self.features[self.numeric_columns[c]].name], numbers[row, c], bounds[c])
            )
        if unknown_categories == REJECT:
            self._blank(matrix, found)  # rows refused so far show no unknown category
            for feature, values, unknown in self._unknown(matrix):
                for row in np.flatnonzero(unknown).tolist():
                    found.setdefault(row, []).append(_unknown_category([feature.name], values[row], feature))
        self._blank(matrix, found)
        return matrix, {row: found[row][:MAX_DETAILS] for row in sorted(found)}

    def _blank(self, matrix: np.ndarray, rows: dict[int, Any]) -> None:
        """A missing value in every cell of `rows` (invalid rows, which no later step judges)."""
        if not rows:
            return
        index = list(rows)
        for col, feature in enumerate(self.features):
            missing = math.nan if not feature.is_categorical or feature.missing is None else feature.missing
            matrix[index, col] = missing

    def unknown_categories(self, matrix: np.ndarray) -> list[str]:
        """Warnings for the categories that training never saw (accepted by the settings)."""
        warnings = []
        for feature, values, unknown in self._unknown(matrix):
            if unknown.any():
                seen = sorted({str(v) for v in values[unknown]})[:5]
                warnings.append(
                    f"{feature.name}: {', '.join(map(echo, seen))} not seen in training; the model's encoder ignores it"
                )
        return warnings

    def _check_categories(self, matrix: np.ndarray, prefix: list[Any]) -> None:
        problems = []
        for feature, values, unknown in self._unknown(matrix):
            for row in np.flatnonzero(unknown)[:10]:
                problems.append(_unknown_category([*prefix, int(row), feature.name], values[row], feature))
        if problems:
            raise InvalidInput.from_problems(problems)

    def _unknown(self, matrix: np.ndarray) -> Iterator[tuple[Feature, np.ndarray, np.ndarray]]:
        """Each categorical feature, its column, and where it holds a category training never saw."""
        for col in self.categorical_columns:
            known = self.known_values[col]
            values = matrix[:, col]
            feature = self.features[col]
            # A value, neither missing (None, NaN) nor a training category nor the missing marker.
            if len(values) <= SET_LOOKUP_ROWS:  # a set per value beats np.isin, which sorts
                unknown = np.fromiter((not (v is None or v != v or v in known) for v in values), bool, len(values))
            else:  # a table's batch (batch scoring): one hash lookup of the whole column
                index = self._known_index[col].get_indexer(pd.Index(values, dtype=object, copy=False))
                unknown = (index < 0) & _present(values)
            yield feature, values, unknown

    def _numbers(self, matrix: np.ndarray) -> np.ndarray:
        """The numeric columns as float64 (the whole matrix when every feature is numeric)."""
        return matrix[:, self.numeric_columns].astype(np.float64) if self.has_categorical else matrix

    def _check_plausible(self, numbers: np.ndarray, prefix: list[Any]) -> np.ndarray | None:
        """Refuse values beyond the plausible range, and say where values lie outside the
        training range (None: nowhere, the common case, which needs no further check since
        the plausible range holds the training range). `numbers` holds the numeric columns;
        NaN (missing) compares False, and is neither."""
        outside = (numbers < self.numeric_min) | (numbers > self.numeric_max)
        if not outside.any():
            return None
        bounds = self.numeric_bounds
        bad = np.abs(numbers) > bounds
        if bad.any():
            problems = [
                _beyond_range([*prefix, int(r), self.features[self.numeric_columns[c]].name], numbers[r, c], bounds[c])
                for r, c in np.argwhere(bad)[:50]
            ]
            raise InvalidInput.from_problems(problems)
        return outside

    def _records(self, instances: list[Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        width = len(self.features)
        index = self.feature_index
        convert = self.converters
        matrix = np.empty((len(instances), width), dtype=object if self.has_categorical else np.float64)
        problems: list[dict[str, Any]] = []
        for r, record in enumerate(instances):
            if not isinstance(record, dict):
                problems.append(problem(["instances", r], "must be an object like the first record", "type"))
                continue
            known = 0
            for name, value in record.items():
                col = index.get(name)
                if col is None:
                    problems.append(problem(["instances", r, name], "is not a feature of this model", "unknown"))
                    continue
                known += 1
                converted = convert[col](value)
                if type(converted) is _Refusal:
                    problems.append(problem(["instances", r, name], converted.reason, "type"))
                else:
                    matrix[r, col] = converted
            if known != width:
                for name in self.names:
                    if name not in record:
                        problems.append(
                            problem(["instances", r, name], "is missing (send null for a missing value)", "missing")
                        )
            if len(problems) > 50:
                break
        return matrix, problems

    def _plain_rows(self, instances: list[Any], positions: list[int] | None) -> np.ndarray | None:
        """Rows that hold only numbers and nulls, of the right length, as one float64 matrix
        in training order, converted by numpy at once: the common case, several times faster
        than a value at a time. None for anything else (a string, a boolean, a short row, an
        infinite or too large number), which `_rows` then checks value by value and names."""
        try:
            values = list(chain.from_iterable(instances))
            if not set(map(type, values)) <= _PLAIN_VALUES:
                return None
            matrix = np.array(instances, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            return None
        if matrix.ndim != 2 or matrix.shape[1] != len(self.features):
            return None
        # Only nulls may become NaN: a NaN or an infinity sent as a float is refused by `_rows`.
        if np.count_nonzero(~np.isfinite(matrix)) != values.count(None):
            return None
        return matrix if positions is None else matrix[:, positions]

    def _rows(self, instances: list[Any], positions: list[int] | None) -> tuple[np.ndarray, list[dict[str, Any]]]:
        width = len(self.features)
        names = self.names
        convert = self.converters
        matrix = np.empty((len(instances), width), dtype=object if self.has_categorical else np.float64)
        problems: list[dict[str, Any]] = []
        for r, row in enumerate(instances):
            if not isinstance(row, list):
                problems.append(problem(["instances", r], "must be an array like the first row", "type"))
                continue
            if len(row) != width:
                problems.append(
                    problem(
                        ["instances", r],
                        f"has {len(row)} values; the model takes {width} in the order of its metadata's features",
                        "length",
                    )
                )
                continue
            if positions is not None:
                row = [row[p] for p in positions]
            for c, value in enumerate(row):
                converted = convert[c](value)
                if type(converted) is _Refusal:
                    problems.append(problem(["instances", r, names[c]], converted.reason, "type"))
                else:
                    matrix[r, c] = converted
            if len(problems) > 50:
                break
        return matrix, problems


# Up to this many rows, categories are looked up in a set per value; beyond, with np.isin.
SET_LOOKUP_ROWS = 256
# JSON values a numeric row may hold (null is a missing value); a boolean is no number.
_PLAIN_VALUES = {float, int, type(None)}


@dataclass(frozen=True)
class TableColumn:
    """One feature's column of a table (batch scoring), as the table's reader decoded it:
    `values` holds numbers as float64 (NaN: missing) for a numeric feature, or strings and
    None (missing) in an object array for a categorical one; `others` holds the cells of
    another kind by row (a text that is not a number, a boolean, a number where a category
    is expected), which the feature's JSON converter accepts or refuses as the server does."""

    values: np.ndarray
    others: dict[int, Any] = field(default_factory=dict)


class _Refusal:
    """Why a JSON value is not acceptable for its feature."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _number(value: Any) -> float | _Refusal:
    """The value as a float (None: NaN, a missing value), or why it is not acceptable."""
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return value
        return _Refusal("must be a finite number (NaN and infinity are not accepted; send null for a missing value)")
    if kind is int:
        try:
            number = float(value)
        except OverflowError:
            return _Refusal("is too large")
        return number if math.isfinite(number) else _Refusal("is too large")
    if value is None:
        return math.nan
    return _Refusal(f"must be a number or null, got {_json_type(value)}")


def _category(missing: str | None) -> Callable[[Any], Any]:
    """A converter for one categorical feature: strings pass; null and MISSING_TEXT are
    the tag's missing marker."""
    marker = math.nan if missing is None else missing

    def convert(value: Any) -> Any:
        if type(value) is str:
            return marker if value == MISSING_TEXT else value
        if value is None:
            return marker
        return _Refusal(f"must be a string (a category) or null, got {_json_type(value)}")

    return convert


def _not_finite(loc: list[Any]) -> dict[str, Any]:
    """An infinite number where a tensor or a table's number column holds numbers (NaN is a gap there)."""
    return problem(loc, "must be a finite number", "finite")


def _beyond_range(loc: list[Any], value: float, bound: float) -> dict[str, Any]:
    return problem(
        loc,
        f"is {value:.6g}, beyond the plausible range of +-{bound:.6g} "
        f"({PLAUSIBLE_FACTOR:.0e} times the largest magnitude seen in training)",
        "range",
    )


def _unknown_category(loc: list[Any], value: Any, feature: Feature) -> dict[str, Any]:
    allowed = ", ".join(map(repr, feature.categories[:30]))
    more = f" and {len(feature.categories) - 30} more" if len(feature.categories) > 30 else ""
    return problem(loc, f"{echo(value)} is not a category seen in training (allowed: {allowed}{more})", "category")


def _fill_missing(values: np.ndarray, feature: Feature) -> None:
    """Put the feature's missing marker (NaN without one) where an object column of
    categories holds None, NaN or MISSING_TEXT, in place."""
    missing = ~_present(values) | (values == MISSING_TEXT)
    if missing.any():
        values[missing] = math.nan if feature.missing is None else feature.missing


def _present(values: np.ndarray) -> np.ndarray:
    """Which entries of an object column hold a value (not None or NaN), vectorised."""
    return ~pd.isna(values)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
