"""The scikit-learn runtime of a tag: its fitted pipeline, fed rows as the schema checked
them. Shared by the server (registry.LoadedModel) and batch scoring (scoring.py), which
runs where neither BentoML nor the model store is installed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from model_server.models.schema import InputSchema


def pipeline_output(pipeline: Any, schema: InputSchema, matrix: np.ndarray) -> np.ndarray:
    """Class probabilities (rows x classes) for classifiers, values (rows,) for regressors."""
    inputs = pipeline_frame(schema, matrix) if schema.frame_input else matrix
    if schema.is_classifier:
        return np.asarray(pipeline.predict_proba(inputs), dtype=np.float64)
    return np.asarray(pipeline.predict(inputs), dtype=np.float64)


def pipeline_frame(schema: InputSchema, matrix: np.ndarray) -> pd.DataFrame:
    """The batch as the DataFrame the pipeline was fitted on: one column per feature,
    numbers as float64 and categories as Python strings; built column by column."""
    columns = {
        f.name: pd.Series(matrix[:, i], dtype=object) if f.is_categorical else matrix[:, i].astype(np.float64)
        for i, f in enumerate(schema.features)
    }
    return pd.DataFrame(columns)
