"""The batch scoring core (model_server/models/scoring.py): each row of a table is judged
as the server judges a request of that one row, and valid rows are predicted as the
server's runtime predicts them."""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from model_server.errors import InvalidInput
from model_server.models.pipeline_runtime import pipeline_output
from model_server.models.schema import ACCEPT, CATEGORICAL, CLASSIFICATION, Feature, InputSchema
from model_server.models.scoring import ERROR, PREDICTION, TAG, Scorer, ScoringArtifact, table_column

SCHEMA = InputSchema(
    task=CLASSIFICATION,
    features=(
        Feature("colour", "string", kind=CATEGORICAL, categories=("blue", "red"), missing=""),
        Feature("size", "float64", 0.0, 10.0),
        Feature("weight", "float64", -5.0, 5.0),
    ),
    classes=("no", "yes"),
    frame_input=True,
)
NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
# Cells as a CSV gives them (text; None for an empty cell), good and bad.
CELLS = [
    ("red", "1.5", "0"),
    ("blue", None, "-2.5e0"),
    (None, "3", None),
    ("", "7", "4"),  # an empty category: missing, as MISSING_TEXT in the API
    ("green", "1", "1"),  # a category training never saw
    ("red", "abc", "1"),  # text where a number is expected
    ("red", "1e9", "1"),  # beyond the plausible range
    ("purple", "1e9", "x"),  # a value problem hides the range and category problems, as in the API
    ("purple", "1e9", "1"),  # a range problem hides the category problem
    ("red", "nan", "inf"),  # texts that are not decimal numbers
    ("red", "1.", ".5"),
    ("red", " 2", "+3"),
]


def request_problems(record: dict[str, Any], unknown: str = "reject") -> list[dict[str, Any]]:
    """What the server's check answers for a request of this one record (no problem: [])."""
    try:
        SCHEMA.rows_to_matrix([record], 10, unknown)
    except InvalidInput as exc:
        return [{**p, "loc": p["loc"][2:]} for p in exc.detail]
    return []


def as_json(cell: str | None, numeric: bool) -> Any:
    """The JSON value a person would send for a CSV cell: a number where the text is one."""
    if cell is None:
        return None
    return float(cell) if numeric and NUMBER.match(cell) else cell


def text_batch(cells: list[tuple[str | None, ...]]) -> pa.RecordBatch:
    names = SCHEMA.names
    return pa.RecordBatch.from_pydict({n: [row[i] for row in cells] for i, n in enumerate(names)})


@pytest.mark.parametrize("unknown", ["reject", ACCEPT])
def test_each_row_gets_the_problems_of_a_one_row_request(unknown: str) -> None:
    batch = text_batch(CELLS)
    columns = [table_column(f.is_categorical, batch.column(f.name)) for f in SCHEMA.features]
    matrix, problems = SCHEMA.check_columns(columns, unknown)
    for row, cells in enumerate(CELLS):
        record = {f.name: as_json(c, not f.is_categorical) for f, c in zip(SCHEMA.features, cells, strict=True)}
        assert problems.get(row, []) == request_problems(record, unknown), cells
        if row not in problems:  # a valid row reaches the model as the server's check builds it
            want = SCHEMA.rows_to_matrix([record], 10, unknown)[0]
            assert [_same(a, b) for a, b in zip(matrix[row], want, strict=True)] == [True] * 3
    assert sorted(problems) == ([4, 5, 6, 7, 8, 9, 11] if unknown == "reject" else [5, 6, 7, 8, 9, 11])


def test_a_numeric_feature_stored_as_string_view_text_is_read_as_any_text_column() -> None:
    column = table_column(False, pa.array(["1.5", "x", None], pa.string_view()))
    as_text = table_column(False, pa.array(["1.5", "x", None], pa.string()))
    assert np.array_equal(column.values, as_text.values, equal_nan=True) and column.values[0] == 1.5
    assert column.others == as_text.others == {1: "x"}


def test_typed_columns_read_as_json_values_of_their_kind() -> None:
    booleans = table_column(False, pa.array([True, None]))
    numbers_as_categories = table_column(True, pa.array([1.0, None, math.nan]))
    integers = table_column(False, pa.array([3, None], pa.int64()))
    floats = table_column(False, pa.array([math.inf, math.nan, None, 2.0]))
    columns = [numbers_as_categories, table_column(False, pa.array([1.0, 1.0, 1.0])), table_column(False, pa.nulls(3))]
    _, problems = SCHEMA.check_columns(columns)
    assert problems[0] == [
        {"loc": ["colour"], "msg": "must be a string (a category) or null, got number", "type": "type"}
    ]
    assert list(problems) == [0]  # null and NaN are gaps
    assert booleans.others == {0: True} and integers.values[0] == 3.0 and math.isnan(integers.values[1])
    _, problems = SCHEMA.check_columns([table_column(True, pa.array(["red"] * 4)), floats, floats])
    assert problems[0][0] == {"loc": ["size"], "msg": "must be a finite number", "type": "finite"}
    assert list(problems) == [0]  # NaN is a gap in a number column, as in a tensor


def test_dictionary_and_large_text_columns() -> None:
    colours = pa.array(["red", None, "blue"]).dictionary_encode()
    column = table_column(True, colours)
    assert column.values.tolist() == ["red", None, "blue"]
    assert table_column(False, pa.array(["1", "x"], pa.large_string())).others == {1: "x"}


@pytest.fixture(scope="module")
def fitted() -> Any:
    """A small pipeline on named columns, as training fits one (no ONNX export)."""
    rng = np.random.default_rng(0)
    rows = 200
    frame_rows = np.empty((rows, 3), dtype=object)
    frame_rows[:, 0] = rng.choice(["blue", "red", ""], rows)
    frame_rows[:, 1] = rng.uniform(0, 10, rows)
    frame_rows[:, 2] = rng.uniform(-5, 5, rows)
    from model_server.models.pipeline_runtime import pipeline_frame

    frame = pipeline_frame(SCHEMA, frame_rows)
    labels = np.where(frame["size"] + (frame["colour"] == "red") * 3 > 6, "yes", "no")
    encode = ColumnTransformer(
        [("c", OneHotEncoder(handle_unknown="ignore"), ["colour"]), ("n", SimpleImputer(), ["size", "weight"])]
    )
    return make_pipeline(encode, LogisticRegression()).fit(frame, labels)


def test_scorer_answers_the_servers_output_and_an_error_per_invalid_row(fitted: Any) -> None:
    artifact = ScoringArtifact("m:v1", SCHEMA, "sklearn", pipeline=pickle.dumps(fitted))
    scorer = Scorer(ScoringArtifact.from_bytes(artifact.to_bytes()), explain=True)
    batch = text_batch(CELLS).append_column("id", pa.array(range(len(CELLS))))
    scored = scorer.score(batch, keep=["id"])
    out = scored.batch.to_pydict()
    assert scored.rows == len(CELLS) and scored.invalid == 7
    assert out["id"] == list(range(len(CELLS))) and set(out[TAG]) == {"m:v1"}
    for row, cells in enumerate(CELLS):
        record = {f.name: as_json(c, not f.is_categorical) for f, c in zip(SCHEMA.features, cells, strict=True)}
        if request_problems(record):
            assert out[PREDICTION][row] is None and out["probability_yes"][row] is None
            assert out[ERROR][row] == request_problems(record)
            assert out["contribution_size"][row] is None
            continue
        proba = pipeline_output(fitted, SCHEMA, SCHEMA.rows_to_matrix([record], 1))[0]
        assert out[ERROR][row] is None
        # A linear model's matrix product may round the last bit apart for a batch and one row.
        assert [out["probability_no"][row], out["probability_yes"][row]] == pytest.approx(proba.tolist(), abs=1e-15)
        assert out[PREDICTION][row] == SCHEMA.classes[int(np.argmax(proba))]
        explained = [out[f"contribution_{n}"][row] for n in SCHEMA.names]
        facts = scorer.explanation_facts()
        assert facts is not None
        log_odds = math.log(proba[1] / proba[0])
        assert facts["base_value"][0] + sum(explained) == pytest.approx(log_odds, abs=1e-9)


def _same(a: Any, b: Any) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


def test_a_name_alone_scores_with_the_routings_heaviest_variant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The routing file a running server follows decides, as it does for the server."""
    from model_server.config.routing import Routing
    from model_server.config.settings import ServedModel, Variant
    from scoring.cli import choose

    def route(*variants: Variant) -> None:
        served = ServedModel(variants=list(variants), unknown_categories="accept")
        (tmp_path / "routing.yaml").write_text(Routing(revision=3, models={"titanic": served}).to_text())

    monkeypatch.setenv("MODEL_SERVER_ROUTING_FILE", str(tmp_path / "routing.yaml"))
    route(Variant(tag="titanic:v1", weight=10), Variant(tag="titanic:v2", weight=90, runtime="sklearn"))
    heaviest = choose("titanic", None)
    assert (heaviest.tag, heaviest.runtime, heaviest.unknown_categories) == ("titanic:v2", "sklearn", "accept")
    assert "largest weight, 90 of 100" in heaviest.why
    assert choose("titanic", "onnx").runtime == "onnx"
    route(Variant(tag="titanic:v1", weight=50), Variant(tag="titanic:v2", weight=50))
    assert choose("titanic", None).tag == "titanic:v1"  # the first of equal weights
    pinned = choose("titanic:v2", None)
    assert (pinned.tag, pinned.runtime, pinned.unknown_categories) == ("titanic:v2", None, "accept")


def test_a_kept_columns_type_is_its_parts_types_unified(tmp_path: Path) -> None:
    """An all-null part takes the others' type, int32 and int64 give int64, dictionary
    text is text: every batch can be cast to the output's column (scoring/sources.py)."""
    import pyarrow.parquet as pq

    from scoring.sources import open_source

    pq.write_table(pa.table({"note": pa.nulls(2), "n": pa.array([1, 2], pa.int32())}), tmp_path / "part-0.parquet")
    pq.write_table(
        pa.table({"note": pa.array(["a", None], pa.large_string()), "n": [3, 4]}), tmp_path / "part-1.parquet"
    )
    pq.write_table(pa.table({"note": pa.array(["b"]).dictionary_encode(), "n": [5]}), tmp_path / "part-2.parquet")
    source = open_source(str(tmp_path))
    assert source.field("note").type == pa.large_string() and source.field("n").type == pa.int64()
    assert pa.nulls(2).cast(source.field("note").type).to_pylist() == [None, None]


def test_a_kept_value_that_does_not_fit_its_unified_type_is_one_error_not_a_traceback(tmp_path: Path) -> None:
    """int64 and double parts unify to double, which holds no integer beyond 2**53 exactly:
    the job stops with a JobError (exit 2) and writes nothing."""
    import pyarrow.parquet as pq

    from bench.batch_tables import measurements
    from scoring.job import JobError
    from scoring.local import _as_output
    from scoring.sources import open_source

    rows = measurements(2, seed=1)
    pq.write_table(pa.Table.from_pandas(rows.assign(ref=[2**53 + 1, 1]), preserve_index=False), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pandas(rows.assign(ref=[0.5, 1.5]), preserve_index=False), tmp_path / "b.parquet")
    schema = pa.schema([open_source(str(tmp_path)).field("ref")])
    assert schema.field("ref").type == pa.float64()
    fits = pa.RecordBatch.from_pydict({"ref": pa.array([3, 4], pa.int64())})
    assert _as_output(fits, schema).column(0).to_pylist() == [3.0, 4.0]
    with pytest.raises(JobError, match="a kept column cannot be written as its type"):
        _as_output(pa.RecordBatch.from_pydict({"ref": pa.array([2**53 + 1], pa.int64())}), schema)
