"""The ONNX runtime of a tag: onnxruntime over the export that registration checked
against scikit-learn (training/onnx_export.py), fed exactly as that check fed it.

Numeric models take one float32 tensor `features`; models fitted on named columns take
one tensor per column, float32 for numbers and strings for categories, a missing
category being the empty string as in training. skl2onnx renames a column whose name is
not an identifier (`yrs.since.phd` becomes the input `yrs_since_phd`), so registration
stores each column's input name (the metadata's `onnx.inputs`) and the tensors are fed
by it; a tag stored without that map has inputs named as its columns. onnxruntime is
imported only when a tag has an export.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from model_server.models.schema import InputSchema

SKLEARN = "sklearn"
ONNX = "onnx"
RUNTIMES = (SKLEARN, ONNX)
# What a missing category is in training's tables (training/tables.py), and so in the export.
MISSING_CATEGORY = ""
# From this many rows on, a categorical input is built with whole-column operations.
VECTORISED_FROM_ROWS = 256


class OnnxModel:
    """An onnxruntime session for one tag, answering like the tag's pipeline."""

    def __init__(
        self, model: bytes, schema: InputSchema, threads: int = 1, inputs: Mapping[str, str] | None = None
    ) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # one per model thread, like OpenMP's limit
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.schema = schema
        self.inputs = dict(inputs or {})  # column -> the graph's input name, where they differ
        self.size_bytes = len(model)

    def infer(self, matrix: np.ndarray) -> np.ndarray:
        """Class probabilities (rows x classes) or values (rows,), as float64."""
        outputs = self.session.run(None, onnx_inputs(self.schema, matrix, self.inputs))
        if self.schema.is_classifier:
            return np.asarray(outputs[-1], dtype=np.float64)
        return np.asarray(outputs[0], dtype=np.float64).reshape(-1)


def onnx_inputs(schema: InputSchema, matrix: Any, names: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """The export's inputs for rows in training order (a matrix as the schema builds it,
    or anything numpy turns into one, such as a DataFrame of the schema's columns), keyed
    by the graph's input name of each column (`names`; a column absent from it is its own)."""
    names = names or {}
    rows = np.asarray(matrix, dtype=object if schema.has_categorical else np.float64)
    if not schema.frame_input:
        return {"features": np.ascontiguousarray(rows, dtype=np.float32)}
    inputs = {}
    for index, feature in enumerate(schema.features):
        column = rows[:, index]
        if feature.is_categorical:
            inputs[names.get(feature.name, feature.name)] = _categories(column).reshape(-1, 1)
        else:
            inputs[names.get(feature.name, feature.name)] = column.astype(np.float32).reshape(-1, 1)
    return inputs


def _categories(column: np.ndarray) -> np.ndarray:
    """A categorical column's strings as an object array, anything else (a missing value)
    the missing category. A large batch's (batch scoring) is built a whole column at a time
    when every present value is a string, as the checks leave them; a request's, value by
    value, which is cheaper for a few rows."""
    if len(column) > VECTORISED_FROM_ROWS:
        values = np.where(pd.isna(column), MISSING_CATEGORY, column).astype(object)
        if pd.api.types.infer_dtype(values, skipna=False) == "string":
            return values
    return np.asarray([v if isinstance(v, str) else MISSING_CATEGORY for v in column.tolist()], dtype=object)
