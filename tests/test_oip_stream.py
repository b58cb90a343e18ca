"""OIP gRPC streaming (`ModelStreamInfer`) on the real server: tritonclient's
`start_stream`/`async_stream_infer` and plain grpcio with pipelined messages. Every
answer equals the unary call's for the same rows; a bad message gets its own error
message naming the field and the stream goes on."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from sklearn import datasets
from tritonclient.grpc import service_pb2 as pb  # the same messages; one descriptor pool holds one

from model_server.local_server import RunningServer
from tests.test_http_api import expected
from tests.test_titanic import PASSENGERS, _passengers, in_process

pytestmark = pytest.mark.integration

CANCER = np.asarray(datasets.load_breast_cancer().data, dtype=np.float64)
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
UNARY = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def unary(server: RunningServer) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(server.grpc_target)


def stream_through_tritonclient(target: str, requests: list[tuple[str, list[Any], str]]) -> dict[str, Any]:
    """Send every (model, inputs, id) on one tritonclient stream; the results (or errors) by id."""
    client = triton_grpc.InferenceServerClient(target)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for model, inputs, request_id in requests:
            client.async_stream_infer(model, inputs, request_id=request_id)
        got = [answers.get(timeout=30) for _ in requests]
    finally:
        client.stop_stream()
        client.close()
    assert all(error is None for _, error in got), [str(e) for _, e in got if e is not None]
    return {result.get_response().id: result for result, _ in got}


def cancer_inputs(rows: np.ndarray, datatype: str) -> list[Any]:
    tensor = triton_grpc.InferInput("features", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows.astype(np.float32 if datatype == "FP32" else np.float64))
    return [tensor]


def test_tritonclient_stream_answers_equal_unary_answers(server: RunningServer, unary: Any) -> None:
    """breast_cancer one row and many (raw_input_contents, as tritonclient sends them) and
    titanic with BYTES columns, mixed on one stream. Pipelined rows join one model call,
    where ONNX's float32 trees may round the last bits of a probability differently than
    for a row alone (as concurrent unary calls do): labels are equal, probabilities within
    float32 rounding; a message alone on a stream is equal bit for bit."""
    slices = [slice(i, i + 1) for i in range(0, 40, 3)] + [slice(100, 164), slice(200, 203)]
    requests = [("breast_cancer", cancer_inputs(CANCER[s], "FP64"), f"bc-{i}") for i, s in enumerate(slices)]
    requests += [("breast_cancer", cancer_inputs(CANCER[5:9], "FP32"), "bc-fp32")]
    requests += [("titanic", _passengers(triton_grpc), f"titanic-{i}") for i in range(3)]
    streamed = stream_through_tritonclient(server.grpc_target, requests)
    assert sorted(streamed) == sorted(r[2] for r in requests)
    for model, inputs, request_id in requests:
        want = unary.infer(model, inputs, request_id=request_id)
        got = streamed[request_id]
        assert np.array_equal(got.as_numpy("predict"), want.as_numpy("predict")), request_id
        np.testing.assert_allclose(got.as_numpy("predict_proba"), want.as_numpy("predict_proba"), rtol=0, atol=1e-6)
        response = got.get_response()
        assert (response.model_name, response.model_version) == (model, "v1")
    alone = stream_through_tritonclient(server.grpc_target, [requests[1]])["bc-1"]
    assert np.array_equal(alone.as_numpy("predict_proba"), unary.infer(*requests[1][:2]).as_numpy("predict_proba"))
    # and the unary answers are the in-process ones
    assert streamed["titanic-0"].as_numpy("predict_proba").tolist() == in_process("titanic:v1")["probabilities"]
    assert len(PASSENGERS) == len(streamed["titanic-0"].as_numpy("predict"))
    proba = expected("breast_cancer:v1", CANCER[100:164])["probabilities"]
    np.testing.assert_allclose(streamed[f"bc-{len(slices) - 2}"].as_numpy("predict_proba"), proba, rtol=0, atol=1e-6)


def cancer_request(i: int, rows: np.ndarray, typed: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="breast_cancer", id=f"m-{i}")
    tensor = request.inputs.add(name="features", datatype="FP64", shape=list(rows.shape))
    if typed:
        tensor.contents.fp64_contents.extend(rows.reshape(-1).tolist())
    else:
        request.raw_input_contents.append(rows.astype("<f8").tobytes())
    return request


def raw_stream(target: str, messages: list[bytes], metadata: tuple = ()) -> list[pb.ModelStreamInferResponse]:
    """Every message written before any answer is read (grpcio sends from the iterator
    while the answers come back); the answers in the order they came."""
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(STREAM)
        answers = call(iter(messages), metadata=metadata, timeout=60)
        return [pb.ModelStreamInferResponse.FromString(a) for a in answers]


def probabilities(response: pb.ModelInferResponse) -> list[float]:
    index = [o.name for o in response.outputs].index("predict_proba")
    return np.frombuffer(response.raw_output_contents[index], dtype="<f8").tolist()


def test_500_pipelined_messages_on_one_stream_are_all_answered_as_unary(server: RunningServer) -> None:
    """Typed contents and raw bytes alternate; each answer carries its request's id and
    equals the unary answer for the same message."""
    requests = [cancer_request(i, CANCER[i % 569 : i % 569 + 1 + i % 3], typed=i % 2 == 0) for i in range(500)]
    answers = raw_stream(server.grpc_target, [r.SerializeToString() for r in requests])
    assert len(answers) == 500
    assert [a.error_message for a in answers if a.error_message] == []
    by_id = {a.infer_response.id: a.infer_response for a in answers}
    assert sorted(by_id) == sorted(r.id for r in requests)
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary(UNARY)
        for request in requests[:40] + requests[-10:]:
            want = pb.ModelInferResponse.FromString(call(request.SerializeToString(), timeout=10))
            got = by_id[request.id]
            np.testing.assert_allclose(probabilities(got), probabilities(want), rtol=0, atol=1e-6)
            assert got.raw_output_contents[0] == want.raw_output_contents[0], request.id  # the labels
    want = expected("breast_cancer:v1", CANCER[7:9])["probabilities"]  # m-7: raw bytes, 2 rows
    np.testing.assert_allclose(probabilities(by_id["m-7"]), np.asarray(want).reshape(-1), rtol=0, atol=1e-6)


def bad_requests() -> Iterator[tuple[pb.ModelInferRequest, str, str]]:
    """(message, error code, words of the error) for bad messages."""
    unknown = cancer_request(0, CANCER[:1], typed=False)
    unknown.model_name, unknown.id = "no_such_model", "bad-model"
    yield unknown, "NOT_FOUND", "model 'no_such_model' is not served here"
    shape = cancer_request(0, CANCER[:1], typed=True)
    shape.id = "bad-shape"
    shape.inputs[0].shape[:] = [1, 29]
    del shape.inputs[0].contents.fp64_contents[29:]
    yield shape, "INVALID_ARGUMENT", "inputs['features']['shape']: must be [rows, 30], got [1, 29]"
    datatype = cancer_request(0, CANCER[:1], typed=False)
    datatype.id = "bad-datatype"
    datatype.inputs[0].datatype = "BYTES"
    yield datatype, "INVALID_ARGUMENT", "inputs['features']['datatype']"
    short = cancer_request(0, CANCER[:2], typed=False)
    short.id = "bad-length"
    short.raw_input_contents[0] = short.raw_input_contents[0][:-8]
    yield short, "INVALID_ARGUMENT", "holds 472 bytes; shape [2, 30] of FP64 needs 480"
    titanic = pb.ModelInferRequest(model_name="titanic", id="bad-category")
    for name, datatype_, values in [("pclass", "BYTES", [b"4th"]), ("sex", "BYTES", [b"male"])]:
        titanic.inputs.add(name=name, datatype=datatype_, shape=[1]).contents.bytes_contents.extend(values)
    for name in ("age", "sibsp", "parch"):
        titanic.inputs.add(name=name, datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
    yield titanic, "INVALID_ARGUMENT", "'4th' is not a category seen in training"


def test_bad_messages_get_their_own_error_and_the_stream_goes_on(server: RunningServer) -> None:
    bad = list(bad_requests())
    messages, good_ids = [], []
    for i, (request, _, _) in enumerate(bad):
        good = cancer_request(i, CANCER[i : i + 1], typed=False)
        good.id = f"good-{i}"
        good_ids.append(good.id)
        messages += [request.SerializeToString(), good.SerializeToString()]
    messages.append(b"\x0a\xff\xff\xff\xff")  # not a protobuf message
    last = cancer_request(99, CANCER[99:100], typed=True)
    last.id = "good-last"
    messages.append(last.SerializeToString())
    answers = raw_stream(server.grpc_target, messages)
    assert len(answers) == len(messages)
    errors = {a.infer_response.id: a for a in answers if a.error_message}
    for request, code, words in bad:
        answer = errors[request.id]
        assert words in answer.error_message, (request.id, answer.error_message)
        assert answer.error_message.endswith(f" (request id {request.id})")
        assert answer.infer_response.parameters["error_code"].string_param == code
        assert answer.infer_response.model_name == request.model_name and not answer.infer_response.outputs
    assert "message: is not a valid ModelInferRequest" in errors[""].error_message
    answered = {a.infer_response.id: a.infer_response for a in answers if not a.error_message}
    assert sorted(answered) == sorted([*good_ids, "good-last"])
    for i, request_id in enumerate(good_ids):
        want = expected("breast_cancer:v1", CANCER[i : i + 1])["probabilities"][0]
        np.testing.assert_allclose(probabilities(answered[request_id]), want, rtol=0, atol=1e-6)


def test_every_message_has_its_access_log_line(server: RunningServer) -> None:
    requests = [cancer_request(i, CANCER[i : i + 1], typed=False) for i in range(3)]
    for i, request in enumerate(requests):
        request.id = f"stream-log-{i}"
    requests[2].model_name = "no_such_model"
    raw_stream(server.grpc_target, [r.SerializeToString() for r in requests])

    def logged() -> dict[str, dict[str, Any]]:
        lines = [json.loads(line) for line in server.log().splitlines() if '"stream-log-' in line]
        return {e["request_id"]: e for e in lines if e.get("logger") == "model_server.access"}

    deadline = time.monotonic() + 10
    while len(logged()) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    entries = logged()
    assert sorted(entries) == ["stream-log-0", "stream-log-1", "stream-log-2"]
    assert {e["target"] for e in entries.values()} == {"ModelStreamInfer"}
    assert [entries[f"stream-log-{i}"]["status"] for i in range(3)] == [200, 200, 404]
    assert entries["stream-log-0"]["tag"] == "breast_cancer:v1"
