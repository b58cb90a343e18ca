"""The JSON API of a real `bentoml serve`, compared with the in-process models."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn import datasets

from model_server.config.settings import ServerSettings
from model_server.local_server import RunningServer
from model_server.models import registry
from tests.oversized import TEN_MB, lying_post, urllib_post

pytestmark = pytest.mark.integration

BAD_REQUESTS = json.loads((Path(__file__).parent / "payloads" / "bad_requests.json").read_text())
LOADERS = {"iris": datasets.load_iris, "breast_cancer": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes}


def sample(name: str, rows: slice) -> tuple[list[str], np.ndarray]:
    bunch = LOADERS[name]()
    return [str(f) for f in bunch.feature_names], np.asarray(bunch.data[rows], dtype=np.float64)


def served_output(tag: str, matrix: Any) -> np.ndarray:
    """What `tag` computes in-process for rows in training order, with the runtime the
    server gives it when the routing names none: its ONNX export where registration kept
    one, else the pipeline (registry.default_runtime)."""
    model = registry.load(tag)
    return model.runner(registry.default_runtime(model.runtimes))(matrix)


def expected(tag: str, matrix: np.ndarray) -> dict[str, Any]:
    """What the server answers for `matrix` from `tag`, computed in-process (served_output)."""
    schema = registry.stored_schema(tag)
    output = served_output(tag, np.asarray(matrix, dtype=np.float64))
    if schema.is_classifier:
        names = [schema.classes[i] for i in output.argmax(axis=1)]
        return {"predictions": names, "probabilities": output.tolist(), "classes": list(schema.classes)}
    return {"predictions": output.tolist()}


def predict(server: RunningServer, name: str, body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/models/{name}/predict", json=body, timeout=30)


def test_server_lists_the_configured_models(server: RunningServer, project_settings: ServerSettings) -> None:
    answer = httpx.get(f"{server.url}/v1/models").json()
    served = {m["name"]: ([(v["tag"], v["weight"]) for v in m["variants"]], m["shadow"]) for m in answer["models"]}
    configured = {
        name: ([(v.tag, v.weight) for v in m.variants], m.shadow) for name, m in project_settings.models.items()
    }
    assert served == configured


@pytest.mark.parametrize("name", ["iris", "breast_cancer", "diabetes"])
@pytest.mark.parametrize("rows", [slice(0, 1), slice(40, 57)])
@pytest.mark.parametrize("form", ["records", "rows"])
def test_predictions_equal_in_process_model(
    server: RunningServer, project_settings: ServerSettings, name: str, rows: slice, form: str
) -> None:
    features, matrix = sample(name, rows)
    if form == "records":
        instances: list[Any] = [dict(zip(features, row, strict=True)) for row in matrix.tolist()]
    else:
        instances = matrix.tolist()
    response = predict(server, name, {"instances": instances})
    assert response.status_code == 200, response.text
    body = response.json()
    tag = body["tag"]  # iris is an A/B pair by default: compare with the tag that answered
    assert tag in {v.tag for v in project_settings.models[name].variants} and body["model"] == name
    assert response.headers["x-model-tag"] == tag
    want = expected(tag, matrix)
    for key, value in want.items():
        assert body[key] == value  # exact: JSON floats round-trip to the last digit


def test_missing_values_as_null_are_imputed_like_in_process(server: RunningServer) -> None:
    _, matrix = sample("diabetes", slice(0, 2))
    matrix[0, 2] = np.nan
    instances = [[None if np.isnan(v) else v for v in row] for row in matrix.tolist()]
    body = predict(server, "diabetes", {"instances": instances}).json()
    assert body["predictions"] == expected("diabetes:v1", matrix)["predictions"]


def test_explicit_version_in_path_and_body(server: RunningServer) -> None:
    _, matrix = sample("iris", slice(0, 1))
    in_path = httpx.post(f"{server.url}/v1/models/iris/versions/v1/predict", json={"instances": matrix.tolist()})
    in_body = predict(server, "iris", {"instances": matrix.tolist(), "version": "v1"})
    assert in_path.json()["tag"] == in_body.json()["tag"] == "iris:v1"


def test_an_empty_version_is_refused_not_taken_for_none(server: RunningServer) -> None:
    """Found by the fuzz test: `"version": ""` was answered by the routing's choice, while
    the OpenAPI document allows only the versions served."""
    _, matrix = sample("iris", slice(0, 1))
    refusal = {
        "loc": ["version"],
        "msg": "must name a version (leave it out to let the routing choose)",
        "type": "empty",
    }
    for path, body in (
        ("/v1/models/iris/predict", {"instances": matrix.tolist(), "version": ""}),
        ("/predict", {"model": "iris", "instances": matrix.tolist(), "version": ""}),
    ):
        answer = httpx.post(f"{server.url}{path}", json=body)
        assert answer.status_code == 400 and answer.json()["detail"] == [refusal], answer.text


def test_model_description_carries_schema_and_metrics(server: RunningServer) -> None:
    body = httpx.get(f"{server.url}/v1/models/breast_cancer").json()
    assert body["task"] == "classification"
    assert body["schema"]["classes"] == ["malignant", "benign"]
    assert len(body["schema"]["features"]) == 30
    assert body["variants"][0]["metrics"]["holdout_accuracy"] > 0.9
    assert httpx.get(f"{server.url}/v1/models/no_such_model").status_code == 404


def metric(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
    total = 0.0
    for line in metrics_text.splitlines():
        found = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if not found or found.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2)))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(found.group(3))
    return total


def batch_requests_over_one(metrics_text: str, model: str) -> float:
    """Model calls of the model's v1 tag that joined more than one request."""
    tag = f"{model}:v1"
    total = metric(metrics_text, "model_server_batch_requests_count", model=model, tag=tag)
    single = metric(metrics_text, "model_server_batch_requests_bucket", model=model, tag=tag, le="1.0")
    return total - single


def test_concurrent_burst_is_answered_correctly_and_batched(server: RunningServer) -> None:
    """diabetes:v1 serves with scikit-learn (its export was refused), so its calls run in
    the model thread and requests that arrive meanwhile join the next call; a tag serving
    its ONNX export runs each short call inline instead (docs/performance.md)."""
    _, matrix = sample("diabetes", slice(0, 256))
    want = expected("diabetes:v1", matrix)
    before = batch_requests_over_one(httpx.get(f"{server.url}/metrics").text, "diabetes")

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/v1/models/diabetes/predict", json={"instances": [row]}) for row in matrix.tolist())
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 256
    got = np.array([r.json()["predictions"][0] for r in responses])
    # Rows computed inside a larger batch may differ from the row-by-row result in the last bits of BLAS.
    np.testing.assert_allclose(got, np.array(want["predictions"]), rtol=1e-12, atol=1e-9)
    after = batch_requests_over_one(httpx.get(f"{server.url}/metrics").text, "diabetes")
    assert after - before > 0, "no model call joined more than one request"


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c["case"] for c in BAD_REQUESTS])
def test_bad_input_gets_4xx_naming_the_problem(server: RunningServer, case: dict[str, Any]) -> None:
    path = f"/v1/models/{case['model']}"
    path += f"/versions/{case['version']}/predict" if "version" in case else "/predict"
    headers = {"content-type": case.get("content_type", "application/json")}
    if "rows" in case:
        content = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]] * case["rows"]})
    elif "filler_bytes" in case:
        content = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]], "filler": "x" * case["filler_bytes"]})
    elif "nest_depth" in case:
        content = '{"instances": ' + "[" * case["nest_depth"] + "]" * case["nest_depth"] + "}"
    elif "digits" in case:
        content = '{"instances": [[' + "1" * case["digits"] + ", 3.5, 1.4, 0.2]]}"
    elif "raw" in case:
        content = case["raw"]
    else:
        content = json.dumps(case["json"])
    response = httpx.post(server.url + path, content=content, headers=headers, timeout=30)
    assert response.status_code == case["status"], response.text
    body = response.json()
    assert case["words"] in body["error"]
    if case["loc"] is not None:
        assert body["detail"][0]["loc"] == case["loc"]
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_server_is_healthy_after_the_bad_inputs(server: RunningServer) -> None:
    assert server.process.poll() is None
    _, matrix = sample("iris", slice(0, 1))
    assert predict(server, "iris", {"instances": matrix.tolist()}).status_code == 200
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("path", ["/v1/models/iris/predict", "/predict", "/v2/models/iris/infer"])
def test_a_client_that_sends_a_whole_oversized_body_first_gets_the_413(server: RunningServer, path: str) -> None:
    status, body = urllib_post(server.url + path)
    assert status == 413, body
    assert body["error"].startswith("the body has 10485760 bytes; at most 2097152 bytes are allowed")
    assert body["detail"][0]["type"] == "too_large"


def test_a_content_length_that_lies_still_gets_the_413(server: RunningServer) -> None:
    status, body = lying_post(server.url + "/v1/models/iris/predict", declared=20_000_000, sent=TEN_MB)
    assert status == 413 and "20000000 bytes" in body["error"]
    assert httpx.get(f"{server.url}/readyz").status_code == 200


@pytest.mark.parametrize("path", ["/predict", "/v2/models/iris/infer"])
def test_an_integer_of_5000_digits_is_a_400_on_the_other_json_doors(server: RunningServer, path: str) -> None:
    answer = httpx.post(
        server.url + path,
        content='{"model": "iris", "instances": [[' + "1" * 5000 + "]]}",
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid input: body: the body holds a number with too many digits"


IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
SURROGATE_MSG = "holds a lone surrogate (\\ud800), which is not Unicode text"


def _iris_binary_infer(header: str) -> tuple[bytes, dict[str, str]]:
    """An OIP infer body in Triton's binary form: `header` (JSON text) then one FP64 row."""
    head = header.encode()
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    return head + np.asarray(IRIS_ROW, dtype="<f8").tobytes(), headers


@pytest.mark.parametrize(
    ("path", "content", "loc"),
    [
        ("/v1/models/iris/predict", '{"instances": [{"sepal length (cm)\\ud800": 1}]}', ["instances", 0]),
        ("/v1/models/iris/predict", '{"instances": [[1, 2, 3, 4]], "version": "\\ud800"}', ["version"]),
        ("/predict", '{"model": "iris\\ud800", "instances": [[1, 2, 3, 4]]}', ["model"]),
        ("/predict", '{"model": "iris", "instances": [["\\ud800", 2, 3, 4]]}', ["instances", 0, 0]),
        (
            "/v2/models/iris/infer",
            '{"id": "\\ud800", "inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 4], '
            '"data": [5.1, 3.5, 1.4, 0.2]}]}',
            ["id"],
        ),
        (
            "/v2/models/iris/infer",
            '{"inputs": [{"name": "features\\ud800", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3, 4]}]}',
            ["inputs", 0, "name"],
        ),
        (
            "binary",
            '{"id": "\\ud800", "inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 4], '
            '"parameters": {"binary_data_size": 32}}]}',
            ["id"],
        ),
    ],
    ids=["v1-key", "v1-version", "predict-model", "predict-value", "v2-id", "v2-tensor-name", "v2-binary-id"],
)
def test_a_lone_surrogate_is_a_json_400_with_a_request_id_before_the_model_runs(
    server: RunningServer, path: str, content: str, loc: list[Any]
) -> None:
    def model_calls() -> float:
        return metric(httpx.get(f"{server.url}/metrics").text, "model_server_batch_rows_count", model="iris")

    before = model_calls()
    if path == "binary":
        body, headers = _iris_binary_infer(content)
        answer = httpx.post(f"{server.url}/v2/models/iris/infer", content=body, headers=headers)
    else:
        answer = httpx.post(server.url + path, content=content, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/json" and answer.headers["x-request-id"]
    assert answer.json()["detail"] == [{"loc": loc, "msg": answer.json()["detail"][0]["msg"], "type": "unicode"}]
    assert SURROGATE_MSG in answer.json()["error"]
    assert model_calls() == before
    assert "Traceback" not in server.log()


def test_the_binary_form_with_a_clean_header_still_answers(server: RunningServer) -> None:
    body, headers = _iris_binary_infer(
        '{"id": "caf\\u00e9 \\ud83d\\ude00", "inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 4], '
        '"parameters": {"binary_data_size": 32}}]}'
    )
    answer = httpx.post(f"{server.url}/v2/models/iris/infer", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == "café \U0001f600"


# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, the segments with data this socket received.
TCP_INFO_BYTES, DATA_SEGS_IN_OFFSET = 232, 152


def _answer_of(connection: socket.socket) -> tuple[int, bytes]:
    """One whole HTTP/1.1 answer (with a content-length) read from `connection`: its status and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += _more(connection, data)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += _more(connection, data + body)
    return int(head.split(b" ")[1]), body


def _more(connection: socket.socket, so_far: bytes) -> bytes:
    """The next bytes of an answer; the connection closing before it is whole fails the test."""
    chunk = connection.recv(65536)
    assert chunk, f"the server closed the connection before a whole answer: {so_far[:300]!r}"
    return chunk


def test_each_answer_comes_in_one_write_head_and_body_together(
    server: RunningServer, project_settings: ServerSettings
) -> None:
    """uvicorn writes a response's head and its body apart: two segments, two reads for the
    client. The front door's protocol sends them in one (CoalescingTransport): the client's
    socket counts one data segment per answer, on a kept-alive connection, on every HTTP door
    (the JSON API, BentoML's `predict`, OIP REST, the page's route), for a refusal, and for a
    route BentoML's app answers; each answer is whole and right."""
    row = [5.1, 3.5, 1.4, 0.2]
    want = expected("iris:v1", np.array([row]))
    tensor = {"name": "features", "datatype": "FP64", "shape": [1, 4], "data": row}
    requests: list[tuple[bytes, Any, int, Any]] = [
        (b"POST /v1/models/iris/versions/v1/predict", {"instances": [row]}, 200, want["predictions"]),
        (b"POST /predict", {"model": "iris", "version": "v1", "instances": [row]}, 200, want["predictions"]),
        (b"POST /v2/models/iris/versions/v1/infer", {"inputs": [tensor]}, 200, want["probabilities"]),
        (b"GET /v1/limits", None, 200, None),
        (b"POST /v1/models/iris/predict", {"instances": "none"}, 400, [["instances"]]),
        (b"GET /readyz", None, 200, None),
    ]
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        for count, (line, body, status, value) in enumerate(requests, start=1):
            content = b"" if body is None else json.dumps(body).encode()
            head = b"%s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            connection.sendall(head % (line, host.encode(), len(content)) + content)
            answered, answer = _answer_of(connection)
            assert answered == status, (line, answer[:300])
            if line == b"POST /v2/models/iris/versions/v1/infer":
                output = next(o for o in json.loads(answer)["outputs"] if o["name"] == "predict_proba")
                assert np.allclose(np.reshape(output["data"], output["shape"]), value)
            elif line == b"GET /v1/limits":
                assert json.loads(answer)["max_rows_per_request"] == project_settings.max_rows_per_request
            elif status == 400:
                assert [d["loc"] for d in json.loads(answer)["detail"]] == value
            elif value is not None:
                assert json.loads(answer)["predictions"] == value
            info = connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
            assert struct.unpack_from("I", info, DATA_SEGS_IN_OFFSET)[0] == count, line


def test_a_client_that_waits_for_100_continue_gets_it_then_its_answer(server: RunningServer) -> None:
    """curl and other clients send `Expect: 100-continue` and hold the body until the server
    says "100 Continue". That interim answer is a write with nothing after it in its turn of
    the event loop, which the front door's transport sends at the end of the turn."""
    body = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        head = (
            b"POST /v1/models/iris/versions/v1/predict HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nexpect: 100-continue\r\n\r\n" % (host.encode(), len(body))
        )
        connection.sendall(head)
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += connection.recv(65536)  # a timeout here: the interim answer never came
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        connection.sendall(body)
        status, answer = _answer_of(connection)
    assert status == 200
    assert json.loads(answer)["predictions"] == expected("iris:v1", np.array([[5.1, 3.5, 1.4, 0.2]]))["predictions"]


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (b"BREW /v1/models/iris/predict HTTP/1.1\r\nhost: x\r\n\r\n", "Invalid method encountered"),
        (
            b"POST /v1/models/iris/predict HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 9\r\n\r\n{}",
            "Duplicate Content-Length",
        ),
        (
            b"POST /v1/models/iris/predict HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            b"zz\r\n{}\r\n0\r\n\r\n",
            "Invalid character in chunk size",
        ),
    ],
)
def test_bytes_that_are_not_http_get_the_json_400_with_a_request_id(
    server: RunningServer, request_bytes: bytes, reason: str
) -> None:
    """What uvicorn's parser refuses never reaches the front door: the front door's protocol
    answers it with the one JSON error body (uvicorn's own answer is plain text without a
    request id), logs it, and closes the connection; the worker goes on serving."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request_bytes)
        status, answer = _answer_of(connection)
        assert connection.recv(65536) == b""  # then closed
    assert status == 400
    body = json.loads(answer)
    assert body["error"] == f"invalid input: request: is not valid HTTP/1.1: {reason}"
    assert body["detail"] == [{"loc": ["request"], "msg": f"is not valid HTTP/1.1: {reason}", "type": "http"}]
    row = [5.1, 3.5, 1.4, 0.2]
    answer = httpx.post(f"{server.url}/v1/models/iris/versions/v1/predict", json={"instances": [row]})
    assert answer.json()["predictions"] == expected("iris:v1", np.array([row]))["predictions"]


def test_a_malformed_request_has_its_request_id_header_and_access_line(server: RunningServer) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(b"BREW / HTTP/1.1\r\nhost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += _more(connection, data)
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 400 Bad Request\r\n") and "content-type: application/json" in head
    rid = re.search(r"x-request-id: (\S+)", head).group(1)  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    lines: list[dict[str, Any]] = []
    while not lines and time.monotonic() < deadline:
        time.sleep(0.1)
        lines = [json.loads(line) for line in server.log().splitlines() if rid in line and line.startswith("{")]
    assert [(e["logger"], e["status"], e["target"], e["transport"]) for e in lines] == [
        ("model_server.access", 400, "-", "http")
    ]


def test_bytes_that_are_not_http_after_a_whole_request_do_not_cut_into_its_answer(server: RunningServer) -> None:
    """A client that pipelines a request and then bytes the parser refuses gets the
    request's answer whole, and then the connection closes (no 400 in the middle of it)."""
    row = [5.1, 3.5, 1.4, 0.2]
    body = json.dumps({"instances": [row]}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        head = b"POST /v1/models/iris/versions/v1/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        connection.sendall(head + b"content-length: %d\r\n\r\n%s" % (len(body), body) + b"BREW / HTTP/1.1\r\n\r\n")
        status, answer = _answer_of(connection)
        assert connection.recv(65536) == b""  # then closed, nothing more
    assert status == 200
    assert json.loads(answer)["predictions"] == expected("iris:v1", np.array([row]))["predictions"]


HUGE = "x" * 1_900_000
CUT = f"'{'x' * 100}\u2026' (1900000 characters)"
PASSENGER = {"pclass": "1st", "sex": "female", "age": 29.0, "sibsp": 0, "parch": 0}


@pytest.mark.parametrize(
    ("path", "body", "loc", "words"),
    [
        (
            "/v1/models/titanic/predict",
            {"instances": [{**PASSENGER, "pclass": HUGE}]},
            ["instances", 0, "pclass"],
            f"{CUT} is not a category seen in training",
        ),
        (
            "/predict",
            {"model": "titanic", "instances": [{**PASSENGER, "sex": HUGE}]},
            ["instances", 0, "sex"],
            f"{CUT} is not a category seen in training",
        ),
        (
            "/predict",
            {"model": "titanic", "instances": [{**PASSENGER, HUGE: 1}]},
            ["instances", 0, "x" * 100 + "\u2026"],
            "is not a feature of this model",
        ),
        (
            "/v2/models/titanic/infer",
            {
                "inputs": [
                    {
                        "name": name,
                        "datatype": "BYTES" if name in ("pclass", "sex") else "FP64",
                        "shape": [1],
                        "data": [HUGE if name == "pclass" else value],
                    }
                    for name, value in PASSENGER.items()
                ]
            },
            ["inputs", "pclass", "data", 0],  # OIP names the tensor, and the row in its data
            f"{CUT} is not a category seen in training",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "features", "datatype": HUGE, "shape": [1, 4], "data": IRIS_ROW}]},
            ["inputs", "features", "datatype"],
            f"{CUT} is not supported",
        ),
    ],
    ids=["v1-category", "predict-category", "predict-feature-name", "v2-category", "v2-datatype"],
)
def test_an_echoed_value_is_cut_to_100_characters(
    server: RunningServer, path: str, body: dict[str, Any], loc: list[Any], words: str
) -> None:
    answer = httpx.post(server.url + path, json=body, timeout=30)
    assert answer.status_code == 400, answer.text[:500]
    assert len(answer.content) < 1500, answer.text[:500]
    error = answer.json()
    assert words in error["error"] and words in error["detail"][0]["msg"], error
    assert error["detail"][0]["loc"] == loc
