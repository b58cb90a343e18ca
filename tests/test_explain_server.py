"""Explanations on a real server, on every transport that offers them: /v1 JSON, BentoML's
/predict (its own client), OIP REST and OIP gRPC (tritonclient). On each, base value plus
contributions equals the model's output within 1e-6, for linear and gradient-boosting
models, numeric and categorical; the answer equals the in-process explanation; and bad
explanation requests are 400s naming the field."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bentoml
import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import yaml
from sklearn import datasets
from tritonclient.utils import InferenceServerException

from model_server.local_server import RunningServer, start_server
from model_server.models import explain, registry
from model_server.models.schema import InputSchema

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-6
LIMIT = 100  # max_explained_rows, by default
# Every algorithm on every kind of data: v1 and v2 of each name differ (training/recipes.py).
TAGS = {
    "iris:v1": "linear",  # logistic regression, 3 classes
    "iris:v2": "tree_shap",  # gradient boosting, 3 classes
    "breast_cancer:v1": "linear",  # logistic regression, binary
    "breast_cancer:v2": "tree_shap",
    "diabetes:v1": "linear",  # ridge
    "diabetes:v2": "tree_shap",  # gradient boosting regressor
    "titanic:v1": "tree_shap",  # categorical features, one-hot, gradient boosting
    "titanic:v2": "linear",  # categorical features, one-hot, logistic regression
}
PASSENGERS = [
    {"pclass": "1st", "sex": "female", "age": 29.0, "sibsp": 0, "parch": 0},
    {"pclass": "3rd", "sex": "male", "age": None, "sibsp": 1, "parch": 2},
    {"pclass": "2nd", "sex": None, "age": 4.0, "sibsp": 1, "parch": 1},
]


@pytest.fixture(scope="module")
def explaining_server(trained_default_models: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real server that serves both tags of every built-in model (each one pinnable)."""
    from training.recipes import DEFAULT_RECIPES, DEFAULT_SEED
    from training.register import tag_exists, train_and_register

    for tag in TAGS:
        if not tag_exists(tag):
            name, version = tag.split(":")
            train_and_register(name, version, DEFAULT_RECIPES[tag], DEFAULT_SEED)
    config = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    service = config["services"]["TabularModelServer"]
    service["workers"] = 1
    names = sorted({tag.split(":")[0] for tag in TAGS})
    service["model_server"]["models"] = {
        name: {"variants": [{"tag": t, "weight": 1} for t in TAGS if t.startswith(f"{name}:")]} for name in names
    }
    path = tmp_path_factory.mktemp("explain") / "configuration.yaml"
    path.write_text(yaml.safe_dump(config))
    running = start_server(path)
    try:
        yield running
    finally:
        running.stop()


def rows_of(tag: str, count: int = 3) -> list[Any]:
    """Instances for a tag: records of passengers, or rows of the built-in data (one null)."""
    name = tag.split(":")[0]
    if name == "titanic":
        return (PASSENGERS * count)[:count]
    data = getattr(datasets, f"load_{name}")().data[5 : 5 + count].tolist()
    data[0][1] = None
    return data


def matrix_of(tag: str, instances: list[Any]) -> np.ndarray:
    schema = registry.stored_schema(tag)
    return schema.rows_to_matrix(instances, 1000, "accept")


@functools.cache
def explainer(tag: str) -> explain.Explainer:
    return explain.explainer_for(registry.load(tag))


def in_process(tag: str, instances: list[Any]) -> explain.Explanation:
    return explainer(tag).explain(matrix_of(tag, instances))


def as_arrays(body: dict[str, Any], schema: InputSchema) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base (k,), outputs (rows, k), contributions (rows, k, features)) of a JSON explanation."""
    names = schema.names
    if "classes" in body:
        classes = body["classes"]
        base = np.array([body["base_value"][c] for c in classes])
        outputs = np.array([[row[c] for c in classes] for row in body["outputs"]])
        contributions = np.array([[[row[c][f] for f in names] for c in classes] for row in body["contributions"]])
        return base, outputs, contributions
    base = np.array([body["base_value"]])
    outputs = np.array(body["outputs"])[:, None]
    contributions = np.array([[[row[f] for f in names]] for row in body["contributions"]])
    return base, outputs, contributions


def check(tag: str, instances: list[Any], base: np.ndarray, outputs: np.ndarray, contributions: np.ndarray) -> None:
    """Adds up within 1e-6, and equals what the stored pipeline explains in process."""
    assert np.abs(base[None, :] + contributions.sum(axis=2) - outputs).max() < TOLERANCE
    want = in_process(tag, instances)
    assert np.abs(outputs - want.outputs).max() < 1e-9
    assert np.abs(contributions - want.contributions).max() < 1e-9
    assert np.abs(base - want.base_value).max() < 1e-9


def check_body(tag: str, instances: list[Any], answer: dict[str, Any]) -> None:
    schema = registry.stored_schema(tag)
    body = answer["explanation"]
    assert answer["tag"] == tag and body["method"] == TAGS[tag]
    base, outputs, contributions = as_arrays(body, schema)
    check(tag, instances, base, outputs, contributions)
    if not schema.is_classifier:
        assert body["space"] == "value" and np.allclose(answer["predictions"], outputs[:, 0], atol=TOLERANCE)
        return
    probabilities = np.array(answer["probabilities"])
    if len(schema.classes) == 2:
        assert body["space"] == "log_odds" and body["class"] == schema.classes[1]
        assert np.allclose(1 / (1 + np.exp(-outputs[:, 0])), probabilities[:, 1], atol=1e-9)
    else:
        assert body["space"] == "logits" and body["classes"] == list(schema.classes)
        softmax = np.exp(outputs) / np.exp(outputs).sum(axis=1, keepdims=True)
        assert np.allclose(softmax, probabilities, atol=1e-9)


@pytest.mark.parametrize("tag", list(TAGS))
def test_v1_explanations_add_up_and_equal_in_process(explaining_server: RunningServer, tag: str) -> None:
    name, version = tag.split(":")
    instances = rows_of(tag)
    url = f"{explaining_server.url}/v1/models/{name}/versions/{version}/predict"
    answer = httpx.post(url, json={"instances": instances, "explain": True}, timeout=60).json()
    check_body(tag, instances, answer)
    plain = httpx.post(url, json={"instances": instances}, timeout=60).json()
    assert "explanation" not in plain and plain["predictions"] == answer["predictions"]
    if "probabilities" in plain:  # the plain answer may come from the ONNX export: equal within 1e-6
        assert np.allclose(plain["probabilities"], answer["probabilities"], atol=TOLERANCE)


def test_v1_explains_records_on_the_split_route(explaining_server: RunningServer) -> None:
    instances = [dict(zip(registry.stored_schema("iris:v1").names, row, strict=True)) for row in rows_of("iris:v1")]
    body = {"instances": instances, "explain": True, "version": "v2"}
    answer = httpx.post(f"{explaining_server.url}/v1/models/iris/predict", json=body, timeout=60).json()
    check_body("iris:v2", rows_of("iris:v2"), answer)


@pytest.mark.parametrize("tag", ["iris:v2", "titanic:v2", "diabetes:v1"])
def test_bentoml_client_explanations_add_up(explaining_server: RunningServer, tag: str) -> None:
    name, version = tag.split(":")
    instances = rows_of(tag)
    with bentoml.SyncHTTPClient(explaining_server.url) as client:
        assert "explain" in client.endpoints["predict"].input["properties"]
        answer = client.predict(model=name, instances=instances, version=version, explain=True)
    check_body(tag, instances, answer)


def oip_json_inputs(tag: str, instances: list[Any]) -> list[dict[str, Any]]:
    """OIP input tensors: one [rows, features] tensor, or one tensor per feature for a model
    with categorical features."""
    schema = registry.stored_schema(tag)
    if not schema.has_categorical:
        return [
            {"name": "features", "datatype": "FP64", "shape": [len(instances), len(schema.names)], "data": instances}
        ]
    return [
        {
            "name": f.name,
            "datatype": "BYTES" if f.is_categorical else "FP64",
            "shape": [len(instances)],
            "data": [row[f.name] for row in instances],
        }
        for f in schema.features
    ]


def tensors(outputs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in outputs}


@pytest.mark.parametrize("tag", ["breast_cancer:v2", "titanic:v1", "diabetes:v1", "iris:v1"])
def test_oip_rest_explanations_add_up(explaining_server: RunningServer, tag: str) -> None:
    name, version = tag.split(":")
    instances = rows_of(tag)
    body = {"inputs": oip_json_inputs(tag, instances), "parameters": {"explain": True}}
    url = f"{explaining_server.url}/v2/models/{name}/versions/{version}/infer"
    answer = httpx.post(url, json=body, timeout=60).json()
    found = tensors(answer["outputs"])
    schema = registry.stored_schema(tag)
    width = len(schema.names)
    contributions = found["explain_contributions"]
    assert contributions.shape[0] == len(instances) and contributions.shape[2] == width
    assert "predict" in found  # the usual outputs come too
    check(tag, instances, found["explain_base_value"], found["explain_outputs"], contributions)
    parameters = answer["parameters"]
    assert json.loads(parameters["explain_features"]) == schema.names
    assert parameters["explain_method"] == TAGS[tag]
    spaces = {"breast_cancer": "log_odds", "titanic": "log_odds", "iris": "logits", "diabetes": "value"}
    assert parameters["explain_space"] == spaces[name]


def grpc_inputs(tag: str, instances: list[Any]) -> list[Any]:
    schema = registry.stored_schema(tag)
    if not schema.has_categorical:
        data = np.array([[np.nan if v is None else v for v in row] for row in instances], dtype=np.float64)
        tensor = triton_grpc.InferInput("features", list(data.shape), "FP64")
        tensor.set_data_from_numpy(data)
        return [tensor]
    inputs = []
    for feature in schema.features:
        values = [row[feature.name] for row in instances]
        if feature.is_categorical:
            tensor = triton_grpc.InferInput(feature.name, [len(values)], "BYTES")
            tensor.set_data_from_numpy(np.array([(v or "").encode() for v in values], dtype=np.object_))
        else:
            tensor = triton_grpc.InferInput(feature.name, [len(values)], "FP64")
            tensor.set_data_from_numpy(np.array([np.nan if v is None else float(v) for v in values]))
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("tag", ["iris:v1", "titanic:v2", "diabetes:v2", "breast_cancer:v1"])
def test_oip_grpc_explanations_add_up(explaining_server: RunningServer, tag: str) -> None:
    name, version = tag.split(":")
    instances = rows_of(tag)
    client = triton_grpc.InferenceServerClient(explaining_server.grpc_target)
    result = client.infer(name, grpc_inputs(tag, instances), model_version=version, parameters={"explain": True})
    if tag.startswith("titanic"):  # a missing sex goes as "" over gRPC, which the model reads as missing
        instances = [{**row, "sex": row["sex"] or ""} for row in instances]
    check(
        tag,
        instances,
        result.as_numpy("explain_base_value"),
        result.as_numpy("explain_outputs"),
        result.as_numpy("explain_contributions"),
    )
    parameters = result.get_response().parameters
    assert json.loads(parameters["explain_features"].string_param) == registry.stored_schema(tag).names
    assert parameters["explain_method"].string_param == TAGS[tag]


def test_too_many_rows_to_explain_is_a_400_naming_the_field(explaining_server: RunningServer) -> None:
    rows = datasets.load_diabetes().data[: LIMIT + 1].tolist()
    url = f"{explaining_server.url}/v1/models/diabetes/predict"
    refused = httpx.post(url, json={"instances": rows, "explain": True}, timeout=60)
    assert refused.status_code == 400
    assert refused.json()["error"] == (
        f"invalid input: instances: holds {LIMIT + 1} rows; at most {LIMIT} can be explained in one request "
        "(max_explained_rows)"
    )
    assert refused.json()["detail"][0]["loc"] == ["instances"]
    assert httpx.post(url, json={"instances": rows}, timeout=60).status_code == 200  # plain: the usual limit
    assert httpx.post(url, json={"instances": rows[:LIMIT], "explain": True}, timeout=60).status_code == 200
    body = {"inputs": oip_json_inputs("diabetes:v1", rows), "parameters": {"explain": True}}
    rest = httpx.post(f"{explaining_server.url}/v2/models/diabetes/versions/v1/infer", json=body, timeout=60)
    assert rest.status_code == 400 and "at most 100 can be explained" in rest.json()["error"]


@pytest.mark.parametrize("value", ["yes", 1, [True]])
def test_explain_that_is_not_a_boolean_is_a_400_on_every_transport(
    explaining_server: RunningServer, value: Any
) -> None:
    url = explaining_server.url
    instances = rows_of("iris:v1", 1)
    for path, body in (
        ("/v1/models/iris/predict", {"instances": instances, "explain": value}),
        ("/v1/models/iris/versions/v1/predict", {"instances": instances, "explain": value}),
        ("/predict", {"model": "iris", "instances": instances, "explain": value}),
    ):
        refused = httpx.post(url + path, json=body, timeout=30)
        assert refused.status_code == 400, path
        assert refused.json()["error"] == "invalid input: explain: must be true or false"
    body = {"inputs": oip_json_inputs("iris:v1", instances), "parameters": {"explain": value}}
    rest = httpx.post(f"{url}/v2/models/iris/infer", json=body, timeout=30)
    assert rest.status_code == 400
    assert rest.json()["error"] == "invalid input: parameters['explain']: must be a boolean (true or false)"


def test_explain_that_is_not_a_boolean_is_invalid_argument_over_grpc(explaining_server: RunningServer) -> None:
    client = triton_grpc.InferenceServerClient(explaining_server.grpc_target)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("iris", grpc_inputs("iris:v1", rows_of("iris:v1", 1)), parameters={"explain": "yes"})
    assert caught.value.status() == f"StatusCode.{grpc.StatusCode.INVALID_ARGUMENT.name}"
    assert "parameters['explain']: must be a boolean" in str(caught.value.message())


def test_explanation_outputs_need_explain(explaining_server: RunningServer) -> None:
    body = {"inputs": oip_json_inputs("iris:v1", rows_of("iris:v1", 1)), "outputs": [{"name": "explain_outputs"}]}
    refused = httpx.post(f"{explaining_server.url}/v2/models/iris/infer", json=body, timeout=30)
    assert refused.status_code == 400 and "is not an output of this model" in refused.json()["error"]
    body["parameters"] = {"explain": True}
    answer = httpx.post(f"{explaining_server.url}/v2/models/iris/infer", json=body, timeout=30).json()
    assert [o["name"] for o in answer["outputs"]] == [
        "explain_outputs",
        "explain_contributions",
        "explain_base_value",
        "prediction_id",  # on every answer
    ]
