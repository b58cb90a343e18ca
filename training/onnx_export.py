"""ONNX export of a fitted pipeline at registration, checked before anything may serve it.

skl2onnx converts the pipeline; onnxruntime then predicts the held-out rows, and the
export is kept only when its labels equal scikit-learn's and its probabilities (or
values) agree within `TOLERANCE`. Some pipelines convert without error and answer
wrongly (HistGradientBoosting's native categorical splits, a scaler in front of it), so
the check is what makes an export trustworthy, not the conversion succeeding.

Numeric models take one float32 tensor (onnxruntime's tree ensembles run in float32);
models fitted on named columns take one tensor per column, float32 for numbers and
strings for categories, a missing category being the empty string as in training.
skl2onnx names each column's input after the column, made an identifier and unique
(`yrs.since.phd` -> `yrs_since_phd`, `größe` stays): the inputs it chose are read from
the graph and recorded (`inputs` in the metadata), and the server feeds them by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from model_server.missing import MissingCategories
from model_server.models.onnx_runtime import OnnxModel
from model_server.models.schema import InputSchema

# The largest absolute difference allowed between scikit-learn's and ONNX's answers.
TOLERANCE = 1e-5
OPSETS = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True)
class OnnxExport:
    """The ONNX model (None when refused), how far it is from scikit-learn, and why not."""

    model: bytes | None
    max_abs_difference: float | None
    labels_equal: bool | None
    rows_checked: int
    refusal: str | None = None
    # Column -> the graph's input name, for models fitted on named columns.
    inputs: dict[str, str] | None = None

    def metadata(self) -> dict[str, Any]:
        """What the model's metadata records about the export."""
        found: dict[str, Any] = {
            "exported": self.model is not None,
            "rows_checked": self.rows_checked,
            "tolerance": TOLERANCE,
        }
        if self.max_abs_difference is not None:
            found["max_abs_difference"] = self.max_abs_difference
        if self.labels_equal is not None:
            found["labels_equal"] = self.labels_equal
        if self.model is not None:
            found["size_bytes"] = len(self.model)
        if self.refusal is not None:
            found["refusal"] = self.refusal
        if self.model is not None and self.inputs is not None:
            found["inputs"] = self.inputs
        return found


def export(pipeline: Any, schema: InputSchema, rows: Any) -> OnnxExport:
    """Convert `pipeline` and compare it with scikit-learn on `rows` (held-out data: an
    array in training order, or a DataFrame with the schema's columns)."""
    frame = _frame(rows, schema)
    try:
        model = convert(pipeline, schema)
        inputs = input_names(model, schema)
    except Exception as exc:  # skl2onnx raises many kinds for what it cannot convert
        return OnnxExport(None, None, None, 0, f"skl2onnx cannot convert it: {type(exc).__name__}: {exc}"[:300])
    expected = _sklearn_answers(pipeline, schema, frame)
    try:
        found = run(model, schema, frame, inputs)
    except Exception as exc:
        return OnnxExport(None, None, None, 0, f"onnxruntime cannot run it: {type(exc).__name__}: {exc}"[:300])
    difference = float(np.max(np.abs(found - expected))) if len(frame) else 0.0
    labels_equal = None
    if schema.is_classifier:
        labels_equal = bool(np.array_equal(np.argmax(found, axis=1), np.argmax(expected, axis=1)))
    problems = []
    if labels_equal is False:
        problems.append("its labels differ from scikit-learn's")
    if difference > TOLERANCE:
        problems.append(f"it differs by up to {difference:.3g} (tolerance {TOLERANCE:g})")
    if problems:
        refusal = f"on {len(frame)} held-out rows " + " and ".join(problems)
        return OnnxExport(None, difference, labels_equal, len(frame), refusal)
    return OnnxExport(model, difference, labels_equal, len(frame), inputs=inputs)


def convert(pipeline: Any, schema: InputSchema) -> bytes:
    """The pipeline as an ONNX model: inputs as `onnx_inputs` builds them, and one output
    of class probabilities (classifiers, no ZipMap) or values (regressors)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    if schema.frame_input:
        types = [
            (f.name, StringTensorType([None, 1]) if f.is_categorical else FloatTensorType([None, 1]))
            for f in schema.features
        ]
    else:
        types = [("features", FloatTensorType([None, len(schema.features)]))]
    options = {"zipmap": False} if schema.is_classifier else None
    onnx_model = to_onnx(_without_missing_step(pipeline), initial_types=types, options=options, target_opset=OPSETS)
    return bytes(onnx_model.SerializeToString())


def input_names(model: bytes, schema: InputSchema) -> dict[str, str] | None:
    """Each column's input name in the converted graph (None for one `features` tensor):
    skl2onnx declares the inputs in the order of `initial_types`, the schema's."""
    if not schema.frame_input:
        return None
    import onnx

    graph_inputs = [value.name for value in onnx.load_from_string(model).graph.input]
    if len(graph_inputs) != len(schema.names) or len(set(graph_inputs)) != len(graph_inputs):
        raise ValueError(f"the graph's inputs {graph_inputs[:20]} do not match the {len(schema.names)} columns")
    return dict(zip(schema.names, graph_inputs, strict=True))


def run(model: bytes, schema: InputSchema, frame: pd.DataFrame, inputs: dict[str, str] | None = None) -> np.ndarray:
    """Probabilities (rows x classes) or values (rows,) of the ONNX model, as float64, fed
    as the server feeds it (model_server/models/onnx_runtime.py), by the graph's `inputs` names."""
    return OnnxModel(model, schema, inputs=inputs).infer(frame[schema.names].to_numpy(dtype=object))


def _without_missing_step(pipeline: Any) -> Any:
    """The pipeline after its MissingCategories step, when it starts with one: a string
    tensor holds no NaN (the server and `run` feed the marker itself), so the step has
    nothing to do in ONNX, and skl2onnx knows no converter for it. The equality check
    still compares the whole pipeline with the export."""
    from sklearn.pipeline import Pipeline

    steps = pipeline.steps if isinstance(pipeline, Pipeline) else []
    if len(steps) > 1 and isinstance(steps[0][1], MissingCategories):
        return pipeline[1:]
    return pipeline


def _frame(rows: Any, schema: InputSchema) -> pd.DataFrame:
    if isinstance(rows, pd.DataFrame):
        return rows[schema.names]
    return pd.DataFrame(np.asarray(rows, dtype=np.float64), columns=schema.names)


def _sklearn_answers(pipeline: Any, schema: InputSchema, frame: pd.DataFrame) -> np.ndarray:
    inputs = frame if schema.frame_input else frame.to_numpy(dtype=np.float64)
    if schema.is_classifier:
        return np.asarray(pipeline.predict_proba(inputs), dtype=np.float64)
    return np.asarray(pipeline.predict(inputs), dtype=np.float64).reshape(-1)
