"""Titanic (categorical features as strings, missing ages) on every transport of a real
server, equal to the in-process pipeline; and the bad inputs that categories bring."""

from __future__ import annotations

import json
import subprocess
import sys
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

from model_server.local_server import RunningServer, start_server
from model_server.models import registry
from tests.payloads import CONFIGURATIONS
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


def _columns(
    module: Any, records: list[dict[str, Any]], features: list[str], categorical: tuple[str, ...], binary: bool = False
) -> list[Any]:
    """One tritonclient tensor per feature by name: BYTES for a categorical one (a missing
    category as "", since BYTES cannot hold null), FP64 [rows, 1] otherwise."""
    tensors = []
    for feature in features:
        values = [r[feature] for r in records]
        if feature in categorical:
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


def _passengers(module: Any, binary: bool = False) -> list[Any]:
    return _columns(module, PASSENGERS, list(FEATURES), ("pclass", "sex"), binary)


@pytest.mark.parametrize("binary", [False, True])
def test_titanic_over_oip_rest_with_bytes_tensors_equals_in_process(server: RunningServer, binary: bool) -> None:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    inputs = _passengers(triton_http, binary)
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
    result = client.infer("titanic", _passengers(triton_grpc))
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
        (
            [GOOD_TENSORS[0], _tensor("sex", "BYTES", ["robot"]), *GOOD_TENSORS[2:]],
            ["inputs", "sex", "data", 0],
            "not a category",
        ),
        ([*GOOD_TENSORS[:2], _tensor("age", "FP64", [1e9]), *GOOD_TENSORS[3:]], ["inputs", "age", "data", 0], "range"),
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
def accepting(trained_default_models: list[str]) -> Iterator[RunningServer]:
    running = start_server(CONFIGURATIONS / "titanic_accepting_unknown_categories.yaml")
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
    running = start_server(CONFIGURATIONS / "churn_from_files.yaml")
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


# ---- Tags of one name in other column orders; one missing-category marker (issue 23) ----

CHURN_A = ["plan", "months", "region", "spend"]
CHURN_B = ["spend", "region", "months", "plan"]
CUSTOMERS = [
    {"plan": "basic", "months": 3.0, "region": "north", "spend": 41.5},
    {"plan": "pro", "months": None, "region": None, "spend": 75.0},
    {"plan": None, "months": 30.0, "region": "south", "spend": 52.0},
]


@pytest.fixture(scope="module")
def mixed_models(
    trained_default_models: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """churn:cols_a and churn:cols_b (the same columns in another order) under one name;
    nums:a and nums:b (all numeric, two orders); churnimp:v1, a pipeline fitted elsewhere
    (NaN for a missing category) and imported."""
    import skops.io as sio

    from tests.test_tabular import _fitted_pipeline, churn_table
    from training.__main__ import main

    folder = tmp_path_factory.mktemp("mixed")
    frame = churn_table(rows=300, seed=7)
    trained = {
        "churn:cols_a": [*CHURN_A, "churned"],
        "churn:cols_b": [*CHURN_B, "churned"],
        "nums:a": ["months", "spend", "churned"],
        "nums:b": ["spend", "months", "churned"],
    }
    for tag, columns in trained.items():
        name, version = tag.split(":")
        path = folder / f"{name}_{version}.csv"
        frame[columns].to_csv(path, index=False)
        args = ["--data", str(path), "--target", "churned", "--name", name, "--version", version, "--force"]
        assert main(args) == 0
    sio.dump(_fitted_pipeline(frame), folder / "churn.skops")
    labelled = frame.assign(churned=(frame["churned"] == "yes").astype(int))  # as _fitted_pipeline's labels
    labelled.head(60).to_csv(folder / "sample.csv", index=False)
    args = ["import", str(folder / "churn.skops"), "--sample", str(folder / "sample.csv"), "--target", "churned"]
    assert main([*args, "--name", "churnimp", "--version", "v1", "--force"]) == 0
    running = start_server(CONFIGURATIONS / "churn_column_orders.yaml")
    try:
        yield running
    finally:
        running.stop()


def _oip_columns(module: Any, records: list[dict[str, Any]], binary: bool = False) -> list[Any]:
    return _columns(module, records, list(CHURN_A), ("plan", "region"), binary)


def _own_rows(records: list[dict[str, Any]], order: list[str]) -> np.ndarray:
    """Records as a tag's matrix in its own order, as the server builds it (a missing
    category is "", a missing number NaN)."""

    def value(feature: str, v: Any) -> Any:
        if feature in ("plan", "region"):
            return "" if v is None else v
        return np.nan if v is None else float(v)

    return np.asarray([[value(f, r[f]) for f in order] for r in records], dtype=object)


def _grpc_metadata(server: RunningServer, name: str, version: str = "") -> list[tuple[str, dict[str, str]]]:
    """Each input's name and parameters from gRPC ModelMetadata, read with this server's
    own stubs in a child process: tritonclient's proto lacks the inputs' `parameters`
    (MLServer's extension) and shares the package `inference`, so one process cannot
    load both."""
    script = (
        "import json, sys, grpc\n"
        "from model_server.transports.oip_proto import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc\n"
        "stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(sys.argv[1]))\n"
        "meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=sys.argv[2], version=sys.argv[3]), timeout=30)\n"
        "print(json.dumps([[i.name, {k: v.string_param for k, v in i.parameters.items()}] for i in meta.inputs]))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", script, server.grpc_target, name, version],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=60,
    )
    return [(input_name, parameters) for input_name, parameters in json.loads(found.stdout)]


def test_tags_of_one_name_in_another_column_order_answer_as_each_alone_on_every_door(
    mixed_models: RunningServer,
) -> None:
    """Records map by name; rows and tensors follow the name's published order (its first
    variant's, churn:cols_a), whichever tag answers, pinned or chosen by a caller key."""
    url = mixed_models.url
    rows = [[c[f] for f in CHURN_A] for c in CUSTOMERS]
    for version, own in (("cols_a", CHURN_A), ("cols_b", CHURN_B)):
        tag = f"churn:{version}"
        alone = served_output(tag, _own_rows(CUSTOMERS, own))
        pinned = f"{url}/v1/models/churn/versions/{version}/predict"
        answers = [
            httpx.post(pinned, json={"instances": CUSTOMERS}).json(),
            httpx.post(pinned, json={"instances": rows}).json(),
            httpx.post(f"{url}/predict", json={"model": "churn", "version": version, "instances": rows}).json(),
        ]
        for answer in answers:
            assert answer["tag"] == tag, answer
            assert answer["probabilities"] == alone.tolist()
        rest = triton_http.InferenceServerClient(f"127.0.0.1:{mixed_models.port}")
        grpc_client = triton_grpc.InferenceServerClient(mixed_models.grpc_target)
        for binary in (False, True):
            found = rest.infer("churn", _oip_columns(triton_http, CUSTOMERS, binary), model_version=version)
            assert found.as_numpy("predict_proba").tolist() == alone.tolist()
        found = grpc_client.infer("churn", _oip_columns(triton_grpc, CUSTOMERS), model_version=version)
        assert found.as_numpy("predict_proba").tolist() == alone.tolist()
        metadata = rest.get_model_metadata("churn", model_version=version)
        assert [i["name"] for i in metadata["inputs"]] == CHURN_A
        assert [n for n, _ in _grpc_metadata(mixed_models, "churn", version)] == CHURN_A
    # Unpinned: the caller keys spread over both tags; every answer is its tag's alone.
    tags = set()
    for key in range(12):
        headers = {"X-Request-Key": f"caller-{key}"}
        answer = httpx.post(f"{url}/v1/models/churn/predict", json={"instances": rows}, headers=headers).json()
        by_records = httpx.post(f"{url}/v1/models/churn/predict", json={"instances": CUSTOMERS}, headers=headers).json()
        assert answer["tag"] == by_records["tag"] and answer["probabilities"] == by_records["probabilities"]
        alone = served_output(answer["tag"], _own_rows(CUSTOMERS, CHURN_A if answer["tag"].endswith("a") else CHURN_B))
        assert answer["probabilities"] == alone.tolist()
        tags.add(answer["tag"])
    assert tags == {"churn:cols_a", "churn:cols_b"}
    # All-numeric tags take one [rows, 2] tensor: its columns in the published order.
    numbers = np.array([[3.0, 41.5], [np.nan, 75.0]])
    for version, own in (("a", [0, 1]), ("b", [1, 0])):
        alone = served_output(f"nums:{version}", numbers[:, own]).tolist()
        records = [{"months": None if np.isnan(m) else m, "spend": s} for m, s in numbers.tolist()]
        by_records = httpx.post(f"{url}/v1/models/nums/versions/{version}/predict", json={"instances": records}).json()
        assert by_records["probabilities"] == alone
        for module, client in (
            (triton_http, triton_http.InferenceServerClient(f"127.0.0.1:{mixed_models.port}")),
            (triton_grpc, triton_grpc.InferenceServerClient(mixed_models.grpc_target)),
        ):
            tensor = module.InferInput("features", [2, 2], "FP64")
            tensor.set_data_from_numpy(numbers)
            found = client.infer("nums", [tensor], model_version=version)
            assert found.as_numpy("predict_proba").tolist() == alone
    published = {"missing": "NaN", "features": '["months", "spend"]'}
    assert httpx.get(f"{url}/v2/models/nums/versions/b").json()["inputs"][0]["parameters"] == published
    assert _grpc_metadata(mixed_models, "nums", "b") == [("features", published)]
    assert httpx.get(f"{url}/v1/models/nums").json()["schema"]["features"][0]["name"] == "months"


@pytest.mark.parametrize("name", ["churn", "churnimp"], ids=["cli-trained", "imported"])
def test_null_and_the_empty_string_are_a_missing_category_on_every_door(mixed_models: RunningServer, name: str) -> None:
    """A CLI-trained tag and an imported one (whose pipeline fills NaN) answer "" as they
    answer null: JSON records and rows, BentoML's /predict, OIP JSON, binary and gRPC
    BYTES tensors; the OIP metadata says so on every categorical input."""
    url = mixed_models.url
    version = "cols_a" if name == "churn" else "v1"
    pinned = f"{url}/v1/models/{name}/versions/{version}/predict"
    with_null = httpx.post(pinned, json={"instances": CUSTOMERS})
    assert with_null.status_code == 200, with_null.text
    want = with_null.json()["probabilities"]
    empty = [{k: ("" if v is None and k in ("plan", "region") else v) for k, v in c.items()} for c in CUSTOMERS]
    answers = [
        httpx.post(pinned, json={"instances": empty}),
        httpx.post(pinned, json={"instances": [[c[f] for f in CHURN_A] for c in empty]}),
        httpx.post(f"{url}/predict", json={"model": name, "version": version, "instances": empty}),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["probabilities"] == want
    tensors = [_tensor(f, "BYTES" if f in ("plan", "region") else "FP64", [c[f] for c in empty]) for f in CHURN_A]
    rest = httpx.post(f"{url}/v2/models/{name}/versions/{version}/infer", json={"inputs": tensors})
    assert rest.status_code == 200, rest.text
    assert [o["data"] for o in rest.json()["outputs"] if o["name"] == "predict_proba"][0] == sum(want, [])
    client = triton_http.InferenceServerClient(f"127.0.0.1:{mixed_models.port}")
    found = client.infer(name, _oip_columns(triton_http, CUSTOMERS, binary=True), model_version=version)
    assert found.as_numpy("predict_proba").tolist() == want
    grpc_client = triton_grpc.InferenceServerClient(mixed_models.grpc_target)
    found = grpc_client.infer(name, _oip_columns(triton_grpc, CUSTOMERS), model_version=version)
    assert found.as_numpy("predict_proba").tolist() == want
    metadata = httpx.get(f"{url}/v2/models/{name}").json()
    assert {i["name"]: i["parameters"]["missing"] for i in metadata["inputs"]} == {
        "plan": "",
        "months": "NaN",
        "region": "",
        "spend": "NaN",
    }
    assert [(n, p["missing"]) for n, p in _grpc_metadata(mixed_models, name)] == [
        ("plan", ""),
        ("months", "NaN"),
        ("region", ""),
        ("spend", "NaN"),
    ]
