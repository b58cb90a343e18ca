"""Training CLI and registration into the (temporary) BentoML model store."""

from __future__ import annotations

import bentoml
import numpy as np
import pytest
from sklearn import datasets

from model_server.constants import SCHEMA_METADATA_KEY
from model_server.models.registry import MissingModel, load
from training.__main__ import main
from training.register import TagExists, train_and_register


def test_registers_tag_with_labels_metrics_and_schema() -> None:
    result = train_and_register("iris", "unit1", "logistic_regression", seed=7)
    stored = bentoml.models.get("iris:unit1")
    assert result.tag == "iris:unit1"
    assert stored.info.labels == {"task": "classification", "dataset": "iris", "algorithm": "logistic_regression"}
    meta = stored.info.metadata
    assert meta["training_rows"] == 112 and meta["test_rows"] == 38 and meta["seed"] == 7
    assert len(meta["data_sha256"]) == 64
    assert 0.8 < meta["metrics"]["holdout_accuracy"] <= 1.0
    assert {"holdout_f1_macro", "holdout_roc_auc", "cv_accuracy_mean", "cv_roc_auc_std"} <= set(meta["metrics"])
    schema = meta[SCHEMA_METADATA_KEY]
    assert [f["name"] for f in schema["features"]][:2] == ["sepal length (cm)", "sepal width (cm)"]
    assert schema["classes"] == ["setosa", "versicolor", "virginica"]
    assert schema["features"][0]["min"] >= 4.0 and schema["features"][0]["max"] <= 8.0
    # One real training row per class, for people to start from (the web page's examples).
    iris = datasets.load_iris()
    rows = {tuple(row): iris.target_names[target] for row, target in zip(iris.data.tolist(), iris.target, strict=True)}
    examples = meta["examples"]
    assert [e["target"] for e in examples] == ["setosa", "versicolor", "virginica"]
    for example in examples:
        row = tuple(float(example["values"][f["name"]]) for f in schema["features"])
        assert rows[row] == example["target"]


def test_a_regressors_examples_are_training_rows_from_low_to_high_targets() -> None:
    stored = bentoml.models.get(train_and_register("diabetes", "unit3", "ridge", seed=3).tag)
    examples = stored.info.metadata["examples"]
    data = datasets.load_diabetes()
    targets = {tuple(row): float(t) for row, t in zip(data.data.tolist(), data.target, strict=True)}
    names = [str(n) for n in data.feature_names]
    assert len(examples) == 3
    assert [targets[tuple(e["values"][n] for n in names)] for e in examples] == [e["target"] for e in examples]
    assert examples[0]["target"] < examples[1]["target"] < examples[2]["target"]


def test_existing_tag_needs_force_and_same_seed_gives_same_metrics() -> None:
    first = train_and_register("diabetes", "unit2", "ridge", seed=3)
    with pytest.raises(TagExists, match="'diabetes:unit2' is already in the store; pass --force"):
        train_and_register("diabetes", "unit2", "ridge", seed=3)
    again = train_and_register("diabetes", "unit2", "ridge", seed=3, force=True)
    assert again.metrics == first.metrics
    assert {"holdout_mae", "holdout_rmse", "holdout_r2", "cv_r2_mean"} <= set(first.metrics)


def test_a_forced_save_that_fails_leaves_the_stored_tag_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """--force replaces a tag only at save; a save that fails there (a full disk) puts the
    old model back instead of leaving the tag missing."""
    train_and_register("diabetes", "unit5", "ridge", seed=3)
    before = bentoml.models.get("diabetes:unit5")

    def failing_save_model(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(bentoml.sklearn, "save_model", failing_save_model)
    with pytest.raises(OSError, match="disk full"):
        train_and_register("diabetes", "unit5", "ridge", seed=4, force=True)
    monkeypatch.undo()
    restored = bentoml.models.get("diabetes:unit5")
    assert restored.info.creation_time == before.info.creation_time
    assert restored.info.metadata == before.info.metadata and restored.info.metadata["seed"] == 3
    assert load("diabetes:unit5").schema.task == "regression"  # and it loads


def test_two_algorithms_really_differ() -> None:
    train_and_register("breast_cancer", "unit3", "logistic_regression", seed=1)
    train_and_register("breast_cancer", "unit4", "gradient_boosting", seed=1)
    a, b = load("breast_cancer:unit3"), load("breast_cancer:unit4")
    rows = np.random.default_rng(0).normal(size=(20, 30)) * 5 + 10
    assert not np.allclose(a.infer(rows), b.infer(rows))
    assert a.labels["algorithm"] != b.labels["algorithm"]


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        (
            "iris:nope",
            "Model 'iris:nope' is not in the model store; train it with `python -m training iris --version nope`.",
        ),
        ("churn:v9", "Model 'churn:v9' is not in the model store; train or import it (docs/training.md)."),
    ],
    ids=["built-in-set", "own-table-or-import"],
)
def test_loading_a_missing_tag_says_how_to_register_it(tag: str, message: str) -> None:
    """Only a built-in data set's name has a training command that fits; a user's table or
    an imported pipeline gets the generic line, never `python -m training churn`."""
    with pytest.raises(MissingModel) as caught:
        load(tag)
    assert str(caught.value) == message


def test_the_servers_built_in_names_are_the_training_clis() -> None:
    from model_server.constants import BUILT_IN_DATA_SETS
    from training.__main__ import BUILT_IN

    assert list(BUILT_IN_DATA_SETS) == BUILT_IN


def test_cli_refuses_existing_tag_and_wrong_algorithm(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["iris", "--version", "unit5"]) == 0
    assert "saved iris:unit5" in capsys.readouterr().out
    assert main(["iris", "--version", "unit5"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["diabetes", "--version", "unit6", "--algorithm", "logistic_regression"]) == 2
    assert "does not fit a regression task" in capsys.readouterr().err


def test_a_tag_is_stored_as_the_server_can_name_it_or_refused_before_training() -> None:
    from training.register import store_tag

    assert store_tag("Churn", "V1") == "churn:v1"  # the store keeps tags in lowercase
    for name, version in (("churn", "latest"), ("a..b", "v1")):
        with pytest.raises(ValueError, match="tag|version"):
            store_tag(name, version)
    train_and_register("iris", "unit9", "logistic_regression", seed=7)
    with pytest.raises(TagExists):  # the name as typed finds the tag stored in lowercase
        train_and_register("Iris", "unit9", "logistic_regression", seed=7)
