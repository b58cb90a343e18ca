"""ONNX export at registration: kept only when it answers like scikit-learn on held-out
rows, stored in the same BentoML model, and refused with the figures otherwise."""

from __future__ import annotations

from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from model_server.constants import ONNX_METADATA, ONNX_OBJECT, SCHEMA_METADATA_KEY
from model_server.models.schema import CLASSIFICATION, Feature, InputSchema
from training import onnx_export, tables
from training.register import train_and_register


@pytest.mark.parametrize(
    ("name", "algorithm"),
    [
        ("iris", "logistic_regression"),
        ("iris", "gradient_boosting"),
        ("breast_cancer", "gradient_boosting"),
        ("titanic", "logistic_regression"),  # numeric and categorical columns, one-hot encoded
        ("titanic", "gradient_boosting"),
    ],
)
def test_classifiers_export_and_agree_with_scikit_learn(name: str, algorithm: str) -> None:
    version = f"onnx-{algorithm.replace('_', '-')}"
    result = train_and_register(name, version, algorithm, seed=3, force=True)
    assert result.onnx["exported"] is True, result.onnx
    assert result.onnx["labels_equal"] is True
    assert 0 <= result.onnx["max_abs_difference"] <= onnx_export.TOLERANCE
    assert result.onnx["rows_checked"] > 30
    stored = bentoml.models.get(result.tag)
    assert stored.info.metadata[ONNX_METADATA] == result.onnx
    model = stored.custom_objects[ONNX_OBJECT]
    assert isinstance(model, bytes) and len(model) == result.onnx["size_bytes"]
    # The stored export answers like the stored pipeline on rows it was not checked on.
    pipeline = bentoml.sklearn.load_model(stored)
    schema = InputSchema.from_dict(stored.info.metadata[SCHEMA_METADATA_KEY])
    data = tables.titanic().frame if name == "titanic" else _numeric_rows(name, schema)
    rows = onnx_export._frame(data.head(50) if name == "titanic" else data, schema)
    found = onnx_export.run(model, schema, rows)
    expected = pipeline.predict_proba(rows if schema.frame_input else rows.to_numpy())
    assert np.max(np.abs(found - expected)) <= onnx_export.TOLERANCE
    assert np.array_equal(np.argmax(found, axis=1), np.argmax(expected, axis=1))


def test_a_pipeline_that_converts_wrongly_is_refused_with_the_figures() -> None:
    """A scaler in front of HistGradientBoosting converts without error but answers
    differently (skl2onnx); the check catches it and nothing is exported."""
    data = load_breast_cancer()
    pipeline = Pipeline(
        [("scale", StandardScaler()), ("model", HistGradientBoostingClassifier(max_iter=50, random_state=0))]
    ).fit(data.data[:400], data.target[:400])
    schema = InputSchema(
        task=CLASSIFICATION,
        features=tuple(Feature(name=str(n), dtype="float64") for n in data.feature_names),
        classes=("malignant", "benign"),
    )
    exported = onnx_export.export(pipeline, schema, data.data[400:])
    assert exported.model is None
    assert exported.max_abs_difference is not None and exported.max_abs_difference > onnx_export.TOLERANCE
    assert exported.refusal is not None and f"{exported.max_abs_difference:.3g}" in exported.refusal
    assert f"on {len(data.data) - 400} held-out rows" in exported.refusal
    assert exported.metadata()["exported"] is False


def test_a_regressor_beyond_the_tolerance_is_saved_without_export() -> None:
    """float32 arithmetic puts a ridge regression on diabetes (values in the hundreds) just
    beyond 1e-5: the tag is saved and serves with scikit-learn, and says why."""
    result = train_and_register("diabetes", "onnx-ridge", "ridge", seed=3, force=True)
    assert result.onnx["exported"] is False
    assert "tolerance 1e-05" in result.onnx["refusal"]
    assert result.onnx["max_abs_difference"] > onnx_export.TOLERANCE
    assert ONNX_OBJECT not in bentoml.models.get(result.tag).custom_objects
    assert result.onnx_summary().startswith("onnx: not exported: on ")


def _numeric_rows(name: str, schema: InputSchema):  # type: ignore[no-untyped-def]
    import pandas as pd

    from training import datasets

    return pd.DataFrame(datasets.load(name).X, columns=schema.names)


def test_missing_categories_reach_the_export_as_in_training() -> None:
    """A missing category is the empty string, training's marker, whatever the row holds."""
    from model_server.models.onnx_runtime import onnx_inputs

    schema = InputSchema(
        task=CLASSIFICATION,
        features=(
            Feature(name="sex", dtype="string", kind="categorical", categories=("female", "male"), missing=""),
            Feature(name="age", dtype="float64", min=0.0, max=80.0),
        ),
        classes=("died", "survived"),
        frame_input=True,
    )
    rows = np.array([["female", 29.0], [None, np.nan], [float("nan"), 4.0]], dtype=object)
    inputs = onnx_inputs(schema, rows)
    assert inputs["sex"].tolist() == [["female"], [""], [""]]
    assert inputs["age"].dtype == np.float32 and inputs["age"].shape == (3, 1)
    assert np.isnan(inputs["age"][1, 0]) and inputs["age"][2, 0] == 4.0


# Column names skl2onnx renames in its graph (a dot, a space, a dash) or keeps (a letter
# beyond ASCII), and `a_b`, which collides with the renamed `a-b`.
ODD_COLUMNS = ("yrs.since.phd", "monthly income", "a-b", "größe", "a_b")


def odd_names_table(rows: int = 120, seed: int = 0) -> pd.DataFrame:
    """Salaries-like rows whose column names are not identifiers, with a text label."""
    rng = np.random.default_rng(seed)
    years = rng.integers(1, 40, rows).astype(float)
    years[rng.random(rows) < 0.1] = np.nan
    income = rng.normal(5000, 1500, rows).round(2)
    group = rng.choice(["A", "B", None], rows, p=[0.5, 0.4, 0.1])
    height = rng.normal(170, 10, rows).round(1)
    noise = rng.normal(0, 1, rows)
    rank = np.where(np.nan_to_num(years, nan=10) + (group == "A") * 8 + noise * 4 > 20, "Prof", "AsstProf")
    return pd.DataFrame(dict(zip(ODD_COLUMNS, (years, income, group, height, noise), strict=True)) | {"rank": rank})


def test_columns_that_are_not_identifiers_keep_the_export_fed_by_the_stored_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model_server.models.registry import load
    from training.__main__ import main

    path = tmp_path / "salaries.csv"
    odd_names_table().to_csv(path, index=False)
    args = ["--data", str(path), "--target", "rank", "--name", "salaries", "--version", "odd", "--force"]
    assert main(args) == 0
    assert "onnx: exported" in capsys.readouterr().out
    onnx = bentoml.models.get("salaries:odd").info.metadata[ONNX_METADATA]
    assert onnx["exported"] is True and onnx["labels_equal"] is True
    assert onnx["inputs"] == {
        "yrs.since.phd": "yrs_since_phd",
        "monthly income": "monthly_income",
        "a-b": "a_b",
        "größe": "größe",
        "a_b": "a_b1",
    }
    model = load("salaries:odd")
    assert model.onnx is not None and model.schema.names == list(ODD_COLUMNS)
    records = odd_names_table(rows=40, seed=1).drop(columns="rank").to_dict("records")
    matrix = model.schema.rows_to_matrix([{k: (None if v != v else v) for k, v in r.items()} for r in records], 100)
    found, expected = model.onnx.infer(matrix), model.infer(matrix)
    assert np.max(np.abs(found - expected)) <= onnx_export.TOLERANCE
    assert np.array_equal(found.argmax(axis=1), expected.argmax(axis=1))
