"""Open Inference Protocol (KServe V2) pieces shared by REST and gRPC: input tensors
decoded into the core's matrix, the requested outputs checked and encoded, and model
metadata. Both transports turn their wire format into `InputTensor`s and call these.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_server.constants import (
    EXPLAIN_BASE_VALUE,
    EXPLAIN_CONTRIBUTIONS,
    EXPLAIN_OUTPUT_NAMES,
    EXPLAIN_OUTPUTS,
    MISSING_TEXT,
    OUTPUT_PREDICT,
    OUTPUT_PREDICT_PROBA,
    OUTPUT_PREDICTION_ID,
)
from model_server.core.server import InferenceResult
from model_server.errors import InvalidInput, echo, shorten
from model_server.models.schema import InputSchema
from model_server.transports import datatypes

PLATFORM = "scikit-learn"
# Input metadata parameters: what a missing value is, and the columns of the `features` tensor.
MISSING = "missing"
NAN = "NaN"
FEATURES = "features"
# Response parameter carrying the answer's warnings (unknown categories accepted by the settings).
WARNINGS = "warnings"
INPUT_NAME = "features"
# The request parameter asking for explanations, and what answers it (docs/explanations.md):
# three output tensors, and the response parameters that say how to read them.
EXPLAIN = "explain"
# What a numeric tensor's JSON data may hold for it to be read a whole list at a time (a
# bool, a text or anything else is read value by value, which names it).
PLAIN_VALUE_TYPES = frozenset((float, int, type(None)))


@dataclass
class InputTensor:
    """An input tensor as the wire gave it: values as a list, or raw bytes."""

    name: str
    datatype: str
    shape: list[int]
    data: Any = None
    raw: bytes | None = None


@dataclass(frozen=True)
class Tensors:
    """A request's input tensors, decoded by the core against the chosen tag's schema
    (`server.MatrixSource`)."""

    inputs: list[InputTensor]

    def to_matrix(self, schema: InputSchema) -> np.ndarray:
        return tensors_to_matrix(self.inputs, schema)

    def located(self, error: InvalidInput, schema: InputSchema) -> InvalidInput:
        """`error`, found by the core in the decoded matrix, with each problem where the
        request holds it: a row's value (`[row, feature]`) in its tensor's data (or raw
        bytes), the rows (`["shape"]`) in the shape. One tensor of all features (an
        all-numeric model) adds the feature after the row; one tensor per feature, the
        feature names the tensor."""
        by_name = {tensor.name: tensor for tensor in self.inputs}
        first = self.inputs[0] if self.inputs else InputTensor(INPUT_NAME, "", [])

        def where(loc: list[Any]) -> list[Any]:
            if loc == ["shape"]:
                return ["inputs", first.name, "shape"]
            if len(loc) != 2:
                return loc
            row, feature = loc
            if not schema.has_categorical:
                return ["inputs", first.name, "raw" if first.raw is not None else "data", row, feature]
            tensor = by_name.get(feature)
            return ["inputs", feature, "raw" if tensor is not None and tensor.raw is not None else "data", row]

        return error.relocated(where)


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


def tensors_to_matrix(inputs: list[InputTensor], schema: InputSchema) -> np.ndarray:
    """The input tensors as the core's matrix, or InvalidInput naming the tensor.

    An all-numeric model takes one [rows, features] tensor; a model with categorical
    features takes one tensor per feature, named after it, BYTES for a categorical
    feature and a numeric datatype otherwise, of shape [rows] or [rows, 1] (the
    convention of MLServer's pandas codec and KServe's column-wise inputs).
    """
    if not schema.has_categorical:
        return tensor_to_matrix(inputs, len(schema.features))
    by_name: dict[str, InputTensor] = {}
    for given in inputs:
        if given.name in by_name:
            raise InvalidInput.at(["inputs", given.name], "appears more than once", "duplicate")
        by_name[given.name] = given
    names = ", ".join(schema.names)
    for name in by_name:
        if name not in schema.feature_index:
            raise InvalidInput.at(["inputs", name], f"is not an input of this model (inputs: {names})", "unknown")
    rows: int | None = None
    columns = []
    for feature in schema.features:
        where = ["inputs", feature.name]
        if feature.name not in by_name:
            raise InvalidInput.at(where, f"is missing; this model takes one tensor per feature ({names})", "missing")
        tensor = by_name[feature.name]
        count = _column_rows(tensor, where)
        if rows is not None and count != rows:
            raise InvalidInput.at([*where, "shape"], f"has {count} rows; the other inputs have {rows}", "shape")
        rows = count
        if feature.is_categorical:
            if tensor.datatype != datatypes.BYTES:
                raise InvalidInput.at(
                    [*where, "datatype"],
                    f"must be BYTES (a categorical feature), got {echo(tensor.datatype)}",
                    "datatype",
                )
            columns.append(_strings(tensor, where, count))
        else:
            columns.append(_numbers(tensor, where, [count]))
    matrix = np.empty((rows or 0, len(columns)), dtype=object)
    for i, column in enumerate(columns):
        matrix[:, i] = column
    return matrix


def tensor_to_matrix(inputs: list[InputTensor], width: int) -> np.ndarray:
    """The single 2-D numeric input tensor of `width` features as a matrix, or InvalidInput
    naming the problem. The width is checked before the values: with a zero in it, a
    shape like [2**62, 0] or [0, 10**30] holds no values, but no array has that shape."""
    if len(inputs) != 1:
        raise InvalidInput.at(
            ["inputs"], f"must hold exactly one tensor of shape [rows, features], got {len(inputs)}", "count"
        )
    tensor = inputs[0]
    where = ["inputs", tensor.name or 0]
    _numeric_datatype(tensor, where)
    shape = tensor.shape
    if len(shape) != 2 or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise InvalidInput.at(
            [*where, "shape"], f"must be [rows, features] with non-negative sizes, got {shorten(str(shape))}", "shape"
        )
    if shape[1] != width:
        raise InvalidInput.at([*where, "shape"], f"must be [rows, {width}], got {shorten(str(shape))}", "shape")
    return _numbers(tensor, where, shape).reshape(shape)


def _numbers(tensor: InputTensor, where: list[Any], shape: list[int]) -> np.ndarray:
    """A numeric tensor's values, flat, as float64 (its datatype checked)."""
    datatype = _numeric_datatype(tensor, where)
    count = math.prod(shape)  # Python ints: numpy's int64 product would wrap around
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
        _check_datatype(flat, datatype, [*where, "data"])
    return flat.astype(np.float64)


def _check_datatype(values: np.ndarray, datatype: datatypes.Datatype, where: list[Any]) -> None:
    """Values sent as JSON numbers or typed gRPC contents fit the tensor's declared datatype
    (datatypes.limits); nulls (NaN) are missing values."""
    fits = datatypes.LIMITS[datatype.name]
    if fits is None:
        return
    present = values[~np.isnan(values)]
    if fits.whole:
        fractional = present[present != np.floor(present)]
        if fractional.size:
            message = f"holds {fractional[0]:g}; {datatype.name} holds whole numbers only"
            raise InvalidInput.at(where, message, "datatype")
    outside = present[(present < fits.lowest) | (present > fits.highest)]
    if outside.size:
        shown = (lambda v: str(int(v))) if fits.whole else (lambda v: f"{v:.9g}")
        message = (
            f"holds {shown(outside[0])}, outside {datatype.name}'s range {shown(fits.lowest)} to {shown(fits.highest)}"
        )
        raise InvalidInput.at(where, message, "datatype")


def _numeric_datatype(tensor: InputTensor, where: list[Any]) -> datatypes.Datatype:
    """The tensor's numeric datatype, or InvalidInput naming the supported ones."""
    datatype = datatypes.BY_NAME.get(tensor.datatype)
    if datatype is None:
        raise InvalidInput.at(
            [*where, "datatype"],
            f"{echo(tensor.datatype)} is not supported; use one of {', '.join(datatypes.NUMERIC_NAMES)}",
            "datatype",
        )
    return datatype


def _column_rows(tensor: InputTensor, where: list[Any]) -> int:
    """The rows of a one-feature tensor, of shape [rows] or [rows, 1]."""
    shape = tensor.shape
    valid = len(shape) in (1, 2) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    if not valid or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInput.at([*where, "shape"], f"must be [rows] or [rows, 1], got {shorten(str(shape))}", "shape")
    return int(shape[0])


def _strings(tensor: InputTensor, where: list[Any], count: int) -> np.ndarray:
    """A BYTES tensor's elements as str (None where JSON has null): from JSON strings, from
    gRPC's bytes_contents, or from raw bytes (each element a 4-byte little-endian length
    and that many bytes)."""
    if tensor.raw is not None:
        values: list[Any] = []
        raw, offset = tensor.raw, 0
        while offset < len(raw):
            if len(values) == count:  # more elements follow: stop before splitting them all
                raise InvalidInput.at([*where, "raw"], f"holds more than the {count} values the shape needs", "length")
            if offset + 4 > len(raw):
                raise InvalidInput.at([*where, "raw"], "ends inside a length prefix", "length")
            (size,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise InvalidInput.at([*where, "raw"], "ends inside an element", "length")
            values.append(raw[offset : offset + size])
            offset += size
    elif isinstance(tensor.data, list):
        values = tensor.data
    else:
        raise InvalidInput.at([*where, "data"], "must be a list of strings", "type")
    if len(values) != count:
        raise InvalidInput.at([*where, "data"], f"holds {len(values)} values; the shape needs {count}", "length")
    out = np.empty(count, dtype=object)
    for i, value in enumerate(values):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput.at([*where, "data", i], "is not UTF-8 text", "type") from None
        elif value is not None and not isinstance(value, str):
            raise InvalidInput.at([*where, "data", i], f"must be a string, got {type(value).__name__}", "type")
        out[i] = value
    return out


def wants_explanation(value: Any) -> bool:
    """The request's `explain` parameter: absent, or a boolean (InvalidInput otherwise)."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput.at(["parameters", EXPLAIN], "must be a boolean (true or false)", "type")
    return value


def response_parameters(result: InferenceResult) -> dict[str, str]:
    """The answer's response parameters: its warnings as one string (OIP parameters hold
    scalars, not lists), and what says how to read an explanation's tensors: the method,
    the output space, the reference of the base value, and (as JSON arrays) the features
    of the last axis and the classes of the middle one."""
    parameters = {WARNINGS: "; ".join(result.warnings)} if result.warnings else {}
    explanation = result.explanation
    if explanation is not None:
        parameters.update(
            explain_method=explanation.method,
            explain_space=explanation.space,
            explain_reference=explanation.reference,
            explain_features=json.dumps(list(explanation.features)),
            explain_classes=json.dumps(list(explanation.classes)),
        )
    return parameters


def outputs_for(prediction: InferenceResult) -> list[OutputTensor]:
    """The output tensors the result names (checked by the core before the model ran)."""
    schema = prediction.model.schema
    out = prediction.output
    rows = int(out.shape[0])
    tensors = []
    explanation = prediction.explanation
    for name in prediction.outputs:
        if name in EXPLAIN_OUTPUT_NAMES:
            if explanation is not None:
                array = {
                    EXPLAIN_CONTRIBUTIONS: explanation.contributions,
                    EXPLAIN_BASE_VALUE: explanation.base_value,
                    EXPLAIN_OUTPUTS: explanation.outputs,
                }[name]
                tensors.append(OutputTensor(name, datatypes.FP64, list(array.shape), array))
        elif name == OUTPUT_PREDICTION_ID:
            tensors.append(OutputTensor(name, datatypes.BYTES, [rows], np.array(prediction.ids, dtype=object)))
        elif name == OUTPUT_PREDICT_PROBA:
            tensors.append(OutputTensor(name, datatypes.FP64, [rows, int(out.shape[1])], out))
        elif schema.is_classifier:
            labels = np.array([schema.classes[i] for i in np.argmax(out, axis=1)], dtype=object)
            tensors.append(OutputTensor(name, datatypes.BYTES, [rows], labels))
        else:
            tensors.append(OutputTensor(name, datatypes.FP64, [rows], out))
    return tensors


def model_metadata(name: str, versions: list[str], schema: InputSchema) -> dict[str, Any]:
    """Model metadata from the name's published schema (its first variant's); -1 marks the
    batch dimension. Each input's `parameters` (MLServer's extension of the protocol) say
    what a missing value is: `missing` is "" for a BYTES input, "NaN" for a number; the
    single tensor of an all-numeric model lists its columns in order under `features`."""
    width = len(schema.features)
    if schema.has_categorical:
        inputs = [
            {
                "name": f.name,
                "datatype": datatypes.BYTES if f.is_categorical else datatypes.FP64,
                "shape": [-1],
                "parameters": {MISSING: MISSING_TEXT if f.is_categorical else NAN},
            }
            for f in schema.features
        ]
    else:
        parameters = {MISSING: NAN, FEATURES: json.dumps(schema.names)}
        inputs = [{"name": INPUT_NAME, "datatype": datatypes.FP64, "shape": [-1, width], "parameters": parameters}]
    label_type = datatypes.BYTES if schema.is_classifier else datatypes.FP64
    outputs = [{"name": OUTPUT_PREDICT, "datatype": label_type, "shape": [-1]}]
    if schema.is_classifier:
        outputs.append({"name": OUTPUT_PREDICT_PROBA, "datatype": datatypes.FP64, "shape": [-1, len(schema.classes)]})
    outputs.append({"name": OUTPUT_PREDICTION_ID, "datatype": datatypes.BYTES, "shape": [-1]})
    return {
        "name": name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": outputs,
    }


def _flat_values(data: Any, where: list[Any]) -> np.ndarray:
    """Flatten JSON data (flat or nested lists) of numbers; null is a missing value."""
    if not isinstance(data, list):
        raise InvalidInput.at([*where, "data"], "must be a list of numbers", "type")
    flat = _plain_values(data)
    if flat is None:
        flat = _walked_values(data, where)
    try:
        values = np.array(flat, dtype=np.float64)
    except OverflowError:
        raise InvalidInput.at([*where, "data"], "holds a number too large for FP64", "type") from None
    if not np.isfinite(values[~np.isnan(values)]).all():
        raise InvalidInput.at([*where, "data"], "must hold finite numbers", "finite")
    return values


def _plain_values(data: list[Any]) -> list[Any] | None:
    """`data` as one flat list when it holds nothing but numbers and nulls, flat or as rows
    (what clients send), found a list at a time; None for anything else, which
    `_walked_values` reads value by value to name the problem. numpy reads null as NaN."""
    if data and type(data[0]) is list:
        if not all(type(row) is list for row in data):
            return None
        data = [value for row in data for value in row]
    return data if set(map(type, data)) <= PLAIN_VALUE_TYPES else None


def _walked_values(data: list[Any], where: list[Any]) -> list[Any]:
    """`data` flattened value by value (lists nested to any depth); InvalidInput at the
    first value that is not a number or null."""
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
    return flat
