"""The ONNX runtime per served variant on a real server: switched on and off through the
admin API, answering like scikit-learn on every door, shown in the description and the
metrics, and refused for a tag without a checked export."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from model_server.local_server import RunningServer
from model_server.models import registry
from tests.test_http_api import metric, sample
from tests.test_titanic import PASSENGERS, passenger_rows

if TYPE_CHECKING:
    from tests.conftest import AdminServerFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "onnx-test-admin-key"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def onnx_server(admin_server_factory: AdminServerFactory) -> Iterator[RunningServer]:
    with admin_server_factory(ADMIN_KEY) as running:
        yield running


def set_routing(server: RunningServer, name: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.put(f"{server.url}/v1/admin/models/{name}", json=body, headers=ADMIN, timeout=60)


def scikit_learn(tag: str, rows: Any) -> dict[str, Any]:
    """What the tag's pipeline itself answers for rows in training order."""
    model = registry.load(tag)
    proba = model.infer(np.asarray(rows, dtype=object if model.schema.has_categorical else np.float64))
    return {"predictions": [model.schema.classes[i] for i in proba.argmax(axis=1)], "probabilities": proba.tolist()}


def runtime_gauge(server: RunningServer, runtime: str) -> float:
    """breast_cancer:v1's model_server_model_runtime summed over the workers, once every
    worker serves (/readyz answers as soon as one does)."""
    deadline = time.monotonic() + 60
    while True:
        workers = httpx.get(f"{server.url}/v1/admin/models", headers=ADMIN, timeout=10).json()["workers"]
        if len(workers) == 2 and all(w["revision"] >= 0 for w in workers) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    return metric(metrics, "model_server_model_runtime", tag="breast_cancer:v1", runtime=runtime)


def runtime_of(server: RunningServer, name: str) -> str:
    [variant] = httpx.get(f"{server.url}/v1/models/{name}", timeout=10).json()["variants"]
    return str(variant["runtime"])


def test_breast_cancer_serves_its_export_by_default_and_scikit_learn_when_asked(onnx_server: RunningServer) -> None:
    _, rows = sample("breast_cancer", slice(0, 40))
    want = scikit_learn("breast_cancer:v1", rows)
    # configuration.yaml names no runtime: a tag with a checked export serves with it.
    assert runtime_of(onnx_server, "breast_cancer") == "onnx"
    answer = httpx.post(f"{onnx_server.url}/v1/models/breast_cancer/predict", json={"instances": rows.tolist()}).json()
    assert answer["predictions"] == want["predictions"]
    difference = np.max(np.abs(np.asarray(answer["probabilities"]) - np.asarray(want["probabilities"])))
    assert 0 < difference <= TOLERANCE  # float32 arithmetic: close, and not the same call

    client = triton_grpc.InferenceServerClient(onnx_server.grpc_target)
    tensor = triton_grpc.InferInput("features", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    result = client.infer("breast_cancer", [tensor])
    assert np.max(np.abs(result.as_numpy("predict_proba") - np.asarray(want["probabilities"]))) <= TOLERANCE

    assert runtime_gauge(onnx_server, "onnx") == 2  # both workers

    changed = set_routing(
        onnx_server, "breast_cancer", {"variants": [{"tag": "breast_cancer:v1", "runtime": "sklearn"}]}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["routing"]["variants"] == [{"tag": "breast_cancer:v1", "weight": 1.0, "runtime": "sklearn"}]
    assert runtime_of(onnx_server, "breast_cancer") == "sklearn"
    again = httpx.post(f"{onnx_server.url}/v1/models/breast_cancer/predict", json={"instances": rows.tolist()}).json()
    assert again["probabilities"] == want["probabilities"]  # scikit-learn: exactly
    metrics = httpx.get(f"{onnx_server.url}/metrics", timeout=10).text
    assert metric(metrics, "model_server_model_runtime", tag="breast_cancer:v1", runtime="onnx") == 0
    assert metric(metrics, "model_server_model_runtime", tag="breast_cancer:v1", runtime="sklearn") == 2

    back = set_routing(onnx_server, "breast_cancer", {"variants": [{"tag": "breast_cancer:v1"}]})
    assert back.status_code == 200
    assert runtime_of(onnx_server, "breast_cancer") == "onnx"


def test_titanic_on_onnx_with_categories_and_missing_values(onnx_server: RunningServer) -> None:
    assert runtime_of(onnx_server, "titanic") == "onnx"
    want = scikit_learn("titanic:v1", passenger_rows(PASSENGERS))
    answer = httpx.post(f"{onnx_server.url}/v1/models/titanic/predict", json={"instances": PASSENGERS}).json()
    assert answer["predictions"] == want["predictions"]
    assert np.max(np.abs(np.asarray(answer["probabilities"]) - np.asarray(want["probabilities"]))) <= TOLERANCE
    changed = set_routing(onnx_server, "titanic", {"variants": [{"tag": "titanic:v1", "runtime": "sklearn"}]})
    assert changed.status_code == 200, changed.text
    exact = httpx.post(f"{onnx_server.url}/v1/models/titanic/predict", json={"instances": PASSENGERS}).json()
    assert exact["probabilities"] == want["probabilities"]
    assert set_routing(onnx_server, "titanic", {"variants": [{"tag": "titanic:v1"}]}).status_code == 200


def test_onnx_for_a_tag_without_a_checked_export_is_refused(onnx_server: RunningServer) -> None:
    """diabetes:v1 (ridge) differs from its export by more than the tolerance: no export."""
    before = httpx.get(f"{onnx_server.url}/v1/admin/models", headers=ADMIN, timeout=10).json()["revision"]
    refused = set_routing(onnx_server, "diabetes", {"variants": [{"tag": "diabetes:v1", "runtime": "onnx"}]})
    assert refused.status_code == 400
    assert refused.json()["detail"][0]["loc"] == ["variants", 0, "runtime"]
    assert "no ONNX export" in refused.json()["error"]
    after = httpx.get(f"{onnx_server.url}/v1/admin/models", headers=ADMIN, timeout=10).json()["revision"]
    assert after == before
    assert runtime_of(onnx_server, "diabetes") == "sklearn"


def test_columns_that_are_not_identifiers_serve_their_export_on_every_door(onnx_server: RunningServer) -> None:
    """Columns skl2onnx renames in its graph (`yrs.since.phd` -> `yrs_since_phd`): the
    server feeds the export by the names registration stored, and answers like the pipeline."""
    import bentoml
    import tritonclient.http as triton_http

    from tests.test_onnx_export import ODD_COLUMNS, odd_names_table
    from training import tables
    from training.register import train_and_register

    table = tables.from_frame("salaries", odd_names_table(), "rank", "test")
    train_and_register("salaries", "served", "logistic_regression", seed=1, force=True, table=table)
    frame = odd_names_table(rows=6, seed=2).drop(columns="rank")
    frame.loc[0, "yrs.since.phd"] = np.nan
    records = [{k: (None if v != v else v) for k, v in r.items()} for r in frame.to_dict("records")]
    model = registry.load("salaries:served")
    assert model.onnx is not None
    want = model.infer(model.schema.rows_to_matrix(records, 10))  # scikit-learn
    labels = [model.schema.classes[i] for i in want.argmax(axis=1)]

    assert set_routing(onnx_server, "salaries", {"variants": [{"tag": "salaries:served"}]}).status_code == 200
    try:
        assert runtime_of(onnx_server, "salaries") == "onnx"
        answer = httpx.post(f"{onnx_server.url}/v1/models/salaries/predict", json={"instances": records}).json()
        assert answer["tag"] == "salaries:served" and answer["predictions"] == labels, answer
        assert np.max(np.abs(np.asarray(answer["probabilities"]) - want)) <= TOLERANCE
        with bentoml.SyncHTTPClient(onnx_server.url) as client:
            named = client.predict(model="salaries", instances=records)
        assert named["predictions"] == labels
        assert np.max(np.abs(np.asarray(named["probabilities"]) - want)) <= TOLERANCE

        for module, client in (
            (triton_http, triton_http.InferenceServerClient(f"127.0.0.1:{onnx_server.port}")),
            (triton_grpc, triton_grpc.InferenceServerClient(onnx_server.grpc_target)),
        ):
            tensors = []
            for column in ODD_COLUMNS:
                if column == "a-b":
                    tensor = module.InferInput(column, [len(frame)], "BYTES")
                    tensor.set_data_from_numpy(np.array([(r[column] or "").encode() for r in records], dtype=object))
                else:
                    tensor = module.InferInput(column, [len(frame), 1], "FP64")
                    tensor.set_data_from_numpy(frame[[column]].to_numpy(np.float64))
                tensors.append(tensor)
            result = client.infer("salaries", tensors)
            assert np.max(np.abs(result.as_numpy("predict_proba") - want)) <= TOLERANCE, module.__name__
    finally:
        httpx.delete(f"{onnx_server.url}/v1/admin/models/salaries", headers=ADMIN, timeout=60)


def test_a_tag_with_an_export_reads_its_pipeline_when_scikit_learn_is_first_needed(
    trained_default_models: list[str],
) -> None:
    """Loaded for its export, a tag leaves its pickled pipeline in the store; a runner with the
    sklearn runtime reads it when the runner is made (at start-up or a routing change), not on
    its first batch, and answers as the pipeline does."""
    loaded = registry.load("breast_cancer:v2")
    assert isinstance(loaded.pipeline, registry.StoredPipeline)
    onnx_runner = loaded.runner("onnx")
    assert isinstance(loaded.pipeline, registry.StoredPipeline)  # the export needs no pipeline
    sklearn_runner = loaded.runner("sklearn")
    assert not isinstance(loaded.pipeline, registry.StoredPipeline)
    _, matrix = sample("breast_cancer", slice(0, 5))
    expected = loaded.pipeline.predict_proba(matrix)
    assert np.array_equal(sklearn_runner(matrix), expected)
    assert np.abs(onnx_runner(matrix) - expected).max() <= 1e-5
