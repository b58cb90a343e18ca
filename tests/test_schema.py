"""Validation of JSON instances and tensors against a stored input schema."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_server.errors import InvalidInput
from model_server.models.schema import CATEGORICAL, CLASSIFICATION, Feature, InputSchema

SCHEMA = InputSchema(
    task=CLASSIFICATION,
    features=(Feature("a", "float64", 0.0, 1.0), Feature("b c", "float64", -1.0, 1.0)),
    classes=("no", "yes"),
)


def problems(instances: object, max_rows: int = 10) -> list[dict]:
    with pytest.raises(InvalidInput) as caught:
        SCHEMA.rows_to_matrix(instances, max_rows)
    assert caught.value.status == 400
    return caught.value.detail


def test_records_are_put_in_training_order() -> None:
    matrix = SCHEMA.rows_to_matrix([{"b c": 2.5, "a": 1}, {"a": -3.0, "b c": 0}], 10)
    assert matrix.dtype == np.float64
    assert matrix.tolist() == [[1.0, 2.5], [-3.0, 0.0]]


def test_rows_and_null_as_missing_value() -> None:
    matrix = SCHEMA.rows_to_matrix([[0.5, None]], 10)
    assert matrix[0, 0] == 0.5 and math.isnan(matrix[0, 1])


def test_schema_round_trips_through_metadata_dict() -> None:
    assert InputSchema.from_dict(SCHEMA.to_dict()) == SCHEMA


@pytest.mark.parametrize(
    ("instances", "loc", "kind", "words"),
    [
        ({"a": 1}, ["instances"], "type", "must be a list"),
        ([], ["instances"], "empty", "at least one"),
        ([[1, 2]] * 11, ["instances"], "too_long", "at most 10"),
        ([{"a": 1, "b c": 2, "z": 3}], ["instances", 0, "z"], "unknown", "not a feature"),
        ([{"a": 1}], ["instances", 0, "b c"], "missing", "is missing"),
        ([{"a": "1", "b c": 2}], ["instances", 0, "a"], "type", "got string"),
        ([{"a": True, "b c": 2}], ["instances", 0, "a"], "type", "got boolean"),
        ([[1, [2]]], ["instances", 0, "b c"], "type", "got array"),
        ([[1, math.nan]], ["instances", 0, "b c"], "type", "finite"),
        ([[math.inf, 1]], ["instances", 0, "a"], "type", "finite"),
        ([[10**400, 1]], ["instances", 0, "a"], "type", "too large"),
        ([[1, 2, 3]], ["instances", 0], "length", "has 3 values; the model takes 2"),
        ([[1, 2], {"a": 1, "b c": 2}], ["instances", 1], "type", "like the first row"),
        (["x"], ["instances", 0], "type", "object keyed by feature name"),
    ],
)
def test_each_rule_names_field_and_rule(instances: object, loc: list, kind: str, words: str) -> None:
    first = problems(instances)[0]
    assert first["loc"] == loc
    assert first["type"] == kind
    assert words in first["msg"]


def test_message_names_the_place_and_counts_the_rest() -> None:
    with pytest.raises(InvalidInput) as caught:
        SCHEMA.rows_to_matrix([{"a": "x", "b c": "y"}], 10)
    assert caught.value.message == "invalid input: instances[0]['a']: must be a number or null, got string (and 1 more)"


def test_unknown_and_missing_together_are_both_reported() -> None:
    kinds = {p["type"] for p in problems([{"a": 1, "zz": 2}])}
    assert kinds == {"unknown", "missing"}


def test_tensor_checks_shape_and_infinity_but_keeps_nan_as_missing() -> None:
    ok = SCHEMA.check_matrix(np.array([[1.0, np.nan]], dtype=np.float32), 10)
    assert ok.dtype == np.float64 and math.isnan(ok[0, 1])
    with pytest.raises(InvalidInput, match=r"must be \[rows, 2\], got \[1, 3\]"):
        SCHEMA.check_matrix(np.zeros((1, 3)), 10)
    with pytest.raises(InvalidInput, match="finite"):
        SCHEMA.check_matrix(np.array([[1.0, np.inf]]), 10)
    with pytest.raises(InvalidInput, match="holds 11 rows; at most 10"):
        SCHEMA.check_matrix(np.zeros((11, 2)), 10)


def test_values_beyond_the_plausible_range_are_refused() -> None:
    # Feature "a" was seen in [0, 1]: anything within a million times that passes.
    assert SCHEMA.rows_to_matrix([[-999_999.0, 1.0]], 10)[0, 0] == -999_999.0
    with pytest.raises(InvalidInput, match=r"instances\[0\]\['a'\]: is 1e\+300, beyond the plausible range") as caught:
        SCHEMA.rows_to_matrix([[1e300, None]], 10)
    assert caught.value.detail[0]["type"] == "range"
    with pytest.raises(InvalidInput, match="beyond the plausible range"):
        SCHEMA.check_matrix(np.array([[0.0, -1e7]]), 10)


@pytest.mark.parametrize("marker", ["", None], ids=["cli-trained", "imported"])
def test_null_and_the_empty_string_are_the_missing_category_of_every_tag(marker: str | None) -> None:
    """A CLI-trained tag's pipeline fills "" (Feature.missing ""), an imported one NaN
    (None): both take null and "" on every door, records, rows and BYTES tensors alike."""
    schema = InputSchema(
        task=CLASSIFICATION,
        features=(Feature("plan", "object", kind="categorical", categories=("a", "b"), missing=marker),),
        classes=("no", "yes"),
    )

    def is_marker(value: object) -> bool:
        return value == "" if marker == "" else isinstance(value, float) and math.isnan(value)

    matrix = schema.rows_to_matrix([{"plan": ""}, {"plan": None}, {"plan": "a"}], 10)
    rows = schema.rows_to_matrix([[""], [None], ["b"]], 10)
    tensor = schema.check_matrix(np.array([[""], [None], ["a"]], dtype=object), 10)
    for found in (matrix, rows, tensor):
        assert is_marker(found[0, 0]) and is_marker(found[1, 0]) and found[2, 0] in ("a", "b")
    assert schema.unknown_categories(tensor) == []


def test_rows_follow_the_order_given_and_land_in_the_schemas_own() -> None:
    """Another tag of the name lists ("b c", "a"): its rows arrive in that order."""
    assert SCHEMA.positions(["b c", "a"]) == [1, 0] and SCHEMA.positions(["a", "b c"]) is None
    matrix = SCHEMA.rows_to_matrix([[0.5, 0.25]], 10, order=["b c", "a"])
    assert matrix.tolist() == [[0.25, 0.5]]
    assert SCHEMA.rows_to_matrix([{"a": 0.25, "b c": 0.5}], 10, order=["b c", "a"]).tolist() == [[0.25, 0.5]]
    with pytest.raises(InvalidInput) as caught:
        SCHEMA.rows_to_matrix([[0.5, "x"]], 10, order=["b c", "a"])
    assert caught.value.detail[0]["loc"] == ["instances", 0, "a"]


VALUES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=3)
    | st.lists(st.integers(), max_size=2)
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(VALUES, min_size=1, max_size=3), min_size=1, max_size=4), st.booleans())
def test_rows_read_at_once_equal_rows_read_value_by_value(instances: list[list[object]], reordered: bool) -> None:
    """The fast path for rows of numbers and nulls gives what the value-by-value path
    gives, and leaves to it every row it would refuse."""
    positions = [1, 0] if reordered else None
    fast = SCHEMA._plain_rows(instances, positions)
    slow, refused = SCHEMA._rows(instances, positions)
    if fast is None:
        return
    assert not refused
    np.testing.assert_array_equal(fast, slow)


def test_values_outside_the_training_range_are_kept_and_named_in_warnings() -> None:
    # "a" was seen in [0, 1], "b c" in [-1, 1]: the edges are inside, missing values are neither.
    matrix, outside = SCHEMA.checked_rows([[0.0, 1.0], [1.0, None], [0.5, -1.0]], 10)
    assert outside is None and matrix.shape == (3, 2)
    matrix, outside = SCHEMA.checked_rows([{"a": 1.5, "b c": 0.0}], 10)
    assert outside is not None and matrix[0, 0] == 1.5
    assert SCHEMA.range_warnings(matrix, outside) == ["a: 1.5 is outside the training range 0 to 1"]
    matrix, outside = SCHEMA.checked_matrix(np.array([[0.5, 0.0], [2.0, -3.0], [-0.25, np.nan]]), 10)
    assert outside is not None
    assert SCHEMA.range_warnings(matrix, outside) == [
        "a: 2 of 3 rows are outside the training range 0 to 1 (the first: row 1, 2)",
        "b c: 1 of 3 rows are outside the training range -1 to 1 (the first: row 1, -3)",
    ]


def test_range_warnings_of_a_model_with_categories_name_the_numeric_feature() -> None:
    schema = InputSchema(
        task=CLASSIFICATION,
        features=(
            Feature("plan", "object", kind="categorical", categories=("a", "b"), missing=""),
            Feature("age", "float64", 1.0, 80.0),
        ),
        classes=("no", "yes"),
    )
    matrix, outside = schema.checked_rows([{"plan": "a", "age": 91}, {"plan": None, "age": None}], 10)
    assert outside is not None
    assert schema.range_warnings(matrix, outside) == [
        "age: 1 of 2 rows are outside the training range 1 to 80 (the first: row 0, 91)"
    ]
    assert schema.checked_rows([{"plan": "b", "age": 80}], 10)[1] is None


def test_unknown_categories_are_found_alike_in_a_request_and_in_a_table() -> None:
    from model_server.models.schema import SET_LOOKUP_ROWS

    schema = InputSchema(
        task=CLASSIFICATION,
        features=(
            Feature("c", "object", kind=CATEGORICAL, categories=("a", "b"), missing="?"),
            Feature("x", "float64", 0.0, 1.0),
        ),
        classes=("no", "yes"),
    )
    cells = ["a", "b", "?", None, math.nan, "z", 1.0, "", "A"]
    small = np.array([[v, 0.5] for v in cells], dtype=object)
    large = np.array([[v, 0.5] for v in cells * (SET_LOOKUP_ROWS // len(cells) + 1)], dtype=object)
    found_small = next(schema._unknown(small))[2]
    found_large = next(schema._unknown(large))[2]
    assert found_small.tolist() == [False, False, False, False, False, True, True, True, True]
    assert found_large.tolist() == found_small.tolist() * (SET_LOOKUP_ROWS // len(cells) + 1)
