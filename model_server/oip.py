"""Open Inference Protocol (KServe V2) pieces shared by REST and gRPC: input tensors
decoded into the core's matrix, the requested outputs checked and encoded, and model
metadata. Both transports turn their wire format into `InputTensor`s and call these.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import datatypes
from .constants import OUTPUT_PREDICT, OUTPUT_PREDICT_PROBA
from .errors import InvalidInput
from .schema import InputSchema
from .server import Prediction

PLATFORM = "scikit-learn"
INPUT_NAME = "features"


@dataclass
class InputTensor:
    """An input tensor as the wire gave it: values as a list, or raw bytes."""

    name: str
    datatype: str
    shape: list[int]
    data: Any = None
    raw: bytes | None = None


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray

    def as_list(self) -> list[Any]:
        """Flat row-major values for JSON (class names as strings)."""
        return self.array.reshape(-1).tolist()

    def as_bytes(self) -> bytes:
        """Row-major little-endian bytes; BYTES elements are 4-byte length prefixed."""
        if self.datatype == datatypes.BYTES:
            parts = [s.encode("utf-8") for s in self.array.reshape(-1).tolist()]
            return b"".join(struct.pack("<I", len(p)) + p for p in parts)
        return np.ascontiguousarray(self.array, dtype="<f8").tobytes()


def tensor_to_matrix(inputs: list[InputTensor]) -> np.ndarray:
    """The single 2-D numeric input tensor as a matrix, or InvalidInput naming the problem."""
    if len(inputs) != 1:
        raise InvalidInput.at(
            ["inputs"], f"must hold exactly one tensor of shape [rows, features], got {len(inputs)}", "count"
        )
    tensor = inputs[0]
    where = ["inputs", tensor.name or 0]
    datatype = datatypes.BY_NAME.get(tensor.datatype)
    if datatype is None:
        raise InvalidInput.at(
            [*where, "datatype"],
            f"'{tensor.datatype}' is not supported; use one of {', '.join(datatypes.NUMERIC_NAMES)}",
            "datatype",
        )
    shape = tensor.shape
    if len(shape) != 2 or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise InvalidInput.at(
            [*where, "shape"], f"must be [rows, features] with non-negative sizes, got {shape}", "shape"
        )
    count = shape[0] * shape[1]
    if tensor.raw is not None:
        itemsize = np.dtype(datatype.numpy).itemsize
        if len(tensor.raw) != count * itemsize:
            raise InvalidInput.at(
                [*where, "raw"],
                f"holds {len(tensor.raw)} bytes; shape {shape} of {tensor.datatype} needs {count * itemsize}",
                "length",
            )
        flat = np.frombuffer(tensor.raw, dtype=datatype.numpy)
    else:
        flat = _flat_values(tensor.data, where)
        if flat.size != count:
            raise InvalidInput.at([*where, "data"], f"holds {flat.size} values; shape {shape} needs {count}", "length")
    return flat.reshape(shape).astype(np.float64)


def check_outputs(schema: InputSchema, requested: list[str]) -> list[str]:
    """The outputs to answer with (all the model has when none are named); checked before
    the model runs, so a bad name costs no model call."""
    available = output_names(schema)
    for name in requested:
        if name not in available:
            raise InvalidInput.at(
                ["outputs", name], f"is not an output of this model (outputs: {', '.join(available)})", "unknown"
            )
    return requested or available


def outputs_for(prediction: Prediction, names: list[str]) -> list[OutputTensor]:
    """The output tensors named (already checked by `check_outputs`)."""
    schema = prediction.model.schema
    out = prediction.output
    rows = int(out.shape[0])
    tensors = []
    for name in names:
        if name == OUTPUT_PREDICT_PROBA:
            tensors.append(OutputTensor(name, datatypes.FP64, [rows, int(out.shape[1])], out))
        elif schema.is_classifier:
            labels = np.array([schema.classes[i] for i in np.argmax(out, axis=1)], dtype=object)
            tensors.append(OutputTensor(name, datatypes.BYTES, [rows], labels))
        else:
            tensors.append(OutputTensor(name, datatypes.FP64, [rows], out))
    return tensors


def output_names(schema: InputSchema) -> list[str]:
    if schema.is_classifier:
        return [OUTPUT_PREDICT, OUTPUT_PREDICT_PROBA]
    return [OUTPUT_PREDICT]


def model_metadata(name: str, versions: list[str], schema: InputSchema) -> dict[str, Any]:
    """Model metadata from the stored training schema; -1 marks the batch dimension."""
    width = len(schema.features)
    label_type = datatypes.BYTES if schema.is_classifier else datatypes.FP64
    outputs = [{"name": OUTPUT_PREDICT, "datatype": label_type, "shape": [-1]}]
    if schema.is_classifier:
        outputs.append({"name": OUTPUT_PREDICT_PROBA, "datatype": datatypes.FP64, "shape": [-1, len(schema.classes)]})
    return {
        "name": name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": datatypes.FP64, "shape": [-1, width]}],
        "outputs": outputs,
    }


def _flat_values(data: Any, where: list[Any]) -> np.ndarray:
    """Flatten JSON data (flat or nested lists) of numbers; null is a missing value."""
    if not isinstance(data, list):
        raise InvalidInput.at([*where, "data"], "must be a list of numbers", "type")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if item is not None and (isinstance(item, bool) or not isinstance(item, int | float)):
                raise InvalidInput.at([*where, "data"], f"must hold numbers only, found {type(item).__name__}", "type")
            flat.append(np.nan if item is None else item)
        else:
            stack.pop()
    try:
        values = np.array(flat, dtype=np.float64)
    except OverflowError:
        raise InvalidInput.at([*where, "data"], "holds a number too large for FP64", "type") from None
    if not np.isfinite(values[~np.isnan(values)]).all():
        raise InvalidInput.at([*where, "data"], "must hold finite numbers", "finite")
    return values
