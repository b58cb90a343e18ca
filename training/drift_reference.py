"""The drift reference saved with each model: how the training rows and the model's
predictions on them are distributed (model_server/models/drift_reference.py counts live traffic into the
same bins and compares)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from model_server.models.drift_reference import DriftReference
from model_server.models.schema import InputSchema

# Deciles of this many training rows are as good as of all of them; larger tables are sampled.
MAX_ROWS = 50_000


def build(schema: InputSchema, pipeline: Any, rows: Any, seed: int = 0) -> dict[str, Any]:
    """The reference of training `rows` (an array or a DataFrame, as the pipeline was
    fitted on), JSON-able for the model's metadata."""
    if rows.shape[0] > MAX_ROWS:
        chosen = np.sort(np.random.default_rng(seed).choice(rows.shape[0], MAX_ROWS, replace=False))
        rows = rows.iloc[chosen] if isinstance(rows, pd.DataFrame) else rows[chosen]
    if schema.is_classifier:
        output = np.asarray(pipeline.predict_proba(rows), dtype=np.float64)
    else:
        output = np.asarray(pipeline.predict(rows), dtype=np.float64)
    return DriftReference.build(schema, server_matrix(schema, rows), output).to_dict()


def server_matrix(schema: InputSchema, rows: Any) -> np.ndarray:
    """Rows as the server's validation hands them to the model: float64, or for a model
    with categorical features an object matrix of numbers and strings, where a missing
    category is the schema's marker (or NaN)."""
    if isinstance(rows, pd.DataFrame):
        columns = [rows[name].to_numpy(dtype=object) for name in schema.names]
    else:
        columns = [np.asarray(rows)[:, i] for i in range(len(schema.features))]
    if not schema.has_categorical:
        return np.column_stack([np.asarray(c, dtype=np.float64) for c in columns])
    matrix = np.empty((len(columns[0]), len(columns)), dtype=object)
    for i, feature in enumerate(schema.features):
        values = columns[i]
        if feature.is_categorical:
            marker = np.nan if feature.missing is None else feature.missing
            matrix[:, i] = [marker if pd.isna(v) else str(v) for v in values]
        else:
            matrix[:, i] = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(np.float64)
    return matrix
