"""The users' own tables: kinds and task inferred, training from CSV and Parquet,
categorical features in the schema, importing a fitted pipeline (skops, pickle)."""

from __future__ import annotations

import datetime
import decimal
import math
import pickle
from contextlib import nullcontext
from pathlib import Path

import bentoml
import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from model_server.constants import SCHEMA_METADATA_KEY
from model_server.errors import InvalidInput
from model_server.models.registry import load
from model_server.models.schema import CATEGORICAL, CLASSIFICATION, REGRESSION, InputSchema
from tests import fault_models
from training import tables
from training.__main__ import main


def churn_table(rows: int = 240, seed: int = 0) -> pd.DataFrame:
    """A churn-like table: ids, numbers with gaps, text categories with gaps, a text label."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "plus", "pro"], rows)
    months = rng.integers(1, 60, rows).astype(float)
    months[rng.random(rows) < 0.1] = np.nan
    region = rng.choice(["north", "south", None], rows, p=[0.5, 0.4, 0.1])
    spend = rng.normal(50, 15, rows).round(2)
    churn = np.where((plan == "basic") & (np.nan_to_num(months, nan=30) < 20) | (spend > 70), "yes", "no")
    return pd.DataFrame(
        {
            "customer_id": np.arange(rows),
            "plan": plan,
            "months": months,
            "region": region,
            "spend": spend,
            "churned": churn,
        }
    )


def test_kinds_and_task_are_inferred_and_can_be_overridden() -> None:
    frame = churn_table()
    table = tables.from_frame("churn", frame, "churned", "test", drop=["customer_id"])
    assert table.task == CLASSIFICATION and table.categorical == ("plan", "region")
    assert table.numeric == ("months", "spend")
    assert table.frame["region"].isin(["north", "south", tables.MISSING_CATEGORY]).all()
    as_category = tables.from_frame("churn", frame, "churned", "test", categorical=["customer_id"])
    assert "customer_id" in as_category.categorical and as_category.frame["customer_id"].iloc[3] == "3"
    regression = tables.from_frame("spend", frame, "spend", "test", drop=["customer_id", "churned"])
    assert regression.task == REGRESSION


def test_columns_written_with_spaces_after_the_commas_are_named_without_them(tmp_path: Path) -> None:
    """A header written "plan, months, ..." names its columns " months": the options, read
    stripped, still name them (as the id warning's --drop suggests)."""
    path = tmp_path / "spaced.csv"
    churn_table().to_csv(path, index=False)
    path.write_text(path.read_text().replace(",", ", ", 5))
    frame = tables.read_file(path)
    assert " churned" in frame.columns
    table = tables.from_frame("churn", frame, "churned", "test", drop=["customer_id"], numeric=["months"])
    assert table.target_name == " churned" and " customer_id" not in table.frame.columns
    assert " months" in table.numeric


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"target": "nope"}, "column 'nope' is not in the data"),
        ({"target": "churned", "numeric": ["plan"]}, "column 'plan' is numeric but holds '(basic|plus|pro)'"),
        ({"target": "churned", "numeric": ["plan"], "categorical": ["plan"]}, "both categorical and numeric"),
        ({"target": "churned", "categorical": ["churned"]}, "column 'churned' is the target, so it is not a feature"),
        ({"target": "churned", "drop": ["plan"], "categorical": ["plan"]}, "column 'plan' is dropped"),
        (
            {"target": "churned", "frame": lambda f: f.assign(seen=pd.Timestamp("2026-01-01"))},
            "column 'seen' holds dates or times",
        ),
        ({"target": "churned", "frame": lambda f: f.assign(spend=np.inf)}, "column 'spend' holds an infinite number"),
        (  # how a Parquet date32 column reads: Python dates in an object column
            {"target": "churned", "frame": lambda f: f.assign(day=datetime.date(2026, 1, 1))},
            "column 'day' holds dates or times",
        ),
        ({"target": "churned", "frame": lambda f: f.assign(note="")}, "column 'note' has no values .* --drop note"),
        ({"target": "churned", "frame": lambda f: f.assign(note=None)}, "column 'note' has no values"),
        ({"target": "churned", "frame": lambda f: f.assign(score=np.nan)}, "column 'score' has no values"),
        (  # how a Parquet list column reads: arrays in an object column
            {"target": "churned", "frame": lambda f: f.assign(tags=[np.array(["a", "b"])] * len(f))},
            "column 'tags' holds lists or objects, which requests cannot send",
        ),
        (
            {"target": "churned", "frame": lambda f: f.assign(churned=[["no"]] * len(f))},
            "target 'churned' holds lists or objects",
        ),
        (
            {"target": "churned", "frame": lambda f: f.assign(code=b"ab")},
            r"column 'code' holds bytes \(a binary column\), which requests cannot send.* --drop code",
        ),
        ({"target": "churned", "frame": lambda f: f.assign(churned=b"no")}, "target 'churned' holds bytes"),
    ],
)
def test_bad_table_options_are_refused_with_the_reason(kwargs: dict, words: str) -> None:
    frame = kwargs.pop("frame", lambda f: f)(churn_table())
    with pytest.raises(ValueError, match=words):
        tables.from_frame("churn", frame, source="test", **kwargs)


def test_a_header_with_a_byte_order_mark_or_empty_names_is_read_as_pandas_reads_it(tmp_path: Path) -> None:
    """A BOM is not part of the first name (so a repeat of it is found), and empty names
    are not repeats: pandas calls them 'Unnamed: N'. A header without rows is no table."""
    marked = tmp_path / "marked.csv"
    marked.write_bytes("\ufeffplan,spend,plan\nbasic,1,basic\n".encode())
    with pytest.raises(ValueError, match="'marked.csv' has 2 columns named 'plan'"):
        tables.read_file(marked)
    blanks = tmp_path / "blanks.csv"
    blanks.write_text("plan,spend,,\nbasic,1,,\n")
    assert list(tables.read_file(blanks).columns) == ["plan", "spend", "Unnamed: 2", "Unnamed: 3"]
    empty = tmp_path / "empty.csv"
    empty.write_text("plan,spend,churned\n")
    with pytest.raises(ValueError, match="the table has no rows"):
        tables.from_frame("churn", tables.read_file(empty), "churned", "test")


def test_a_served_models_table_may_have_a_column_without_values() -> None:
    """The inference log's table holds a served model's features: one that clients never
    sent cannot be left out without changing the schema, so it is taken, as a gap."""
    table = tables.from_frame("churn", churn_table().assign(region=None), "churned", "test", require_values=False)
    assert "region" in table.categorical and set(table.frame["region"]) == {tables.MISSING_CATEGORY}


def test_a_table_of_one_class_is_refused_naming_its_target() -> None:
    table = tables.from_frame("churn", churn_table().assign(churned=""), "churned", "test")
    with pytest.raises(ValueError, match=r"target 'churned' holds one class \(''\); a classifier needs two"):
        tables.refuse_one_class(table)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_file_that_names_a_column_twice_is_refused_naming_it(tmp_path: Path, suffix: str) -> None:
    """pandas would read a CSV's second 'plan' as 'plan.1', and pyarrow's error for a
    Parquet file runs over many lines; both are one error naming the column."""
    frame = churn_table()
    path = tmp_path / f"twice{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
        lines = path.read_text().splitlines()
        path.write_text("\n".join(line + "," + line.split(",")[1] for line in lines) + "\n")
    else:
        arrays = [pa.array(frame[c]) for c in frame.columns]
        pq.write_table(pa.Table.from_arrays([*arrays, arrays[1]], names=[*frame.columns, frame.columns[1]]), path)
    with pytest.raises(ValueError, match=f"'twice{suffix}' has 2 columns named '{frame.columns[1]}'; rename or remove"):
        tables.read_file(path)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_training_from_a_file_registers_a_categorical_schema_that_serves(
    tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = churn_table()
    path = tmp_path / f"churn{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    version = f"unit{suffix[1:]}"
    args = [
        "--data",
        str(path),
        "--target",
        "churned",
        "--name",
        "churn",
        "--version",
        version,
        "--drop",
        "customer_id",
    ]
    assert main([*args, "--algorithm", "gradient_boosting"]) == 0
    assert f"saved churn:{version}" in capsys.readouterr().out
    stored = bentoml.models.get(f"churn:{version}")
    schema = InputSchema.from_dict(stored.info.metadata[SCHEMA_METADATA_KEY])
    assert schema.frame_input and schema.names == ["plan", "months", "region", "spend"]
    plan = schema.features[0]
    assert plan.kind == CATEGORICAL and plan.categories == ("basic", "plus", "pro") and plan.missing == ""
    assert stored.info.labels["source"] == f"file:churn{suffix}"
    assert stored.info.metadata["metrics"]["holdout_accuracy"] > 0.8
    model = load(f"churn:{version}")
    records = [
        {"plan": "basic", "months": 3.0, "region": None, "spend": 40.0},
        {"plan": "pro", "months": None, "region": "north", "spend": 80.0},
    ]
    matrix = schema.rows_to_matrix(records, 10)
    expected = model.fitted().predict_proba(
        pd.DataFrame(
            {"plan": ["basic", "pro"], "months": [3.0, np.nan], "region": ["", "north"], "spend": [40.0, 80.0]}
        ).astype({"plan": object, "region": object})
    )
    assert np.array_equal(model.infer(matrix), expected)


def test_categorical_values_are_checked_by_kind_and_category() -> None:
    table = tables.from_frame("churn", churn_table(), "churned", "test", drop=["customer_id"])
    from training.register import table_schema

    schema = table_schema(table, type("Fitted", (), {"classes_": np.array(["no", "yes"])})(), table.frame)
    good = {"plan": "plus", "months": 12, "region": "south", "spend": 10.5}
    with pytest.raises(InvalidInput) as caught:
        schema.rows_to_matrix([{**good, "plan": 3}], 10)
    assert caught.value.detail[0] == {
        "loc": ["instances", 0, "plan"],
        "msg": "must be a string (a category) or null, got number",
        "type": "type",
    }
    with pytest.raises(InvalidInput) as caught:
        schema.rows_to_matrix([{**good, "region": "east"}], 10)
    problem = caught.value.detail[0]
    assert problem["type"] == "category" and problem["loc"] == ["instances", 0, "region"]
    assert "'east' is not a category seen in training (allowed: 'north', 'south')" in problem["msg"]
    accepted = schema.rows_to_matrix([{**good, "region": "east"}], 10, unknown_categories="accept")
    assert schema.unknown_categories(accepted) == [
        "region: 'east' not seen in training; the model's encoder ignores it"
    ]
    assert schema.rows_to_matrix([{**good, "region": None}], 10)[0, 2] == ""


def _fitted_pipeline(frame: pd.DataFrame) -> Pipeline:
    """A pipeline as a notebook would fit it: NaN for missing categories, integer labels."""
    columns = ColumnTransformer(
        [
            ("numbers", SimpleImputer(strategy="median"), ["months", "spend"]),
            (
                "text",
                Pipeline(
                    [
                        ("fill", SimpleImputer(strategy="most_frequent")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                ["plan", "region"],
            ),
        ]
    )
    pipeline = Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=1000))])
    X = frame[["plan", "months", "region", "spend"]]
    return pipeline.fit(X, (frame["churned"] == "yes").astype(int))


@pytest.mark.parametrize("form", ["skops", "pickle"])
def test_import_round_trip(tmp_path: Path, form: str, capsys: pytest.CaptureFixture[str]) -> None:
    frame = churn_table(seed=1)
    pipeline = _fitted_pipeline(frame)
    sample = tmp_path / "sample.csv"
    frame.assign(churned=(frame["churned"] == "yes").astype(int)).head(60).to_csv(sample, index=False)
    if form == "skops":
        path = tmp_path / "model.skops"
        sio.dump(pipeline, path)
        extra: list[str] = []
    else:
        path = tmp_path / "model.joblib"
        joblib.dump(pipeline, path)
        extra = ["--trust-pickle"]
    version = f"imported_{form}"
    args = [
        "import",
        str(path),
        "--sample",
        str(sample),
        "--target",
        "churned",
        "--name",
        "churn",
        "--version",
        version,
    ]
    assert main([*args, *extra]) == 0, capsys.readouterr().err
    stored = bentoml.models.get(f"churn:{version}")
    assert stored.info.labels["source"] == "imported" and stored.info.labels["algorithm"] == "LogisticRegression"
    assert 0.5 < stored.info.metadata["metrics"]["sample_accuracy"] <= 1.0
    model = load(f"churn:{version}")
    assert model.schema.classes == ("0", "1") and model.schema.features[0].missing is None
    records = [{"plan": "plus", "months": None, "region": None, "spend": 61.0}]
    expected = pipeline.predict_proba(
        pd.DataFrame({"plan": ["plus"], "months": [np.nan], "region": [np.nan], "spend": [61.0]}).astype(
            {"plan": object, "region": object}
        )
    )
    assert np.array_equal(model.infer(model.schema.rows_to_matrix(records, 10)), expected)


def test_a_pickle_without_the_flag_is_refused_and_nothing_is_registered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = churn_table(seed=2)
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_fitted_pipeline(frame)))
    sample = tmp_path / "sample.csv"
    frame.head(20).to_csv(sample, index=False)
    assert main(["import", str(path), "--sample", str(sample), "--name", "churn", "--version", "refused"]) == 2
    assert "loading it runs any code it holds" in capsys.readouterr().err
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get("churn:refused")


def test_skops_types_outside_the_servers_list_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model.skops"
    sio.dump(fault_models.FailingClassifier(), path)
    sample = tmp_path / "sample.csv"
    churn_table().head(5).to_csv(sample, index=False)
    assert main(["import", str(path), "--sample", str(sample), "--name", "churn", "--version", "untrusted"]) == 2
    assert "tests.fault_models.FailingClassifier" in capsys.readouterr().err


def test_an_imported_models_categories_come_from_its_encoders_not_its_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = churn_table(seed=3)
    path = tmp_path / "model.skops"
    sio.dump(_fitted_pipeline(frame), path)
    sample = tmp_path / "sample.csv"
    frame[frame["plan"] != "pro"].head(30).to_csv(sample, index=False)  # the sample never shows "pro"
    assert main(["import", str(path), "--sample", str(sample), "--name", "churn", "--version", "encoders"]) == 0
    schema = load("churn:encoders").schema
    assert schema.features[schema.feature_index["plan"]].categories == ("basic", "plus", "pro")
    assert schema.features[schema.feature_index["region"]].categories == ("north", "south")
    good = {"plan": "pro", "months": 5.0, "region": "north", "spend": 12.0}
    assert schema.rows_to_matrix([good], 10)[0, 0] == "pro"


def test_an_imported_models_sample_may_lack_every_value_of_a_column(tmp_path: Path) -> None:
    """A column with no value is refused for training, but a sample only checks an imported
    model: its categories come from the encoders, and the model fills the gaps."""
    frame = churn_table(seed=5)
    path = tmp_path / "model.skops"
    sio.dump(_fitted_pipeline(frame), path)
    sample = tmp_path / "sample.csv"
    frame.head(30).assign(region="").to_csv(sample, index=False)
    assert main(["import", str(path), "--sample", str(sample), "--name", "churn", "--version", "gaps"]) == 0
    schema = load("churn:gaps").schema
    assert schema.features[schema.feature_index["region"]].categories == ("north", "south")


def test_an_imported_encoder_of_number_codes_takes_numbers(tmp_path: Path) -> None:
    frame = churn_table(seed=4).assign(tier=lambda f: (f["spend"] // 25).clip(0, 3).astype(int))
    columns = ColumnTransformer(
        [("codes", OneHotEncoder(handle_unknown="ignore"), ["tier"]), ("numbers", "passthrough", ["spend"])]
    )
    pipeline = Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=1000))])
    pipeline.fit(frame[["tier", "spend"]], frame["churned"])
    path = tmp_path / "model.skops"
    sio.dump(pipeline, path)
    sample = tmp_path / "sample.csv"
    frame.head(40).to_csv(sample, index=False)
    assert main(["import", str(path), "--sample", str(sample), "--name", "tiers", "--version", "v1"]) == 0
    model = load("tiers:v1")
    assert [f.kind for f in model.schema.features] == ["numeric", "numeric"]
    matrix = model.schema.rows_to_matrix([{"tier": 2, "spend": 55.0}], 10)
    expected = pipeline.predict_proba(pd.DataFrame({"tier": [2], "spend": [55.0]}))
    assert np.allclose(model.infer(matrix), expected) and expected.max() < 1.0


def test_numbers_stored_as_parquet_decimals_are_a_numeric_feature(tmp_path: Path) -> None:
    frame = churn_table(seed=4)
    frame["spend"] = [decimal.Decimal(f"{v:.2f}") for v in frame["spend"]]
    path = tmp_path / "churn.parquet"
    frame.to_parquet(path)
    table = tables.from_frame("churn", tables.read_file(path), "churned", "test", drop=["customer_id"])
    assert "spend" in table.numeric and table.frame["spend"].dtype == np.float64
    assert table.frame["spend"].tolist() == [float(v) for v in frame["spend"]]
    priced = tables.from_frame("price", tables.read_file(path), "spend", "test", drop=["customer_id", "churned"])
    assert priced.task == REGRESSION


def test_a_failed_forced_retraining_keeps_the_stored_tag_and_bad_tags_are_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--force replaces a tag only once the new model is ready: a run that fails (here a
    table of one class) leaves the stored one as it was. A name or version the store
    refuses is one error line before any training; a name is stored lowercase."""
    good, one_class = tmp_path / "good.csv", tmp_path / "one_class.csv"
    churn_table(seed=8).to_csv(good, index=False)
    churn_table(seed=8).assign(churned="no").to_csv(one_class, index=False)
    common = ["--target", "churned", "--drop", "customer_id"]
    assert main(["--data", str(good), *common, "--name", "Keepme", "--version", "v1"]) == 0
    assert "saved keepme:v1" in capsys.readouterr().out
    created = bentoml.models.get("keepme:v1").info.creation_time
    assert main(["--data", str(one_class), *common, "--name", "keepme", "--version", "v1", "--force"]) == 2
    _one_error_line(capsys.readouterr().err)
    assert bentoml.models.get("keepme:v1").info.creation_time == created
    before = _stored_tags()
    for name, version in (("my model", "v1"), ("keepme", "2024-01-01T00:00")):
        assert main(["--data", str(good), *common, "--name", name, "--version", version]) == 2
        assert "Invalid Tag" in _one_error_line(capsys.readouterr().err)
    assert _stored_tags() == before


def test_metrics_that_are_not_numbers_are_stored_as_null_and_the_server_leaves_them_out() -> None:
    """A fold of one class has no ROC AUC (scikit-learn answers NaN): stored as null, and a
    tag stored before that, holding NaN, still describes itself in JSON."""
    from model_server.models.registry import LoadedModel
    from training.register import finite_metrics

    assert finite_metrics({"cv_roc_auc_mean": math.nan, "holdout_accuracy": 0.9}) == {
        "cv_roc_auc_mean": None,
        "holdout_accuracy": 0.9,
    }
    schema = InputSchema.from_dict(
        {"task": CLASSIFICATION, "features": [{"name": "x", "dtype": "float64"}], "classes": ["a", "b"]}
    )
    stored = LoadedModel("m:v1", None, schema, metadata={"metrics": {"a": math.nan, "b": None, "c": 0.5, "d": 1}})
    assert stored.metrics == {"c": 0.5, "d": 1.0}


def test_an_import_the_server_could_not_feed_is_one_error_line_and_nothing_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An encoder that learned true/false, or a number-coded column named --categorical,
    would never see the values the server sends it (text): refused, not stored."""
    frame = churn_table(seed=5).assign(
        member=lambda f: f["plan"] == "pro", tier=lambda f: (f["spend"] // 25).clip(0, 3).astype(int)
    )
    before = _stored_tags()
    for column, extra in (("member", []), ("tier", ["--categorical", "tier"])):
        columns = ColumnTransformer(
            [("codes", OneHotEncoder(handle_unknown="ignore"), [column]), ("numbers", "passthrough", ["spend"])]
        )
        pipeline = Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=1000))])
        pipeline.fit(frame[[column, "spend"]], frame["churned"])
        path = tmp_path / f"{column}.skops"
        sio.dump(pipeline, path)
        sample = tmp_path / f"{column}.csv"
        frame.head(40).to_csv(sample, index=False)
        args = ["import", str(path), "--sample", str(sample), "--name", column, "--version", "v1", *extra]
        assert main(args) == 2, column
        line = _one_error_line(capsys.readouterr().err)
        assert f"'{column}'" in line and ("true/false" in line if column == "member" else "learned numbers" in line)
    assert _stored_tags() == before


def test_a_classifier_without_probabilities_is_refused_not_stored_as_a_regressor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sklearn.svm import LinearSVC

    frame = churn_table(seed=9)
    path = tmp_path / "svc.skops"
    sio.dump(LinearSVC().fit(frame[["months", "spend"]].fillna(0), frame["churned"]), path)
    sample = tmp_path / "sample.csv"
    frame[["months", "spend", "churned"]].fillna(0).head(40).to_csv(sample, index=False)
    before = _stored_tags()
    args = ["import", str(path), "--sample", str(sample), "--name", "svc", "--target", "churned"]
    assert main(args) == 2
    assert "LinearSVC classifies without probabilities" in _one_error_line(capsys.readouterr().err)
    assert _stored_tags() == before


def _stored_tags() -> list[str]:
    return sorted(str(m.tag) for m in bentoml.models.list())


def _one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_an_import_whose_target_the_sample_lacks_is_refused_and_nothing_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = churn_table(seed=6)
    path = tmp_path / "model.skops"
    sio.dump(_fitted_pipeline(frame), path)
    sample = tmp_path / "sample.csv"
    frame.head(30).to_csv(sample, index=False)
    before = _stored_tags()
    args = ["import", str(path), "--sample", str(sample), "--name", "churn", "--version", "cardx"]
    assert main([*args, "--target", "cardx"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == (
        "error: the target column 'cardx' is not in the sample "
        "(columns: customer_id, plan, months, region, spend, churned)"
    )
    assert _stored_tags() == before


@pytest.mark.parametrize(
    ("file_name", "content", "extra", "words"),
    [
        pytest.param(
            "model.skops",
            "pipeline",
            [],
            "is not a skops file (BadZipFile: File is not a zip file); it looks like a pickle",
            id="pickle-named-skops",
        ),
        pytest.param(
            "model.joblib",
            {"not": "a model"},
            ["--trust-pickle"],
            "holds a builtins.dict, not a scikit-learn estimator or Pipeline (it has no predict method)",
            id="pickled-non-estimator",
        ),
        pytest.param("model.pkl", b"not a pickle", ["--trust-pickle"], "cannot be unpickled", id="not-a-pickle"),
    ],
)
def test_a_file_that_is_not_a_model_is_one_error_line_and_nothing_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], file_name: str, content: object, extra: list[str], words: str
) -> None:
    frame = churn_table(seed=7)
    path = tmp_path / file_name
    if content == "pipeline":
        path.write_bytes(pickle.dumps(_fitted_pipeline(frame)))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        joblib.dump(content, path)
    sample = tmp_path / "sample.csv"
    frame.head(20).to_csv(sample, index=False)
    before = _stored_tags()
    args = ["import", str(path), "--sample", str(sample), "--name", "churn", "--version", "notamodel"]
    with pytest.warns(UserWarning, match="trusted by --trust-pickle") if extra else nullcontext():
        assert main([*args, "--target", "churned", *extra]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: '{path}' ") and words in line
    assert _stored_tags() == before


def test_training_prints_what_it_inferred_and_warns_about_id_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = churn_table(rows=60).assign(city=[f"c{i % 30:02d}" for i in range(60)])
    path = tmp_path / "churn.csv"
    frame.to_csv(path)  # with pandas' index, read back as `Unnamed: 0`
    args = ["--data", str(path), "--target", "churned", "--name", "churn", "--version", "inferred"]
    assert main(args) == 0
    captured = capsys.readouterr()
    lines = {line.split()[0]: line.split() for line in captured.out.splitlines() if line}
    assert captured.out.startswith("task: classification (inferred); target 'churned': 2 classes: no, yes\n")
    assert lines["column"] == ["column", "kind", "values"]
    assert lines["customer_id"] == ["customer_id", "numeric", "0", "to", "59"]
    assert lines["plan"] == ["plan", "categorical", "3", "categories:", "basic,", "plus,", "pro"]
    region = " ".join(lines["region"])
    assert region.startswith("region categorical 2 categories: north, south (") and region.endswith(" missing)")
    assert " ".join(lines["city"]) == (
        "city categorical 30 categories: c00, c01, c02, c03, c04, c05, c06, c07, ... (22 more)"
    )
    assert captured.err.splitlines() == [
        "warning: columns look like row ids: 'Unnamed: 0' (named like an id), 'customer_id' (named like an id); "
        "an id tells the model nothing about new rows. Leave them out with --drop 'Unnamed: 0,customer_id'"
    ]
    assert main([*args, "--force", "--drop", "Unnamed: 0,customer_id"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "customer_id" not in captured.out
    assert load("churn:inferred").schema.names == ["plan", "months", "region", "spend", "city"]


def test_id_like_columns_are_found_by_name_or_by_a_different_value_in_every_row() -> None:
    rows = 30
    frame = pd.DataFrame(
        {
            "ticket": np.arange(1000, 1000 + rows)[::-1],  # unique integers, any order
            "code": [f"T{i:03d}" for i in range(rows)],  # unique text
            "customerId": np.arange(rows) % 3,  # named like one
            "rownames": np.arange(rows) % 4,
            "income": np.linspace(10, 90, rows),  # unique, but not integers
            "paid": np.arange(rows) % 2,  # ends in "id", not an id word
            "label": ["a", "b"] * (rows // 2),
        }
    )
    table = tables.from_frame("ids", frame, "label", "test")
    assert tables.id_like(table) == {
        "ticket": "a different integer in every row",
        "code": "a different text in every row",
        "customerId": "named like an id",
        "rownames": "named like an id",
    }
    few = tables.from_frame("ids", frame.head(10), "label", "test")
    assert set(tables.id_like(few)) == {"customerId", "rownames"}  # 10 unique values prove nothing


def test_help_lists_the_import_and_refresh_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "  import MODEL_FILE --sample FILE --name NAME" in out and "  refresh NAME:VERSION [--rows FILE]" in out


def test_a_stored_pipeline_takes_nan_in_a_categorical_column_outside_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The NaN-to-marker step is the stored pipeline's first step: the tag loaded with
    bentoml.sklearn answers a frame with NaN as the server answers null; its ONNX export
    still passes the equality check; skops loads it with the importer's trusted types; a
    tag stored before the step (the pipeline without it) answers the server alike."""
    from model_server.missing import MissingCategories
    from model_server.models.registry import LoadedModel
    from training import importer

    path = tmp_path / "churn.csv"
    churn_table(seed=6).to_csv(path, index=False)
    args = ["--data", str(path), "--target", "churned", "--name", "churn", "--version", "nan_outside"]
    assert main([*args, "--drop", "customer_id", "--force"]) == 0, capsys.readouterr().err
    stored = bentoml.models.get("churn:nan_outside")
    assert stored.info.metadata["onnx"]["exported"] is True, stored.info.metadata["onnx"]
    pipeline = bentoml.sklearn.load_model("churn:nan_outside")
    assert isinstance(pipeline.steps[0][1], MissingCategories)
    frame = pd.DataFrame(
        {
            "plan": ["basic", np.nan, "pro"],
            "months": [3.0, np.nan, 12.0],
            "region": [np.nan, "north", None],
            "spend": [40.0, 80.0, 55.0],
        }
    )
    outside = pipeline.predict_proba(frame)
    model = load("churn:nan_outside")
    records = [
        {"plan": "basic", "months": 3.0, "region": None, "spend": 40.0},
        {"plan": None, "months": None, "region": "north", "spend": 80.0},
        {"plan": "pro", "months": 12.0, "region": "", "spend": 55.0},
    ]
    matrix = model.schema.rows_to_matrix(records, 10)
    assert np.array_equal(model.infer(matrix), outside)
    assert model.onnx is not None
    assert np.abs(model.onnx.infer(matrix) - outside).max() < 1e-5
    before_the_step = LoadedModel(tag="churn:old", pipeline=pipeline[1:], schema=model.schema)
    assert np.array_equal(before_the_step.infer(matrix), outside)
    sio.dump(pipeline, tmp_path / "churn.skops")
    from_skops = importer.load_estimator(tmp_path / "churn.skops")
    assert np.array_equal(from_skops.predict_proba(frame), outside)
