"""The input schema a model was trained on, and validation of requests against it.

Training stores the schema in the model's metadata; serving rebuilds it and checks
every request before the model runs, so a bad request is a 400 naming the field
and the rule, never a 500.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInput, problem

# A value may exceed the largest magnitude seen in training by this factor, no more.
PLAUSIBLE_FACTOR = 1e6

CLASSIFICATION = "classification"
REGRESSION = "regression"


@dataclass(frozen=True)
class Feature:
    """One input column: its name, dtype and the range seen in training."""

    name: str
    dtype: str
    min: float
    max: float


@dataclass(frozen=True)
class InputSchema:
    """Features in training order, the task, and class names for classifiers."""

    task: str
    features: tuple[Feature, ...]
    classes: tuple[str, ...] = ()
    target: str = ""
    feature_index: dict[str, int] = field(init=False, repr=False, compare=False)
    bounds: np.ndarray = field(init=False, repr=False, compare=False)
    names: list[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {f.name: i for i, f in enumerate(self.features)}
        object.__setattr__(self, "feature_index", index)
        object.__setattr__(self, "names", [f.name for f in self.features])
        # Values beyond these magnitudes are not data but noise that overflows the
        # model's arithmetic (scaling 1e308 gives infinity): a 400, not a 500.
        bounds = np.array([PLAUSIBLE_FACTOR * max(1.0, abs(f.min), abs(f.max)) for f in self.features])
        object.__setattr__(self, "bounds", bounds)

    @property
    def is_classifier(self) -> bool:
        return self.task == CLASSIFICATION

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "target": self.target,
            "features": [asdict(f) for f in self.features],
            "classes": list(self.classes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSchema:
        return cls(
            task=data["task"],
            target=data.get("target", ""),
            features=tuple(Feature(**f) for f in data["features"]),
            classes=tuple(data.get("classes", ())),
        )

    def rows_to_matrix(self, instances: Any, max_rows: int) -> np.ndarray:
        """Turn JSON `instances` (records or rows) into a float64 matrix, or raise InvalidInput.

        Records are objects keyed by feature name; rows are arrays in training order.
        `null` means a missing value, which the model's own imputer fills in.
        """
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
            matrix, problems = self._rows(instances)
        else:
            raise InvalidInput.at(
                ["instances", 0], "must be an object keyed by feature name or an array of values", "type"
            )
        if problems:
            raise InvalidInput.from_problems(problems)
        self._check_plausible(matrix, ["instances"])
        return matrix

    def check_matrix(self, matrix: np.ndarray, max_rows: int) -> np.ndarray:
        """Validate an already numeric 2-D input (from a tensor) against the schema.

        NaN is a missing value (the imputer fills it), as null is in JSON.
        """
        width = len(self.features)
        if matrix.ndim != 2 or matrix.shape[1] != width:
            raise InvalidInput.at(["shape"], f"must be [rows, {width}], got {list(matrix.shape)}", "shape")
        if matrix.shape[0] == 0:
            raise InvalidInput.at(["shape"], "must hold at least one row", "empty")
        if matrix.shape[0] > max_rows:
            raise InvalidInput.at(
                ["shape"], f"holds {matrix.shape[0]} rows; at most {max_rows} are allowed", "too_long"
            )
        matrix = matrix.astype(np.float64, copy=False)
        bad = np.isinf(matrix)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise InvalidInput.at([row, self.features[col].name], "must be a finite number", "finite")
        self._check_plausible(matrix, [])
        return matrix

    def _check_plausible(self, matrix: np.ndarray, prefix: list[Any]) -> None:
        bad = np.abs(matrix) > self.bounds  # NaN (missing) compares False, without a warning
        if bad.any():
            problems = [
                problem(
                    [*prefix, int(r), self.features[c].name],
                    f"is {matrix[r, c]:.6g}, beyond the plausible range of +-{self.bounds[c]:.6g} "
                    f"({PLAUSIBLE_FACTOR:.0e} times the largest magnitude seen in training)",
                    "range",
                )
                for r, c in np.argwhere(bad)[:50]
            ]
            raise InvalidInput.from_problems(problems)

    def _records(self, instances: list[Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        width = len(self.features)
        index = self.feature_index
        matrix = np.empty((len(instances), width), dtype=np.float64)
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
                number = _number(value)
                if isinstance(number, str):
                    problems.append(problem(["instances", r, name], number, "type"))
                else:
                    matrix[r, col] = number
            if known != width:
                for name in self.names:
                    if name not in record:
                        problems.append(
                            problem(["instances", r, name], "is missing (send null for a missing value)", "missing")
                        )
            if len(problems) > 50:
                break
        return matrix, problems

    def _rows(self, instances: list[Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        width = len(self.features)
        names = self.names
        matrix = np.empty((len(instances), width), dtype=np.float64)
        problems: list[dict[str, Any]] = []
        for r, row in enumerate(instances):
            if not isinstance(row, list):
                problems.append(problem(["instances", r], "must be an array like the first row", "type"))
                continue
            if len(row) != width:
                problems.append(
                    problem(
                        ["instances", r], f"has {len(row)} values; the model takes {width} in training order", "length"
                    )
                )
                continue
            for c, value in enumerate(row):
                number = _number(value)
                if isinstance(number, str):
                    problems.append(problem(["instances", r, names[c]], number, "type"))
                else:
                    matrix[r, c] = number
            if len(problems) > 50:
                break
        return matrix, problems


def _number(value: Any) -> float | str:
    """The value as a float, or a sentence saying why it is not acceptable."""
    kind = type(value)
    if kind is float:
        if math.isfinite(value):
            return value
        return "must be a finite number (NaN and infinity are not accepted; send null for a missing value)"
    if kind is int:
        try:
            number = float(value)
        except OverflowError:
            return "is too large"
        return number if math.isfinite(number) else "is too large"
    if value is None:
        return math.nan
    return f"must be a number or null, got {_json_type(value)}"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
