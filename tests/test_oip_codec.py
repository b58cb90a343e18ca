"""OIP tensors to the core's matrix and back, without a server (model_server/transports/oip.py)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from unittest import mock

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_server.core.server import InferenceResult
from model_server.errors import InvalidInput
from model_server.models.registry import LoadedModel
from model_server.models.schema import CATEGORICAL, CLASSIFICATION, Feature, InputSchema
from model_server.transports import oip

NUMERIC = InputSchema(
    task=CLASSIFICATION, features=(Feature("a", "float64", 0, 3), Feature("b", "float64", 0, 3)), classes=("no", "yes")
)
MIXED = InputSchema(
    task=CLASSIFICATION,
    features=(Feature("age", "float64", 0, 90), Feature("port", "object", kind=CATEGORICAL, categories=("C", "S"))),
    classes=("no", "yes"),
)


def problem(exc: pytest.ExceptionInfo[InvalidInput]) -> tuple[list[object], str]:
    first = exc.value.detail[0]
    return first["loc"], first["type"]


def test_a_numeric_tensor_becomes_rows_of_floats_from_json_or_raw_bytes() -> None:
    data = oip.InputTensor("features", "FP32", [2, 2], data=[[1, 2], [3, None]])
    matrix = oip.Tensors([data]).to_matrix(NUMERIC)
    assert matrix.dtype == np.float64 and matrix[0].tolist() == [1.0, 2.0] and np.isnan(matrix[1, 1])
    raw = oip.InputTensor("features", "FP64", [1, 2], raw=np.array([0.5, 1.5], "<f8").tobytes())
    assert oip.Tensors([raw]).to_matrix(NUMERIC).tolist() == [[0.5, 1.5]]


@pytest.mark.parametrize(
    ("tensor", "loc", "kind"),
    [
        (oip.InputTensor("x", "FP64", [1, 2], data=[1.0, 2.0, 3.0]), ["inputs", "x", "data"], "length"),
        (oip.InputTensor("x", "FP64", [1, 2], raw=b"\x00" * 15), ["inputs", "x", "raw"], "length"),
        (oip.InputTensor("x", "INT128", [1, 2], data=[1, 2]), ["inputs", "x", "datatype"], "datatype"),
        (oip.InputTensor("x", "FP64", [2], data=[1, 2]), ["inputs", "x", "shape"], "shape"),
        (oip.InputTensor("x", "FP64", [1, 2], data=[1, "2"]), ["inputs", "x", "data"], "type"),
        (oip.InputTensor("x", "FP64", [1, 2], data=[1, 1e308 * 10]), ["inputs", "x", "data"], "finite"),
        # Values that do not fit the declared datatype (raw bytes always fit theirs).
        (oip.InputTensor("x", "INT8", [1, 2], data=[1, 1000]), ["inputs", "x", "data"], "datatype"),
        (oip.InputTensor("x", "UINT8", [1, 2], data=[-5, 1]), ["inputs", "x", "data"], "datatype"),
        (oip.InputTensor("x", "INT64", [1, 2], data=[1.5, 2]), ["inputs", "x", "data"], "datatype"),
        (oip.InputTensor("x", "FP32", [1, 2], data=[1e39, 2]), ["inputs", "x", "data"], "datatype"),
    ],
)
def test_bad_numeric_tensors_name_the_place_and_the_rule(tensor: oip.InputTensor, loc: list[object], kind: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        oip.Tensors([tensor]).to_matrix(NUMERIC)
    assert problem(caught) == (loc, kind)


# What JSON data holds: numbers of any size, nulls, and what a numeric tensor refuses.
JSON_VALUES = st.one_of(
    st.floats(allow_nan=False),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
)


@given(
    st.one_of(
        st.lists(JSON_VALUES, max_size=8),
        st.lists(st.lists(JSON_VALUES, max_size=4), max_size=4),
        st.lists(st.one_of(JSON_VALUES, st.lists(st.lists(JSON_VALUES, max_size=3), max_size=2)), max_size=4),
    )
)
def test_numbers_read_a_list_at_a_time_equal_numbers_read_one_by_one(data: list[object]) -> None:
    """The whole-list path (numbers and nulls, flat or as rows) answers what the
    value-by-value walk answers: the same values, or the same refusal."""
    where: list[object] = ["inputs", "x"]

    def outcome(read: Callable[[], np.ndarray]) -> object:
        try:
            values = read()
        except InvalidInput as exc:
            return exc.detail
        return [None if np.isnan(v) else float(v) for v in values]

    whole = outcome(lambda: oip._flat_values(data, where))
    with mock.patch.object(oip, "_plain_values", lambda data: None):  # every value walked
        walked = outcome(lambda: oip._flat_values(data, where))
    assert whole == walked


def test_values_that_fit_the_declared_datatype_are_taken_with_nulls_as_missing() -> None:
    tensor = oip.InputTensor("x", "INT8", [2, 2], data=[[-128, 127], [None, 3]])
    matrix = oip.Tensors([tensor]).to_matrix(NUMERIC)
    assert matrix[0].tolist() == [-128.0, 127.0] and np.isnan(matrix[1, 0]) and matrix[1, 1] == 3.0
    assert oip.Tensors([oip.InputTensor("x", "FP32", [1, 2], data=[3.4e38, 1.5])]).to_matrix(NUMERIC)[0, 1] == 1.5


def test_a_model_with_categories_takes_one_tensor_per_feature() -> None:
    port = struct.pack("<I", 1) + b"S" + struct.pack("<I", 0)
    tensors = [
        oip.InputTensor("age", "FP64", [2], data=[30, 40]),
        oip.InputTensor("port", "BYTES", [2, 1], raw=port),
    ]
    matrix = oip.Tensors(tensors).to_matrix(MIXED)
    assert matrix.dtype == object and matrix[:, 1].tolist() == ["S", ""] and matrix[:, 0].tolist() == [30.0, 40.0]
    with pytest.raises(InvalidInput) as caught:
        oip.Tensors(tensors[:1]).to_matrix(MIXED)
    assert problem(caught) == (["inputs", "port"], "missing")
    with pytest.raises(InvalidInput) as caught:
        oip.Tensors([*tensors, oip.InputTensor("deck", "BYTES", [2], data=["a", "b"])]).to_matrix(MIXED)
    assert problem(caught) == (["inputs", "deck"], "unknown")


def test_outputs_and_response_parameters_of_a_classification() -> None:
    model = LoadedModel(tag="m:v1", pipeline=None, schema=NUMERIC)
    output = np.array([[0.25, 0.75], [0.9, 0.1]])
    result = InferenceResult("m", model, output, 3, ("unknown category",), ("predict", "predict_proba"))
    labels, probabilities = oip.outputs_for(result)
    assert (labels.name, labels.datatype, labels.shape, labels.as_list()) == ("predict", "BYTES", [2], ["yes", "no"])
    assert labels.as_bytes() == struct.pack("<I", 3) + b"yes" + struct.pack("<I", 2) + b"no"
    assert probabilities.shape == [2, 2] and np.frombuffer(probabilities.as_bytes(), "<f8").tolist() == [
        0.25,
        0.75,
        0.9,
        0.1,
    ]
    assert oip.response_parameters(result) == {oip.WARNINGS: "unknown category"}


def test_explain_parameter_must_be_a_boolean() -> None:
    assert oip.wants_explanation(None) is False and oip.wants_explanation(True) is True
    with pytest.raises(InvalidInput) as caught:
        oip.wants_explanation("yes")
    assert problem(caught) == (["parameters", "explain"], "type")


def test_problems_found_in_the_decoded_matrix_are_named_in_the_tensors_and_all_counted() -> None:
    """30 refused values: the detail holds the first 20, each where the request holds it, and
    the message still counts all 30."""
    found = InvalidInput.from_problems(
        [{"loc": [r, "port"], "msg": "not a category", "type": "category"} for r in range(30)]
    )
    tensors = oip.Tensors([oip.InputTensor("age", "FP64", [30]), oip.InputTensor("port", "BYTES", [30], raw=b"")])
    named = tensors.located(found, MIXED)
    assert [p["loc"] for p in named.detail[:2]] == [["inputs", "port", "raw", 0], ["inputs", "port", "raw", 1]]
    assert (
        len(named.detail) == 20
        and named.message == "invalid input: inputs['port']['raw'][0]: not a category (and 29 more)"
    )
    numeric = oip.Tensors([oip.InputTensor("features", "FP64", [1, 2], data=[1, 9])])
    one = numeric.located(InvalidInput.at([0, "b"], "is beyond the plausible range", "range"), NUMERIC)
    assert one.detail[0]["loc"] == ["inputs", "features", "data", 0, "b"] and one.total == 1
    rows = numeric.located(InvalidInput.at(["shape"], "must hold at least one row", "empty"), NUMERIC)
    assert rows.detail[0]["loc"] == ["inputs", "features", "shape"]
