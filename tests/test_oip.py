"""The Open Inference Protocol fronts (REST /v2 and gRPC) of a real server, driven by
tritonclient, a third-party client, and compared with the in-process models."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
import tritonclient.http as triton_http
from sklearn import datasets
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from model_server.local_server import RunningServer
from tests.test_http_api import batch_requests_over_one, expected, metric

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
IRIS = np.asarray(datasets.load_iris().data, dtype=np.float64)
CANCER = np.asarray(datasets.load_breast_cancer().data, dtype=np.float64)


@pytest.fixture(scope="module")
def http_client(server: RunningServer) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")


@pytest.fixture(scope="module")
def grpc_client(server: RunningServer) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(server.grpc_target)


def test_health_and_server_metadata(http_client, grpc_client) -> None:  # type: ignore[no-untyped-def]
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert http_client.is_model_ready("iris") and grpc_client.is_model_ready("iris", "v1")
    assert http_client.get_server_metadata()["name"] == "tabular-model-server"
    assert grpc_client.get_server_metadata().name == "tabular-model-server"


def test_model_metadata_comes_from_the_training_schema(http_client, grpc_client) -> None:  # type: ignore[no-untyped-def]
    rest = http_client.get_model_metadata("breast_cancer")
    names = json.dumps(list(datasets.load_breast_cancer().feature_names))
    parameters = {"missing": "NaN", "features": names}  # the columns of `features`, in order
    assert rest["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1, 30], "parameters": parameters}]
    assert [(o["name"], o["shape"]) for o in rest["outputs"]] == [
        ("predict", [-1]),
        ("predict_proba", [-1, 2]),
        ("prediction_id", [-1]),
    ]
    assert rest["versions"] == ["v1", "v2"] and rest["platform"] == "scikit-learn"  # v2 is the shadow
    meta = grpc_client.get_model_metadata("diabetes")
    assert [(i.name, i.datatype, list(i.shape)) for i in meta.inputs] == [("features", "FP64", [-1, 10])]
    assert [(o.name, o.datatype) for o in meta.outputs] == [("predict", "FP64"), ("prediction_id", "BYTES")]


def _want(tag: str, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
    want = expected(tag, rows)
    return want["predictions"], np.array(want["probabilities"])


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("rows", [slice(0, 1), slice(30, 47)])
@pytest.mark.parametrize("binary", [True, False])
def test_rest_infer_equals_in_process(http_client, datatype: str, rows: slice, binary: bool) -> None:  # type: ignore[no-untyped-def]
    data = IRIS[rows].astype(np.float32 if datatype == "FP32" else np.float64)
    tensor = triton_http.InferInput("features", list(data.shape), datatype)
    tensor.set_data_from_numpy(data, binary_data=binary)
    outputs = [triton_http.InferRequestedOutput(n, binary_data=binary) for n in ("predict", "predict_proba")]
    result = http_client.infer("iris", [tensor], outputs=outputs, request_id="r-1")
    response = result.get_response()
    labels, proba = _want(f"iris:{response['model_version']}", data.astype(np.float64))
    assert [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("predict")] == labels
    assert np.array_equal(result.as_numpy("predict_proba").reshape(proba.shape), proba)
    assert response["model_version"] in {"v1", "v2"} and response["id"] == "r-1"


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("rows", [slice(0, 1), slice(100, 164)])
def test_grpc_infer_equals_in_process(grpc_client, datatype: str, rows: slice) -> None:  # type: ignore[no-untyped-def]
    data = CANCER[rows].astype(np.float32 if datatype == "FP32" else np.float64)
    tensor = triton_grpc.InferInput("features", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    result = grpc_client.infer("breast_cancer", [tensor], request_id="g-1")
    labels, proba = _want("breast_cancer:v1", data.astype(np.float64))
    assert [x.decode() for x in result.as_numpy("predict")] == labels
    assert np.array_equal(result.as_numpy("predict_proba"), proba)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("breast_cancer", "v1", "g-1")


def test_grpc_regression_and_typed_contents(server: RunningServer) -> None:
    rows = np.asarray(datasets.load_diabetes().data[:3], dtype=np.float64)
    request = service_pb2.ModelInferRequest(model_name="diabetes", model_version="v1")
    tensor = request.inputs.add(name="features", datatype="FP64", shape=[3, 10])
    tensor.contents.fp64_contents.extend(rows.reshape(-1).tolist())
    response = _raw_call(server, "ModelInfer", request.SerializeToString())
    answer = service_pb2.ModelInferResponse.FromString(response)
    values = np.frombuffer(answer.raw_output_contents[0], dtype="<f8")
    assert values.tolist() == expected("diabetes:v1", rows)["predictions"]


def test_concurrent_grpc_requests_are_batched(server: RunningServer) -> None:
    """diabetes:v1 serves with scikit-learn, in the model thread, where concurrent calls join."""
    rows = np.asarray(datasets.load_diabetes().data[:256], dtype=np.float64)
    before = batch_requests_over_one(httpx.get(f"{server.url}/metrics").text, "diabetes")

    async def burst() -> list[np.ndarray]:
        client = triton_grpc_aio.InferenceServerClient(server.grpc_target)
        try:

            async def one(i: int) -> np.ndarray:
                tensor = triton_grpc_aio.InferInput("features", [1, 10], "FP64")
                tensor.set_data_from_numpy(rows[i : i + 1])
                result = await client.infer("diabetes", [tensor])
                return result.as_numpy("predict")[0]

            return await asyncio.gather(*(one(i) for i in range(256)))
        finally:
            await client.close()

    got = np.array(asyncio.run(burst()))
    # Inside a larger batch the last bits may round differently than row by row (BLAS).
    np.testing.assert_allclose(got, np.array(expected("diabetes:v1", rows)["predictions"]), rtol=1e-12, atol=1e-9)
    after = batch_requests_over_one(httpx.get(f"{server.url}/metrics").text, "diabetes")
    assert after - before > 0, "no gRPC model call joined more than one request"


def test_plain_grpcio_client_from_the_readme(server: RunningServer) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "clients" / "plain_grpc.py"), server.grpc_target],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    version = re.search(r"model: iris version: (v\d) id: readme-1", out).group(1)  # type: ignore[union-attr]
    labels, proba = _want(f"iris:{version}", np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]))
    assert f"predict: {labels}" in out
    assert f"predict_proba: {proba.tolist()}" in out


# --- bad input over both transports -------------------------------------------------

BAD_TENSORS = [
    # (case, model, json body, http status, grpc code, words)
    (
        "wrong width",
        "iris",
        {"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "must be [rows, 4], got [1, 3]",
    ),
    (
        "data shorter than shape",
        "iris",
        {"inputs": [{"name": "features", "datatype": "FP64", "shape": [2, 4], "data": [1, 2, 3, 4, 5]}]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "holds 5 values; shape [2, 4] needs 8",
    ),
    (
        "bytes datatype",
        "iris",
        {"inputs": [{"name": "features", "datatype": "BYTES", "shape": [1, 4], "data": ["a", "b", "c", "d"]}]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "'BYTES' is not supported",
    ),
    (
        "two inputs",
        "iris",
        {"inputs": [{"name": "a", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3, 4]}] * 2},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "exactly one tensor",
    ),
    (
        "three dimensions",
        "iris",
        {"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 1, 4], "data": [1, 2, 3, 4]}]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "must be [rows, features]",
    ),
    (
        "unknown output",
        "diabetes",
        {
            "inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 10], "data": [0] * 10}],
            "outputs": [{"name": "predict_proba"}],
        },
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "is not an output of this model",
    ),
    (
        "a shape whose size overflows 64 bits",
        "iris",
        {"inputs": [{"name": "features", "datatype": "FP64", "shape": [2**62, 4], "data": []}]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs 18446744073709551616",
    ),
    (
        "a zero and a huge number of rows",
        "iris",
        {"inputs": [{"name": "features", "datatype": "FP64", "shape": [2**62, 0], "data": []}]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs['features']['shape']: must be [rows, 4], got [4611686018427387904, 0]",
    ),
    (
        "no rows and a huge width",
        "iris",
        {"inputs": [{"name": "features", "datatype": "FP64", "shape": [0, 2**62], "data": []}]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs['features']['shape']: must be [rows, 4], got [0, 4611686018427387904]",
    ),
    (
        "unknown model",
        "no_such_model",
        {"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 1], "data": [1]}]},
        404,
        grpc.StatusCode.NOT_FOUND,
        "model 'no_such_model' is not served here",
    ),
]


def _grpc_request(model: str, body: dict) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    for item in body["inputs"]:
        tensor = request.inputs.add(name=item["name"], datatype=item["datatype"], shape=item["shape"])
        if item["datatype"] == "BYTES":
            tensor.contents.bytes_contents.extend(x.encode() for x in item["data"])
        else:
            tensor.contents.fp64_contents.extend(float(x) for x in item["data"])
    for output in body.get("outputs", []):
        request.outputs.add(name=output["name"])
    return request


def _raw_call(server: RunningServer, method: str, payload: bytes) -> bytes:
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        return call(payload, timeout=10)


@pytest.mark.parametrize("case", BAD_TENSORS, ids=[c[0] for c in BAD_TENSORS])
def test_bad_tensor_over_rest_and_grpc(server: RunningServer, case: tuple) -> None:
    _, model, body, status, code, words = case
    rest = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body)
    assert rest.status_code == status and words in rest.json()["error"], rest.text
    with pytest.raises(grpc.RpcError) as caught:
        _raw_call(server, "ModelInfer", _grpc_request(model, body).SerializeToString())
    assert caught.value.code() == code and words in caught.value.details()


def test_unknown_version_is_not_found_on_both(server: RunningServer, grpc_client) -> None:  # type: ignore[no-untyped-def]
    body = {"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
    rest = httpx.post(f"{server.url}/v2/models/iris/versions/v9/infer", json=body)
    assert rest.status_code == 404 and rest.json()["error"] == "model 'iris' has no served version 'v9'"
    tensor = triton_grpc.InferInput("features", [1, 4], "FP64")
    tensor.set_data_from_numpy(IRIS[:1])
    with pytest.raises(InferenceServerException, match="has no served version 'v9'") as caught:
        grpc_client.infer("iris", [tensor], model_version="v9")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert httpx.get(f"{server.url}/v2/models/iris/versions/v9/ready").status_code == 404


def test_values_outside_the_declared_datatype_are_refused_on_rest_and_grpc(server: RunningServer) -> None:
    """INT8 holds -128 to 127: a JSON value or typed gRPC content beyond it is a 400 naming
    the tensor's data, not a number taken as sent."""
    row = [5.1, 3.5, 1.4, 1000]
    body = {"inputs": [{"name": "features", "datatype": "INT8", "shape": [1, 4], "data": row}]}
    rest = httpx.post(f"{server.url}/v2/models/iris/infer", json=body)
    words = "inputs['features']['data']: holds 5.1; INT8 holds whole numbers only"
    assert rest.status_code == 400 and words in rest.json()["error"], rest.text
    request = service_pb2.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="features", datatype="INT8", shape=[1, 4])
    tensor.contents.int_contents.extend([5, 3, 1, 1000])
    with pytest.raises(grpc.RpcError) as caught:
        _raw_call(server, "ModelInfer", request.SerializeToString())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "holds 1000, outside INT8's range -128 to 127" in caught.value.details()


def test_raw_contents_of_wrong_length_and_malformed_protobuf(server: RunningServer) -> None:
    request = service_pb2.ModelInferRequest(model_name="iris")
    request.inputs.add(name="features", datatype="FP64", shape=[2, 4])
    request.raw_input_contents.append(np.zeros(7).tobytes())
    with pytest.raises(grpc.RpcError) as caught:
        _raw_call(server, "ModelInfer", request.SerializeToString())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "holds 56 bytes; shape [2, 4] of FP64 needs 64" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        _raw_call(server, "ModelInfer", b"\x0a\xff\xff\xff\xff")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid ModelInferRequest" in caught.value.details()


def test_a_width_beyond_64_bits_is_a_400_naming_the_shape(server: RunningServer) -> None:
    # gRPC's shape is int64, so only JSON can send 10**30.
    body = {"inputs": [{"name": "features", "datatype": "FP64", "shape": [0, 10**30], "data": []}]}
    answer = httpx.post(f"{server.url}/v2/models/iris/infer", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"] == [
        {"loc": ["inputs", "features", "shape"], "msg": f"must be [rows, 4], got [0, {10**30}]", "type": "shape"}
    ]


def test_grpc_refuses_contents_beside_raw_input_contents(server: RunningServer) -> None:
    request = service_pb2.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="features", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend([5.1, 3.5, 1.4, 0.2])
    request.raw_input_contents.append(np.asarray([[5.1, 3.5, 1.4, 0.2]], dtype="<f8").tobytes())
    with pytest.raises(grpc.RpcError) as caught:
        _raw_call(server, "ModelInfer", request.SerializeToString())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        "invalid input: inputs['features']['contents']: must not be set when the request has "
        "raw_input_contents; send the values in one of them"
    )


def test_grpc_counts_typed_contents_against_the_shape_before_copying_them(server: RunningServer) -> None:
    request = service_pb2.ModelInferRequest(model_name="titanic")
    for name in ("pclass", "sex"):
        tensor = request.inputs.add(name=name, datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.extend([b"1st"] * (300_000 if name == "pclass" else 1))
    for name in ("age", "sibsp", "parch"):
        request.inputs.add(name=name, datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
    with pytest.raises(grpc.RpcError) as caught:
        _raw_call(server, "ModelInfer", request.SerializeToString())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        caught.value.details() == "invalid input: inputs['pclass']['contents']: holds 300000 values; shape [1] needs 1"
    )


def test_raw_bytes_elements_beyond_the_shape_are_refused_without_splitting_them_all(server: RunningServer) -> None:
    element = struct.pack("<I", 3) + b"1st"
    tensors = [
        {
            "name": "pclass",
            "datatype": "BYTES",
            "shape": [1],
            "parameters": {"binary_data_size": len(element) * 200_000},
        },
        {"name": "sex", "datatype": "BYTES", "shape": [1], "data": ["male"]},
        *({"name": name, "datatype": "FP64", "shape": [1], "data": [1.0]} for name in ("age", "sibsp", "parch")),
    ]
    header = json.dumps({"inputs": tensors}).encode()
    answer = httpx.post(
        f"{server.url}/v2/models/titanic/infer",
        content=header + element * 200_000,  # 1.4 MB, within max_body_bytes
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"] == [
        {"loc": ["inputs", "pclass", "raw"], "msg": "holds more than the 1 values the shape needs", "type": "length"}
    ]


def test_grpc_text_that_is_not_utf8_is_invalid_argument_with_a_request_id(server: RunningServer) -> None:
    # A string field (id) with an encoded surrogate: protobuf refuses the whole message.
    request = service_pb2.ModelInferRequest(model_name="iris").SerializeToString()
    with pytest.raises(grpc.RpcError) as caught:
        _raw_call(server, "ModelInfer", request + b"\x1a\x03\xed\xa0\x80")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "invalid input: message: is not a valid ModelInferRequest"
    assert dict(caught.value.trailing_metadata())["x-request-id"]
    # A BYTES element with one: the tensor's element is named.
    request = _grpc_request("titanic", {"inputs": [_bytes_or_number(name) for name in TITANIC_FEATURES]})
    request.inputs[1].contents.bytes_contents[0] = b"\xed\xa0\x80"
    with pytest.raises(grpc.RpcError) as caught:
        _raw_call(server, "ModelInfer", request.SerializeToString())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "invalid input: inputs['sex']['data'][0]: is not UTF-8 text"
    assert dict(caught.value.trailing_metadata())["x-request-id"]


TITANIC_FEATURES = ("pclass", "sex", "age", "sibsp", "parch")


def _bytes_or_number(name: str) -> dict[str, Any]:
    if name in ("pclass", "sex"):
        return {"name": name, "datatype": "BYTES", "shape": [1], "data": ["1st" if name == "pclass" else "male"]}
    return {"name": name, "datatype": "FP64", "shape": [1], "data": [1.0]}


@pytest.mark.parametrize(
    ("content", "headers", "words"),
    [
        ('{"inputs": [', {}, "not valid JSON"),
        ('{"inputs": [{"name": "f", "datatype": "FP64", "shape": [1, 4], "data": [1e999, 1, 1, 1]}]}', {}, "finite"),
        (
            '{"inputs": [{"name": "f", "datatype": "FP64", "shape": [1, 4]}]}',
            {},
            "is required unless the tensor is sent as binary",
        ),
        (
            '{"inputs": [{"name": "f", "datatype": "FP64", "shape": [1, 4], "parameters": {"binary_data_size": 32}}]}',
            {"Inference-Header-Content-Length": "90"},
            "does not match the binary part",
        ),
        ('{"inputs": 3}', {}, "must be a list of tensors"),
    ],
)
def test_bad_rest_bodies(server: RunningServer, content: str, headers: dict, words: str) -> None:
    if "Inference-Header-Content-Length" in headers:
        headers = {"Inference-Header-Content-Length": str(len(content))}
    response = httpx.post(f"{server.url}/v2/models/iris/infer", content=content, headers=headers)
    assert response.status_code == 400 and words in response.json()["error"], response.text


def test_a_tensor_sent_both_as_data_and_as_binary_data_is_refused(server: RunningServer) -> None:
    """Triton's binary form carries a tensor's values after the JSON header; a tensor that
    also has `data` says two things at once, and neither is taken silently."""
    row = np.array([5.1, 3.5, 1.4, 0.2])
    header = {
        "inputs": [
            {
                "name": "features",
                "datatype": "FP64",
                "shape": [1, 4],
                "data": [0.0, 0.0, 0.0, 0.0],
                "parameters": {"binary_data_size": row.nbytes},
            }
        ]
    }

    def send() -> httpx.Response:
        head = json.dumps(header).encode()
        length = {"Inference-Header-Content-Length": str(len(head))}
        url = f"{server.url}/v2/models/iris/versions/v1/infer"
        return httpx.post(url, content=head + row.tobytes(), headers=length)

    response = send()
    assert response.status_code == 400, response.text
    assert response.json()["detail"][0]["loc"] == ["inputs", 0, "data"]
    assert "binary_data_size" in response.json()["error"]
    del header["inputs"][0]["data"]  # the binary form alone is answered
    response = send()
    assert response.status_code == 200, response.text
    proba = next(o for o in response.json()["outputs"] if o["name"] == "predict_proba")
    assert np.allclose(proba["data"], expected("iris:v1", row.reshape(1, 4))["probabilities"][0])


def test_server_still_healthy_after_bad_tensors(server: RunningServer, grpc_client) -> None:  # type: ignore[no-untyped-def]
    assert server.process.poll() is None
    assert grpc_client.is_server_ready()
    assert json.loads(httpx.get(f"{server.url}/v2/health/ready").text) == {"ready": True}


def test_unknown_requested_output_is_refused_before_the_model_runs(server: RunningServer, grpc_client) -> None:  # type: ignore[no-untyped-def]
    row = datasets.load_diabetes().data[:1]

    def model_calls() -> float:
        return metric(httpx.get(f"{server.url}/metrics").text, "model_server_batch_rows_count", model="diabetes")

    before = model_calls()
    rest = httpx.post(
        f"{server.url}/v2/models/diabetes/infer",
        json={
            "inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 10], "data": row.ravel().tolist()}],
            "outputs": [{"name": "bogus"}],
        },
    )
    assert rest.status_code == 400
    message = "invalid input: outputs['bogus']: is not an output of this model (outputs: predict, prediction_id)"
    assert rest.json()["error"] == message
    tensor = triton_grpc.InferInput("features", [1, 10], "FP64")
    tensor.set_data_from_numpy(row)
    with pytest.raises(InferenceServerException, match="bogus") as caught:
        grpc_client.infer("diabetes", [tensor], outputs=[triton_grpc.InferRequestedOutput("bogus")])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    grpc_client.infer("diabetes", [tensor])
    # A model call's metrics are written after its answers are sent: wait for the valid
    # request's call to show, then no other call was counted (neither refusal reached the model).
    deadline = time.monotonic() + 10
    while model_calls() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert model_calls() == before + 1


def test_an_output_named_twice_is_answered_once_and_an_odd_binary_flag_is_refused(
    server: RunningServer, grpc_client
) -> None:  # type: ignore[no-untyped-def]
    """Each named output is answered once, however often a request names it (a list that
    repeats one would otherwise multiply the answer), on REST and gRPC; the binary data
    flags are true or false, not any value."""
    row = datasets.load_diabetes().data[:1]
    tensor = {"name": "features", "datatype": "FP64", "shape": [1, 10], "data": row.ravel().tolist()}
    url = f"{server.url}/v2/models/diabetes/infer"
    repeated = httpx.post(url, json={"inputs": [tensor], "outputs": [{"name": "predict"}] * 500})
    assert repeated.status_code == 200, repeated.text
    assert [o["name"] for o in repeated.json()["outputs"]] == ["predict", "prediction_id"]
    grpc_tensor = triton_grpc.InferInput("features", [1, 10], "FP64")
    grpc_tensor.set_data_from_numpy(row)
    outputs = [triton_grpc.InferRequestedOutput("predict")] * 500
    answer = grpc_client.infer("diabetes", [grpc_tensor], outputs=outputs).get_response()
    assert [o.name for o in answer.outputs] == ["predict", "prediction_id"]
    for body, where in (
        ({"inputs": [tensor], "parameters": {"binary_data_output": "false"}}, ["parameters", "binary_data_output"]),
        (
            {"inputs": [tensor], "outputs": [{"name": "predict", "parameters": {"binary_data": "no"}}]},
            ["outputs", "predict", "parameters", "binary_data"],
        ),
    ):
        answer = httpx.post(url, json=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["detail"][0]["loc"] == where and "true or false" in answer.json()["error"]
    plain = httpx.post(url, json={"inputs": [tensor], "parameters": {"binary_data_output": False}})
    assert plain.status_code == 200 and plain.headers["content-type"].startswith("application/json")


def test_bodies_nested_hundreds_of_levels_deep_are_400_not_500(server: RunningServer) -> None:
    """A body that orjson parses (up to 1,024 levels) is checked without recursion, so the
    door names the problem instead of failing with a server error."""
    deep = "[" * 600 + "]" * 600
    cases = [
        ("/v1/models/titanic/predict", '{"instances": ' + deep + ', "version": {"a": 1}}', ["version"]),
        (
            "/v2/models/diabetes/infer",
            '{"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 10], "data": ' + deep + "}]}",
            ["inputs", "features", "data"],
        ),
    ]
    for path, body, where in cases:
        answer = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 400, (path, answer.text)
        assert answer.json()["detail"][0]["loc"] == where, (path, answer.text)


def test_text_plain_is_refused_with_415_on_both_json_apis(server: RunningServer) -> None:
    body = '{"inputs": []}'
    for path in ("/v2/models/iris/infer", "/v1/models/iris/predict", "/predict"):
        answer = httpx.post(server.url + path, content=body, headers={"Content-Type": "text/plain"})
        assert answer.status_code == 415, path
        assert answer.json()["error"].startswith("Content-Type 'text/plain' is not supported here")


def test_a_compressed_body_is_refused_with_415_naming_content_encoding(server: RunningServer) -> None:
    """The server reads bodies as sent: a gzip body is refused as compressed, not as text
    that is not UTF-8, and a plain body declared gzip is not taken as if it were plain."""
    import gzip

    body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
    for path in ("/v1/models/iris/predict", "/predict", "/v2/models/iris/infer"):
        for content in (gzip.compress(body), body):
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            answer = httpx.post(server.url + path, content=content, headers=headers)
            assert answer.status_code == 415, (path, answer.text)
            assert answer.json()["error"] == "Content-Encoding 'gzip' is not supported here; send the body uncompressed"
    plain = {"Content-Type": "application/json", "Content-Encoding": "identity"}
    assert httpx.post(f"{server.url}/v1/models/iris/predict", content=body, headers=plain).status_code == 200
    # Repeated headers make one list of codings (RFC 9110): the second is read too.
    json_type = ("Content-Type", "application/json")
    twice = [json_type, ("Content-Encoding", "identity"), ("Content-Encoding", "gzip")]
    answer = httpx.post(f"{server.url}/v1/models/iris/predict", content=body, headers=twice)
    assert answer.status_code == 415, answer.text
    assert answer.json()["error"].startswith("Content-Encoding 'identity, gzip' is not supported here")
    listed = [json_type, ("Content-Encoding", "identity"), ("Content-Encoding", "identity")]
    answer = httpx.post(f"{server.url}/v1/models/iris/versions/v1/predict", content=body, headers=listed)
    assert answer.json()["predictions"] == expected("iris:v1", np.array([[5.1, 3.5, 1.4, 0.2]]))["predictions"]
