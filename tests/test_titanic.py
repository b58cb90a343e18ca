"""Titanic (categorical features as strings, missing ages) on every transport of a real
server, equal to the in-process pipeline; and the bad inputs that categories bring."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bentoml
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from model_server import registry
from model_server.local_server import RunningServer, start_server
from tests.test_http_api import served_output

pytestmark = pytest.mark.integration

PASSENGERS = [
    {"pclass": "1st", "sex": "female", "age": 29.0, "sibsp": 0, "parch": 0},
    {"pclass": "3rd", "sex": "male", "age": None, "sibsp": 1, "parch": 2},
    {"pclass": "2nd", "sex": None, "age": 4.0, "sibsp": 1, "parch": 1},
]
FEATURES = ["pclass", "sex", "age", "sibsp", "parch"]


def passenger_rows(passengers: list[dict[str, Any]]) -> np.ndarray:
    """Passengers as rows in training order, as the server parses them (a missing category
    is the empty string, a missing number NaN)."""
    rows = [
        [p["pclass"] or "", p["sex"] or "", np.nan if p["age"] is None else float(p["age"])]
        + [float(p["sibsp"]), float(p["parch"])]
        for p in passengers
    ]
    return np.asarray(rows, dtype=object)


def in_process(tag: str, passengers: list[dict[str, Any]] = PASSENGERS) -> dict[str, Any]:
    """What the server answers for `passengers` from `tag`, computed in-process with the
    tag's default runtime (served_output): its ONNX export, or the pipeline."""
    proba = served_output(tag, passenger_rows(passengers))
    classes = registry.stored_schema(tag).classes
    return {"predictions": [classes[i] for i in proba.argmax(axis=1)], "probabilities": proba.tolist()}


def test_titanic_on_v1_with_records_and_rows_equals_in_process(server: RunningServer) -> None:
    want = in_process("titanic:v1")
    records = httpx.post(f"{server.url}/v1/models/titanic/predict", json={"instances": PASSENGERS}).json()
    rows = [[p[f] for f in FEATURES] for p in PASSENGERS]
    by_rows = httpx.post(f"{server.url}/v1/models/titanic/predict", json={"instances": rows}).json()
    for answer in (records, by_rows):
        assert answer["tag"] == "titanic:v1" and answer["classes"] == ["died", "survived"]
        assert answer["predictions"] == want["predictions"] and answer["probabilities"] == want["probabilities"]


def test_titanic_with_bentoml_client_equals_in_process(server: RunningServer) -> None:
    with bentoml.SyncHTTPClient(server.url) as client:
        answer = client.predict(model="titanic", instances=PASSENGERS)
    assert answer["probabilities"] == in_process("titanic:v1")["probabilities"]


def _columns(module: Any, binary: bool = False) -> list[Any]:
    tensors = []
    for feature in FEATURES:
        values = [p[feature] for p in PASSENGERS]
        if feature in ("pclass", "sex"):
            tensor = module.InferInput(feature, [len(values)], "BYTES")
            data = np.array([(v or "").encode() for v in values], dtype=np.object_)
        else:
            tensor = module.InferInput(feature, [len(values), 1], "FP64")
            data = np.array([[np.nan if v is None else float(v)] for v in values])
        if binary:
            tensor.set_data_from_numpy(data, binary_data=True)
        else:
            tensor.set_data_from_numpy(data)
        tensors.append(tensor)
    return tensors


@pytest.mark.parametrize("binary", [False, True])
def test_titanic_over_oip_rest_with_bytes_tensors_equals_in_process(server: RunningServer, binary: bool) -> None:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    inputs = _columns(triton_http, binary)
    result = client.infer("titanic", inputs)
    assert result.as_numpy("predict_proba").tolist() == in_process("titanic:v1")["probabilities"]
    metadata = client.get_model_metadata("titanic")
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
        ("pclass", "BYTES"),
        ("sex", "BYTES"),
        ("age", "FP64"),
        ("sibsp", "FP64"),
        ("parch", "FP64"),
    ]


def test_titanic_over_grpc_with_bytes_tensors_equals_in_process(server: RunningServer) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    result = client.infer("titanic", _columns(triton_grpc))
    assert result.as_numpy("predict_proba").tolist() == in_process("titanic:v1")["probabilities"]
    labels = [v.decode() for v in result.as_numpy("predict").tolist()]
    assert labels == in_process("titanic:v1")["predictions"]


@pytest.mark.parametrize(
    ("change", "loc", "kind", "words"),
    [
        ({"sex": 1}, ["instances", 0, "sex"], "type", "must be a string (a category) or null, got number"),
        ({"sex": True}, ["instances", 0, "sex"], "type", "got boolean"),
        ({"pclass": "4th"}, ["instances", 0, "pclass"], "category", "'4th' is not a category seen in training"),
        ({"age": "old"}, ["instances", 0, "age"], "type", "must be a number or null, got string"),
    ],
)
def test_bad_categorical_json_is_400_naming_field_and_rule(
    server: RunningServer, change: dict, loc: list, kind: str, words: str
) -> None:
    body = {"instances": [{**PASSENGERS[0], **change}]}
    for path in ("/v1/models/titanic/predict", "/predict"):
        answer = httpx.post(server.url + path, json={**body, "model": "titanic"} if path == "/predict" else body)
        assert answer.status_code == 400, answer.text
        problem = answer.json()["detail"][0]
        assert problem["loc"] == loc and problem["type"] == kind and words in problem["msg"]
    if kind == "category":
        assert "(allowed: '1st', '2nd', '3rd')" in problem["msg"]


def _tensor(name: str, datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [len(data)], "data": data}


GOOD_TENSORS = [
    _tensor("pclass", "BYTES", ["1st"]),
    _tensor("sex", "BYTES", ["female"]),
    _tensor("age", "FP64", [29.0]),
    _tensor("sibsp", "FP64", [0]),
    _tensor("parch", "FP64", [0]),
]


@pytest.mark.parametrize(
    ("inputs", "loc", "words"),
    [
        (GOOD_TENSORS[1:], ["inputs", "pclass"], "is missing; this model takes one tensor per feature"),
        ([*GOOD_TENSORS, _tensor("fare", "FP64", [7.0])], ["inputs", "fare"], "is not an input of this model"),
        ([_tensor("pclass", "FP64", [1.0]), *GOOD_TENSORS[1:]], ["inputs", "pclass", "datatype"], "must be BYTES"),
        ([_tensor("pclass", "BYTES", ["1st", "2nd"]), *GOOD_TENSORS[1:]], ["inputs", "sex", "shape"], "has 1 rows"),
        ([GOOD_TENSORS[0], _tensor("sex", "BYTES", ["robot"]), *GOOD_TENSORS[2:]], [0, "sex"], "not a category"),
    ],
)
def test_bad_tensors_are_400_and_invalid_argument_naming_the_tensor(
    server: RunningServer, inputs: list[dict], loc: list, words: str
) -> None:
    answer = httpx.post(f"{server.url}/v2/models/titanic/infer", json={"inputs": inputs})
    assert answer.status_code == 400, answer.text
    problem = answer.json()["detail"][0]
    assert problem["loc"] == loc and words in problem["msg"]
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    tensors = []
    for item in inputs:
        tensor = triton_grpc.InferInput(item["name"], item["shape"], item["datatype"])
        dtype = np.object_ if item["datatype"] == "BYTES" else np.float64
        values = [v.encode() for v in item["data"]] if dtype is np.object_ else item["data"]
        tensor.set_data_from_numpy(np.array(values, dtype=dtype))
        tensors.append(tensor)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("titanic", tensors)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and words in caught.value.message()
    assert httpx.get(f"{server.url}/readyz").status_code == 200


@pytest.fixture(scope="module")
def accepting(trained_default_models: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    config = tmp_path_factory.mktemp("accept") / "configuration.yaml"
    config.write_text(
        "services:\n  TabularModelServer:\n    workers: 1\n    model_server:\n      models:\n"
        "        titanic:\n          variants: [{tag: 'titanic:v1'}]\n          unknown_categories: accept\n"
    )
    running = start_server(Path(config))
    try:
        yield running
    finally:
        running.stop()


def test_unknown_categories_accepted_by_setting_come_with_a_warning_on_every_door(accepting: RunningServer) -> None:
    crew = {**PASSENGERS[0], "pclass": "crew"}
    warning = "pclass: 'crew' not seen in training; the model's encoder ignores it"
    want = in_process("titanic:v1", [crew])["probabilities"]
    v1 = httpx.post(f"{accepting.url}/v1/models/titanic/predict", json={"instances": [crew]})
    named = httpx.post(f"{accepting.url}/predict", json={"model": "titanic", "instances": [crew]})
    for answer in (v1, named):
        assert answer.status_code == 200, answer.text
        assert answer.json()["warnings"] == [warning] and answer.json()["probabilities"] == want
    tensors = [_tensor(name, "BYTES" if name in ("pclass", "sex") else "FP64", [crew[name]]) for name in FEATURES]
    rest = httpx.post(f"{accepting.url}/v2/models/titanic/infer", json={"inputs": tensors}).json()
    assert rest["parameters"] == {"warnings": warning}
    assert next(o["data"] for o in rest["outputs"] if o["name"] == "predict_proba") == want[0]
    client = triton_grpc.InferenceServerClient(accepting.grpc_target)
    inputs = []
    for item in tensors:
        tensor = triton_grpc.InferInput(item["name"], item["shape"], item["datatype"])
        if item["datatype"] == "BYTES":
            tensor.set_data_from_numpy(np.array([v.encode() for v in item["data"]], dtype=np.object_))
        else:
            tensor.set_data_from_numpy(np.array(item["data"], dtype=np.float64))
        inputs.append(tensor)
    result = client.infer("titanic", inputs)
    assert result.get_response().parameters["warnings"].string_param == warning
    assert result.as_numpy("predict_proba").tolist() == want


@pytest.fixture(scope="module")
def file_models(trained_default_models: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """churn:from_csv and churn:from_parquet, trained by the CLI from files made here, served."""
    from tests.test_tabular import churn_table
    from training.__main__ import main

    folder = tmp_path_factory.mktemp("files")
    frame = churn_table(rows=300, seed=5)
    frame.to_csv(folder / "churn.csv", index=False)
    frame.to_parquet(folder / "churn.parquet", index=False)
    for suffix, version in ((".csv", "from_csv"), (".parquet", "from_parquet")):
        args = ["--data", str(folder / f"churn{suffix}"), "--target", "churned", "--name", "churn"]
        assert main([*args, "--version", version, "--drop", "customer_id", "--force"]) == 0
    config = folder / "configuration.yaml"
    config.write_text(
        "services:\n  TabularModelServer:\n    workers: 1\n    model_server:\n      models:\n"
        "        churn:\n          variants: [{tag: 'churn:from_csv'}, {tag: 'churn:from_parquet'}]\n"
    )
    running = start_server(config)
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("version", ["from_csv", "from_parquet"])
def test_models_trained_from_the_users_files_are_served_like_in_process(
    file_models: RunningServer, version: str
) -> None:
    records = [
        {"plan": "basic", "months": 3, "region": "north", "spend": 41.5},
        {"plan": "pro", "months": None, "region": None, "spend": 75.0},
    ]
    answer = httpx.post(
        f"{file_models.url}/v1/models/churn/versions/{version}/predict", json={"instances": records}
    ).json()
    rows = np.asarray([["basic", 3.0, "north", 41.5], ["pro", np.nan, "", 75.0]], dtype=object)
    assert answer["tag"] == f"churn:{version}"
    assert answer["probabilities"] == served_output(f"churn:{version}", rows).tolist()
    assert answer["classes"] == ["no", "yes"]


def test_grpc_takes_bytes_from_typed_contents_too(server: RunningServer) -> None:
    """BYTES in `bytes_contents` and numbers in `fp64_contents`, as plain grpcio clients send them."""
    import grpc
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="titanic")
    for feature in FEATURES:
        values = [p[feature] for p in PASSENGERS]
        if feature in ("pclass", "sex"):
            tensor = request.inputs.add(name=feature, datatype="BYTES", shape=[len(values)])
            tensor.contents.bytes_contents.extend([(v or "").encode() for v in values])
        else:
            tensor = request.inputs.add(name=feature, datatype="FP64", shape=[len(values), 1])
            tensor.contents.fp64_contents.extend([np.nan if v is None else float(v) for v in values])
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        raw = call(request.SerializeToString(), timeout=30)
    response = service_pb2.ModelInferResponse.FromString(raw)
    names = [o.name for o in response.outputs]
    proba = np.frombuffer(response.raw_output_contents[names.index("predict_proba")], dtype="<f8").reshape(-1, 2)
    assert proba.tolist() == in_process("titanic:v1")["probabilities"]
