"""Drift against the training data, without a server: the reference built at registration,
the bins a batch is counted into, PSI, the counts files shared by worker processes, the
window, and the answer for a tag stored without a reference."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split

from model_server.config.routing import Routing
from model_server.config.settings import ServedModel, ServerSettings, Variant
from model_server.core.server import InferenceCall, ModelServer
from model_server.errors import NoDriftReference
from model_server.models import drift_reference as drift
from model_server.models import registry
from model_server.models.drift_reference import EPSILON, Bins, DriftReference, psi
from model_server.models.registry import LoadedModel
from model_server.models.schema import CATEGORICAL, CLASSIFICATION, REGRESSION, Feature, InputSchema
from model_server.monitoring import drift_counts
from model_server.monitoring.drift_counts import DriftCounter
from model_server.monitoring.drift_report import metrics_text, report
from training import datasets, pipelines, register
from training.drift_reference import build, server_matrix

RNG = np.random.default_rng(7)
# Two numeric features (one with missing values) and one categorical with a missing marker.
MIXED = InputSchema(
    task=CLASSIFICATION,
    features=(
        Feature("x", "float64", 0, 100),
        Feature("y", "float64", 0, 1),
        Feature("colour", "string", kind=CATEGORICAL, categories=("blue", "red"), missing=""),
    ),
    classes=("no", "yes"),
)


def mixed_rows(n: int) -> np.ndarray:
    matrix = np.empty((n, 3), dtype=object)
    matrix[:, 0] = np.arange(n, dtype=np.float64)  # 0 .. n-1: deciles at 10 % steps
    matrix[:, 1] = np.where(np.arange(n) % 4 == 0, np.nan, 0.5)  # a quarter missing
    matrix[:, 2] = np.where(np.arange(n) % 2 == 0, "blue", "red")
    return matrix


def mixed_output(n: int) -> np.ndarray:
    yes = (np.arange(n) % 5 == 0).astype(np.float64)
    return np.column_stack([1 - yes, yes])


MIXED_REFERENCE = DriftReference.build(MIXED, mixed_rows(1000), mixed_output(1000))


def shares(reference: DriftReference, index: int) -> list[float]:
    every = [*reference.features, reference.predictions]
    return list(every[index].expected)


def test_reference_has_decile_edges_a_missing_bin_and_training_shares() -> None:
    x, y, colour = MIXED_REFERENCE.features
    assert x.edges == pytest.approx(np.quantile(np.arange(1000.0), drift.DECILES))
    assert x.labels()[0] == "< 99.9" and x.labels()[-2:] == [">= 899.1", "missing"]
    assert shares(MIXED_REFERENCE, 0) == pytest.approx([0.1] * 10 + [0.0])
    assert y.edges == (0.5,)  # nine equal deciles collapse to one edge
    assert shares(MIXED_REFERENCE, 1) == pytest.approx([0.0, 0.75, 0.25])  # < 0.5, >= 0.5, missing
    assert colour.labels() == ["blue", "red", "missing", "other"]
    assert shares(MIXED_REFERENCE, 2) == pytest.approx([0.5, 0.5, 0.0, 0.0])
    assert MIXED_REFERENCE.predictions.labels() == ["no", "yes"]
    assert shares(MIXED_REFERENCE, 3) == pytest.approx([0.8, 0.2])
    for bins in [*MIXED_REFERENCE.features, MIXED_REFERENCE.predictions]:
        assert sum(bins.expected) == pytest.approx(1.0)


def test_reference_round_trips_through_model_metadata() -> None:
    metadata = {drift.REFERENCE_METADATA: MIXED_REFERENCE.to_dict()}
    again = DriftReference.from_metadata(metadata, MIXED)
    assert again is not None
    assert again.features == MIXED_REFERENCE.features and again.predictions == MIXED_REFERENCE.predictions
    assert again.rows == 1000


def test_a_missing_or_mismatched_reference_reads_as_none() -> None:
    assert DriftReference.from_metadata({}, MIXED) is None
    other = InputSchema(task=CLASSIFICATION, features=(Feature("z", "float64"),), classes=("no", "yes"))
    assert DriftReference.from_metadata({drift.REFERENCE_METADATA: MIXED_REFERENCE.to_dict()}, other) is None
    broken = MIXED_REFERENCE.to_dict()
    broken["features"][0]["expected"] = [1.0]
    assert DriftReference.from_metadata({drift.REFERENCE_METADATA: broken}, MIXED) is None


def test_a_batch_is_counted_into_the_bins_the_server_sees() -> None:
    batch = np.array(
        [
            [-5.0, 0.5, "blue"],  # below the first edge
            [99.9, math.nan, "red"],  # on an edge: the bin above it; NaN: missing
            [5000.0, 0.1, "green"],  # beyond the last edge; a category never seen: other
            [450.0, 0.9, ""],  # the missing marker: missing
            [450.0, 0.9, math.nan],  # NaN in a categorical column: missing
        ],
        dtype=object,
    )
    output = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4]])
    counts = MIXED_REFERENCE.count(batch, output)
    offsets = MIXED_REFERENCE.offsets
    x, y, colour, predictions = (counts[offsets[i] : offsets[i + 1]].tolist() for i in range(4))
    assert x == [1, 1, 0, 0, 2, 0, 0, 0, 0, 1, 0]
    assert y == [1, 3, 1]
    assert colour == [1, 1, 2, 1]
    assert predictions == [4, 1]
    assert counts.sum() == 5 * 4


def test_large_batches_are_binned_by_search_into_the_same_bins() -> None:
    """Batch scoring's large batches take a binary search; the bins are the comparison's."""
    rows = drift.SEARCH_FROM_ROWS
    batch = mixed_rows(rows)
    batch[:, 0] = RNG.choice([-5.0, 0.0, 99.9, 100.0, 450.0, 5000.0, math.nan, math.inf, -math.inf], rows)
    batch[:, 1] = RNG.choice([0.1, 0.5, 0.9, math.nan], rows)
    output = mixed_output(rows)
    searched = MIXED_REFERENCE.count(batch, output)
    compared = sum(MIXED_REFERENCE.count(batch[i : i + 1000], output[i : i + 1000]) for i in range(0, rows, 1000))
    assert searched.tolist() == compared.tolist() and searched.sum() == rows * 4


def test_regression_predictions_get_decile_bins() -> None:
    schema = InputSchema(task=REGRESSION, features=(Feature("x", "float64", 0, 1),))
    rows = RNG.normal(size=(500, 1))
    reference = DriftReference.build(schema, rows, rows[:, 0] * 3)
    assert reference.predictions.kind == drift.NUMERIC and len(reference.predictions.edges) == 9
    counts = reference.count(np.array([[0.0], [100.0]]), np.array([-100.0, 100.0]))
    predictions = counts[reference.offsets[1] :].tolist()
    assert predictions[0] == 1 and predictions[9] == 1 and sum(predictions) == 2


def test_psi_matches_the_formula_with_empty_bins_floored() -> None:
    expected = np.array([0.5, 0.5, 0.0])
    assert psi(expected, np.array([50, 50, 0])) == pytest.approx(0.0)
    shifted = psi(expected, np.array([80, 20, 0]))
    assert shifted == pytest.approx((0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5))
    # A bin empty in training but not live: its share is compared with EPSILON.
    new = psi(expected, np.array([45, 45, 10]))
    assert new == pytest.approx(2 * (0.45 - 0.5) * math.log(0.45 / 0.5) + (0.1 - EPSILON) * math.log(0.1 / EPSILON))
    assert psi(expected, np.zeros(3, np.int64)) is None


def test_a_stream_like_the_training_data_is_stable_and_a_shifted_one_is_not() -> None:
    data = datasets.load("breast_cancer")
    pipeline = pipelines.build(data.task, "logistic_regression", 0)
    X_train, _, y_train, _ = train_test_split(data.X, data.y, test_size=0.25, random_state=0, stratify=data.y)
    pipeline.fit(X_train, y_train)
    schema = register.build_schema(data, pipeline, X_train)
    reference = DriftReference.from_metadata({drift.REFERENCE_METADATA: build(schema, pipeline, X_train)}, schema)
    assert reference is not None
    stream = X_train[RNG.integers(0, len(X_train), 3000)]
    index = {name: i for i, name in enumerate(schema.names)}
    same = _psis(reference, stream, pipeline.predict_proba(stream))
    assert max(same.values()) < 0.1, same
    shifted = stream.copy()
    shifted[:, index["mean texture"]] *= 1.5
    moved = _psis(reference, shifted, pipeline.predict_proba(shifted))
    assert moved["mean texture"] > 0.2
    assert max(v for k, v in moved.items() if k not in ("mean texture", "predictions")) < 0.1


def _psis(reference: DriftReference, matrix: np.ndarray, output: np.ndarray) -> dict[str, float]:
    counts = reference.count(matrix, output)
    every = [*reference.features, reference.predictions]
    found = {}
    for i, bins in enumerate(every):
        value = psi(np.asarray(bins.expected), counts[reference.offsets[i] : reference.offsets[i + 1]])
        assert value is not None
        found[bins.name] = value
    return found


def test_server_matrix_turns_a_training_table_into_what_validation_gives() -> None:
    import pandas as pd

    frame = pd.DataFrame({"x": [1.0, None], "y": [0.5, 0.5], "colour": ["red", ""]})
    matrix = server_matrix(MIXED, frame)
    assert matrix.dtype == object and matrix[0, 2] == "red" and matrix[1, 2] == ""
    assert math.isnan(matrix[1, 0])
    counts = MIXED_REFERENCE.count(matrix, np.array([[1.0, 0.0], [1.0, 0.0]]))
    colour = counts[MIXED_REFERENCE.offsets[2] : MIXED_REFERENCE.offsets[3]].tolist()
    assert colour == [0, 1, 1, 0]


def _model(tag: str, reference: DriftReference | None = MIXED_REFERENCE) -> LoadedModel:
    return LoadedModel(tag=tag, pipeline=None, schema=MIXED, drift=reference)


def _count_in_child(directory: str, rows: int) -> None:
    counter = DriftCounter(True, Path(directory))
    counter.start_window(3, {"m:v1": MIXED_REFERENCE})
    counter.add("m:v1", MIXED_REFERENCE, mixed_rows(rows), mixed_output(rows))


def test_counts_of_every_worker_process_are_summed(tmp_path: Path) -> None:
    here = DriftCounter(True, tmp_path)
    model = _model("m:v1")
    here.start_window(3, {"m:v1": model.drift})
    here.add(model.tag, MIXED_REFERENCE, mixed_rows(10), mixed_output(10))
    child = multiprocessing.get_context("fork").Process(target=_count_in_child, args=(str(tmp_path), 30))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert len(list(tmp_path.glob("m+v1.r3.p*.counts"))) == 2  # one file per worker process
    window = here.window(model.tag, model.drift)
    assert window.rows == 40
    offsets = model.drift.offsets if model.drift else []
    assert window.counts[offsets[2] : offsets[3]].tolist() == [20, 20, 0, 0]
    assert window.since is not None


def test_a_new_routing_revision_starts_a_new_window(tmp_path: Path) -> None:
    counter = DriftCounter(True, tmp_path)
    model = _model("m:v1")
    counter.start_window(0, {"m:v1": model.drift})
    counter.add(model.tag, MIXED_REFERENCE, mixed_rows(10), mixed_output(10))
    assert counter.window(model.tag, model.drift).rows == 10
    counter.start_window(1, {"m:v1": model.drift})
    assert counter.window(model.tag, model.drift).rows == 0
    assert [p.name.split(".")[1] for p in tmp_path.glob("*.counts")] == ["r1"]  # the old window's file is gone
    counter.add(model.tag, MIXED_REFERENCE, mixed_rows(5), mixed_output(5))
    assert counter.window(model.tag, model.drift).rows == 5


def test_other_variants_under_the_same_revision_start_a_new_window(tmp_path: Path) -> None:
    """A routing file edited by hand without raising its revision: the windows differ."""
    served = {"m": ServedModel(variants=[Variant(tag="m:v1")])}
    edited = {"m": ServedModel(variants=[Variant(tag="m:v1", weight=2)])}
    first, second = Routing(revision=4, models=served), Routing(revision=4, models=edited)
    assert first.window() != second.window() and first.window() == Routing(revision=4, models=served).window()
    counter = DriftCounter(True, tmp_path)
    model = _model("m:v1")
    counter.start_window(4, {"m:v1": model.drift}, first.window())
    counter.add(model.tag, MIXED_REFERENCE, mixed_rows(10), mixed_output(10))
    counter.start_window(4, {"m:v1": model.drift}, second.window())
    assert counter.window(model.tag, model.drift).rows == 0 and counter.revision == 4
    counter.start_window(4, {"m:v1": model.drift}, second.window())  # the same routing again keeps counting
    counter.add(model.tag, MIXED_REFERENCE, mixed_rows(3), mixed_output(3))
    assert counter.window(model.tag, model.drift).rows == 3


def _rows_in_files(directory: Path, tag: str = "m+v1") -> int:
    """The rows counted in the files, as another worker reads them (its own waiting rows aside)."""
    return sum(int(np.fromfile(path, dtype=np.int64)[1]) for path in directory.glob(f"{tag}.r*.counts"))


def test_small_batches_on_the_event_loop_are_counted_together_within_count_after(tmp_path: Path) -> None:
    counter = DriftCounter(True, tmp_path)
    model = _model("m:v1")
    counter.start_window(0, {"m:v1": model.drift})
    single = DriftCounter(True, tmp_path / "single")  # the same rows, counted one batch at a time
    single.start_window(0, {"m:v1": model.drift})
    rows, output = mixed_rows(40), mixed_output(40)
    for i in range(40):
        single.add(model.tag, MIXED_REFERENCE, rows[i : i + 1], output[i : i + 1])  # no loop: at once
    assert _rows_in_files(tmp_path / "single") == 40

    async def serve() -> tuple[int, int]:
        for i in range(40):
            counter.add(model.tag, MIXED_REFERENCE, rows[i : i + 1], output[i : i + 1])
        waiting = _rows_in_files(tmp_path)
        await asyncio.sleep(drift_counts.COUNT_AFTER * 3)
        return waiting, _rows_in_files(tmp_path)

    waiting, later = asyncio.run(serve())
    assert (waiting, later) == (0, 40)  # another worker sees them within COUNT_AFTER
    together = counter.window(model.tag, model.drift)
    assert together.counts.tolist() == single.window(model.tag, model.drift).counts.tolist()


def test_a_worker_counts_its_waiting_rows_before_it_answers_and_before_a_new_window(tmp_path: Path) -> None:
    counter = DriftCounter(True, tmp_path)
    model = _model("m:v1")
    counter.start_window(0, {"m:v1": model.drift})

    async def serve() -> list[int]:
        counter.add(model.tag, MIXED_REFERENCE, mixed_rows(3), mixed_output(3))
        seen = [_rows_in_files(tmp_path), counter.window(model.tag, model.drift).rows]
        counter.add(model.tag, MIXED_REFERENCE, mixed_rows(4), mixed_output(4))
        counter.start_window(1, {"m:v1": model.drift})  # the 4 rows were answered in window 0
        seen.append(counter.window(model.tag, model.drift).rows)
        # As many rows as COUNT_ROWS are counted at once, without waiting.
        counter.add(
            model.tag, MIXED_REFERENCE, mixed_rows(drift_counts.COUNT_ROWS), mixed_output(drift_counts.COUNT_ROWS)
        )
        seen.append(_rows_in_files(tmp_path))
        return seen

    assert asyncio.run(serve()) == [0, 3, 0, drift_counts.COUNT_ROWS]


def test_a_count_that_fails_later_is_logged_and_fails_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    counter = DriftCounter(True, tmp_path)
    model = _model("m:v1")
    counter.start_window(0, {"m:v1": model.drift})

    async def serve() -> int:
        counter.add(model.tag, MIXED_REFERENCE, mixed_rows(2), mixed_output(2))
        counter.add(model.tag, MIXED_REFERENCE, mixed_rows(2)[:, :2], mixed_output(2))  # a column short
        return counter.window(model.tag, model.drift).rows

    assert asyncio.run(serve()) == 0  # the group failed as a whole, and the read answered
    assert "counting m:v1's batches for drift failed" in caplog.text
    counter.add(model.tag, MIXED_REFERENCE, mixed_rows(2), mixed_output(2))  # later batches count
    assert counter.window(model.tag, model.drift).rows == 2


def test_counting_off_or_no_reference_answers_409_saying_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(NoDriftReference, match="drift_counting: false") as off:
        DriftCounter(False, tmp_path).window("m:v1", MIXED_REFERENCE)
    assert off.value.status == 409
    with pytest.raises(NoDriftReference, match=r"python -m training refresh m:v0"):
        DriftCounter(True, tmp_path).window("m:v0", None)


def test_a_tag_stored_without_reference_still_serves_and_its_drift_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag registered before references existed: predictions as before, drift a 409,
    and a name with one tag of each kind answers for the tag that has one."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    data = datasets.load("iris")
    fitted = LogisticRegression(max_iter=500).fit(data.X, data.y)
    schema = register.build_schema(data, fitted, data.X)
    labels = {"task": CLASSIFICATION}
    register.save("driftless:v1", fitted, labels, schema, {}, held_out=None)
    register.save("driftless:v2", fitted, labels, schema, {}, held_out=None, training_rows=data.X)
    try:
        old, new = registry.load("driftless:v1"), registry.load("driftless:v2")
        assert old.drift is None and new.drift is not None
        settings = ServerSettings.model_validate(
            {"models": {"driftless": {"variants": [{"tag": "driftless:v1", "weight": 1}]}}}
        )
        server = ModelServer(settings, {"driftless:v1": old, "driftless:v2": new})
        prediction = asyncio.run(server.infer(InferenceCall("driftless", instances=[[5.1, 3.5, 1.4, 0.2]])))
        assert prediction.output.shape == (1, 3)
        with pytest.raises(NoDriftReference, match="'driftless:v1' has no drift reference"):
            report("driftless", server.drift_view("driftless"))
        both = Routing.model_validate(
            {
                "revision": 1,
                "models": {
                    "driftless": {
                        "variants": [{"tag": "driftless:v1", "weight": 1}, {"tag": "driftless:v2", "weight": 1}]
                    }
                },
            }
        )
        asyncio.run(_apply_and_predict(server, both))
        answer = report("driftless", server.drift_view("driftless"))
        by_tag = {t["tag"]: t for t in answer["tags"]}
        assert by_tag["driftless:v1"]["reference"] is False and "refresh" in by_tag["driftless:v1"]["message"]
        assert by_tag["driftless:v2"]["window"]["rows"] == 2
        assert answer["routing_revision"] == 1
        server.close()
    finally:
        for tag in ("driftless:v1", "driftless:v2"):
            import bentoml

            bentoml.models.delete(tag)


async def _apply_and_predict(server: ModelServer, routing: Routing) -> None:
    await server.apply(routing)
    await server.infer(InferenceCall("driftless", instances=[[5.1, 3.5, 1.4, 0.2], [6.0, 3.0, 5.0, 2.0]], version="v2"))


def test_metrics_text_exports_psi_gauges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    X = RNG.normal(size=(400, 2))
    y = X[:, 0] + X[:, 1]
    schema = InputSchema(task=REGRESSION, features=(Feature("a", "float64", -5, 5), Feature("b", "float64", -5, 5)))
    fitted = LinearRegression().fit(X, y)
    reference = DriftReference.build(schema, X, fitted.predict(X))
    model = LoadedModel(tag="lin:v1", pipeline=fitted, schema=schema, drift=reference)
    settings = ServerSettings.model_validate({"models": {"lin": {"variants": [{"tag": "lin:v1", "weight": 1}]}}})
    server = ModelServer(settings, {"lin:v1": model})
    assert 'model_server_drift_rows{model="lin",tag="lin:v1"} 0.0' in metrics_text(server.drift_view())
    shifted = [[a + 3, b] for a, b in X[:300].tolist()]
    asyncio.run(server.infer(InferenceCall("lin", instances=shifted)))
    text = metrics_text(server.drift_view())
    values = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("model_server_feature_psi{")
    }
    assert values['feature="a",model="lin",tag="lin:v1"'] > 0.2
    assert values['feature="b",model="lin",tag="lin:v1"'] < 0.1
    assert 'model_server_drift_rows{model="lin",tag="lin:v1"} 300.0' in text
    assert "model_server_prediction_psi{" in text
    server.close()


def test_bins_reject_malformed_shares() -> None:
    with pytest.raises(ValueError, match="malformed"):
        Bins.from_dict({"name": "x", "kind": "numeric", "edges": [1.0], "expected": [1.0]})
