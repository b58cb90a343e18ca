"""A few real rows of the training data, stored with a tag, so that a person trying the
model (the web page's examples) starts from a row the model was trained on rather than a
made-up one: whole numbers stay whole, categories are ones that occur together.

A classifier gets the first complete training row of each class (up to MAX_EXAMPLES
classes); a regressor the complete rows whose targets are nearest the 10th, 50th and
90th percentiles. Each example is `{"target": class or value, "values": {feature: value}}`,
a missing value left out (BentoML's metadata holds no null).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from model_server.models.schema import InputSchema

MAX_EXAMPLES = 5
QUANTILES = (0.1, 0.5, 0.9)


def pick(schema: InputSchema, X: Any, targets: list[Any]) -> list[dict[str, Any]]:
    """Examples of the training rows `X` (an array in the schema's order, or a DataFrame
    with its columns), whose targets are `targets` (class names, or numbers)."""
    frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(np.asarray(X), columns=schema.names)
    frame = frame[schema.names].reset_index(drop=True)
    complete = [_complete(schema, frame, i) for i in range(len(frame))]
    chosen: list[int] = []
    if schema.is_classifier:
        for name in schema.classes[:MAX_EXAMPLES]:
            rows = [i for i, t in enumerate(targets) if str(t) == name]
            if rows:
                chosen.append(next((i for i in rows if complete[i]), rows[0]))
    elif targets:
        values = np.asarray(targets, dtype=np.float64)
        candidates = [i for i in range(len(values)) if complete[i]] or list(range(len(values)))
        for q in QUANTILES:
            wanted = float(np.quantile(values, q))
            best = min(candidates, key=lambda i: abs(values[i] - wanted))
            if best not in chosen:
                chosen.append(best)
    return [{"target": _target(targets[i]), "values": _values(schema, frame, i)} for i in chosen]


def _complete(schema: InputSchema, frame: pd.DataFrame, row: int) -> bool:
    return all(_present(f.missing, frame.iat[row, c]) for c, f in enumerate(schema.features))


def _values(schema: InputSchema, frame: pd.DataFrame, row: int) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for c, feature in enumerate(schema.features):
        value = frame.iat[row, c]
        if not _present(feature.missing, value):
            continue
        if feature.is_categorical:
            values[feature.name] = str(value)
        else:
            number = float(value)
            values[feature.name] = int(number) if number.is_integer() and abs(number) < 2**53 else number
    return values


def _present(missing: str | None, value: Any) -> bool:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return False
    return not (missing is not None and value == missing)


def _target(value: Any) -> Any:
    if isinstance(value, str):
        return value
    number = float(value)
    return int(number) if number.is_integer() and abs(number) < 2**53 else number
