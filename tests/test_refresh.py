"""`python -m training refresh`: a tag stored before registration made ONNX exports and
drift references gets both, with its pipeline, labels and metadata unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import pytest
from sklearn import datasets as sk_datasets

from model_server.constants import ONNX_METADATA, ONNX_OBJECT
from model_server.models.drift_reference import REFERENCE_METADATA, Bins
from training import refresh as refresh_module
from training.__main__ import main
from training.refresh import RefreshError, refresh
from training.register import train_and_register

# Names this module stores; removed at its end, since other tests list the whole store.
NAMES = ("refresh_iris", "flowers", "coded")


@pytest.fixture(scope="module", autouse=True)
def remove_stored_names(store_home: str) -> Iterator[None]:
    yield
    for model in bentoml.models.list():
        if model.tag.name in NAMES:
            bentoml.models.delete(model.tag)


def stored_like_before(tag: str) -> None:
    """Save `tag` again as registration did before exports and drift references."""
    stored = bentoml.models.get(tag)
    pipeline = bentoml.sklearn.load_model(stored)
    metadata = {k: v for k, v in stored.info.metadata.items() if k not in (ONNX_METADATA, REFERENCE_METADATA)}
    labels = dict(stored.info.labels)
    bentoml.models.delete(tag)
    bentoml.sklearn.save_model(tag, pipeline, labels=labels, metadata=metadata)


@pytest.fixture(scope="module")
def old_iris(store_home: str) -> str:
    tag = "refresh_iris:v1"
    train_and_register("iris", "refresh_v1", "gradient_boosting", 42)
    # Trained under the built-in data set's name, then stored under a tag of its own.
    source = bentoml.models.get("iris:refresh_v1")
    bentoml.sklearn.save_model(
        tag,
        bentoml.sklearn.load_model(source),
        labels=dict(source.info.labels),
        metadata=dict(source.info.metadata),
    )
    bentoml.models.delete("iris:refresh_v1")
    stored_like_before(tag)
    return tag


def test_a_built_in_tag_gets_its_export_and_drift_reference_and_keeps_the_rest(old_iris: str) -> None:
    before = bentoml.models.get(old_iris)
    rows = np.asarray(sk_datasets.load_iris().data[:20], dtype=np.float64)
    answers = bentoml.sklearn.load_model(before).predict_proba(rows)
    assert ONNX_METADATA not in before.info.metadata

    assert main(["refresh", old_iris]) == 0

    after = bentoml.models.get(old_iris)
    metadata = after.info.metadata
    assert metadata[ONNX_METADATA]["exported"] is True and metadata[ONNX_METADATA]["max_abs_difference"] <= 1e-5
    assert isinstance(after.custom_objects[ONNX_OBJECT], bytes)
    assert REFERENCE_METADATA in metadata
    assert metadata["first_registered"] == before.info.creation_time.isoformat()
    for key in ("metrics", "seed", "data_sha256", "command", "input_schema"):
        assert metadata[key] == before.info.metadata[key]
    assert dict(after.info.labels) == dict(before.info.labels)
    assert np.array_equal(bentoml.sklearn.load_model(after).predict_proba(rows), answers)
    assert refresh(old_iris) is None  # nothing left to add


def test_a_tag_of_the_users_file_needs_rows_and_then_gets_both(store_home: str, tmp_path: Path) -> None:
    frame = sk_datasets.load_iris(as_frame=True).frame.rename(
        columns=lambda c: c.replace(" (cm)", "").replace(" ", "_")
    )
    frame["target"] = frame["target"].map({0: "setosa", 1: "versicolor", 2: "virginica"})
    data = tmp_path / "flowers.csv"
    frame.to_csv(data, index=False)
    assert main(["--data", str(data), "--target", "target", "--name", "flowers", "--version", "v1"]) == 0
    stored_like_before("flowers:v1")

    with pytest.raises(RefreshError, match="--rows"):
        refresh("flowers:v1")
    assert main(["refresh", "flowers:v1"]) == 2  # the same refusal on the command line

    held_out = tmp_path / "held_out.csv"
    frame.drop(columns=["target"]).iloc[::3].to_csv(held_out, index=False)
    refreshed = refresh("flowers:v1", held_out)
    assert refreshed is not None and refreshed.rows_from == "held_out.csv"
    assert refreshed.onnx["exported"] is True and refreshed.onnx["rows_checked"] == 50
    assert REFERENCE_METADATA in bentoml.models.get("flowers:v1").info.metadata


def test_a_failed_save_puts_the_tag_back_as_it_was(old_iris: str, monkeypatch: pytest.MonkeyPatch) -> None:
    before = bentoml.models.get(old_iris)

    def failing_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(refresh_module, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        refresh(old_iris, force=True)
    restored = bentoml.models.get(old_iris)
    assert restored.info.metadata == before.info.metadata
    assert restored.info.creation_time == before.info.creation_time


def test_rows_of_a_table_with_coded_categories_and_gaps_are_prepared_as_in_training(
    store_home: str, tmp_path: Path
) -> None:
    """A category coded as numbers with gaps reads as floats from CSV (1.0, NaN); refresh
    must see the categories training saw ("1", the missing marker), not "1.0"."""
    rng = np.random.default_rng(3)
    rows = 240
    plan = rng.integers(1, 4, rows).astype(float)
    plan[::7] = np.nan
    spend = rng.normal(50, 10, rows)
    table = pd.DataFrame(
        {
            "plan": plan,
            "region": rng.choice(["north", "south", None], rows),
            "spend": spend,
            "churned": np.where((plan == 3) | (spend > 60), "yes", "no"),
        }
    )
    data = tmp_path / "coded.csv"
    table.to_csv(data, index=False)
    command = ["--data", str(data), "--target", "churned", "--name", "coded", "--categorical", "plan,region"]
    assert main([*command, "--algorithm", "logistic_regression"]) == 0
    stored_like_before("coded:v1")

    refreshed = refresh("coded:v1", data)
    assert refreshed is not None and refreshed.onnx["exported"] is True
    reference = bentoml.models.get("coded:v1").info.metadata[REFERENCE_METADATA]
    plan_bins = Bins.from_dict(next(f for f in reference["features"] if f["name"] == "plan"))
    shares = dict(zip(plan_bins.labels(), plan_bins.expected, strict=True))
    assert set(shares) >= {"1", "2", "3"} and shares["1"] > 0.2  # not "1.0", and not all "other"
    assert all(share == 0 for label, share in shares.items() if label not in ("1", "2", "3", "missing"))
