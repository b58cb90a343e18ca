"""Auth, limits, request ids, logs and faults against real servers."""

from __future__ import annotations

import concurrent.futures
import json
import os
import resource
import selectors
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from model_server.local_server import RunningServer, start_server
from tests import fault_models
from tests.payloads import CONFIGURATIONS
from tests.test_http_api import expected

pytestmark = pytest.mark.integration

ROW = [5.1, 3.5, 1.4, 0.2]
KEYS = "key-one,key-two"

GUARDED_CONFIG = CONFIGURATIONS / "guarded.yaml"


def start_with(config: Path, env: dict[str, str] | None = None) -> RunningServer:
    fault_models.register()
    return start_server(config, env)


@pytest.fixture(scope="module")
def guarded(trained_default_models: list[str]) -> Iterator[RunningServer]:
    """One worker, API keys on, a 20 kB body limit, one request in flight at most,
    keep-alive connections closed after 3 requests."""
    env = {"MODEL_SERVER_API_KEYS": KEYS, "MODEL_SERVER_MAX_REQUESTS_PER_CONNECTION": "3"}
    running = start_with(GUARDED_CONFIG, env)
    try:
        yield running
    finally:
        running.stop()


def post(server: RunningServer, path: str, body: object, key: str | None = "key-one", **headers: str) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(server.url + path, json=body, headers=headers, timeout=30)


def wait_until_accepted(server: RunningServer, connections: int, timeout: float = 30) -> None:
    """Wait until the server's processes hold `connections` open client connections (each
    request of these tests comes on its own), then 0.2 s more for their requests, sent
    with the connection, to be read."""
    root = psutil.Process(server.process.pid)
    deadline = time.monotonic() + timeout
    while True:
        held = 0
        for process in [root, *root.children(recursive=True)]:
            try:
                found = process.net_connections(kind="tcp")
            except psutil.Error:
                continue
            held += sum(1 for c in found if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port)
        if held >= connections:
            time.sleep(0.2)
            return
        assert time.monotonic() < deadline, f"{held} of {connections} connections accepted in {timeout} s"
        time.sleep(0.02)


def test_keep_alive_connections_are_recycled_after_the_configured_count(guarded: RunningServer) -> None:
    headers = {"Authorization": "Bearer key-one"}
    with httpx.Client(base_url=guarded.url, headers=headers, timeout=30) as client:
        answers = [client.post("/v1/models/iris/predict", json={"instances": [ROW]}) for _ in range(7)]
    assert [a.status_code for a in answers] == [200] * 7
    assert [a.headers.get("connection") for a in answers] == [None, None, "close", None, None, "close", None]
    assert len({a.json()["predictions"][0] for a in answers}) == 1


def test_api_keys_on_http(guarded: RunningServer) -> None:
    body = {"instances": [ROW]}
    missing = post(guarded, "/v1/models/iris/predict", body, key=None)
    assert missing.status_code == 401 and missing.json()["error"].startswith("unauthorized: send 'Authorization")
    assert missing.json()["detail"] == []
    assert missing.headers["www-authenticate"] == "Bearer"
    assert post(guarded, "/v1/models/iris/predict", body, key="key-three").status_code == 401
    # A bare key, without `Bearer `, is refused on every door, with how to send it.
    bare = {"Authorization": "key-one"}
    for path, payload in [
        ("/v1/models/iris/predict", body),
        ("/predict", {"model": "iris", "instances": [ROW]}),
        ("/v2/models/iris/infer", {"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, 4], "data": ROW}]}),
    ]:
        refused = httpx.post(guarded.url + path, json=payload, headers=bare, timeout=30)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", path
        assert refused.json()["error"] == (
            "unauthorized: send 'Authorization: Bearer <key>' with a valid API key; "
            "the Authorization header must start with 'Bearer ', a bare key is not accepted"
        )
        assert post(guarded, path, payload).status_code == 200, path
    for key in ("key-one", "key-two"):  # two keys at once: rotation without downtime
        ok = post(guarded, "/v1/models/iris/predict", body, key=key)
        assert (
            ok.status_code == 200
            and ok.json()["probabilities"] == expected("iris:v1", np.array([ROW]))["probabilities"]
        )
    assert httpx.get(f"{guarded.url}/v1/models").status_code == 401
    # Health and readiness stay open; metrics too unless metrics_require_key.
    for path in ("/readyz", "/livez", "/v2/health/ready", "/metrics"):
        assert httpx.get(guarded.url + path).status_code == 200, path


def test_api_keys_on_grpc(guarded: RunningServer) -> None:
    client = triton_grpc.InferenceServerClient(guarded.grpc_target)
    assert client.is_server_live() and client.is_server_ready()  # open
    tensor = triton_grpc.InferInput("features", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.array([ROW]))
    with pytest.raises(InferenceServerException, match="unauthorized") as caught:
        client.infer("iris", [tensor])
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException, match="a bare key is not accepted") as caught:
        client.infer("iris", [tensor], headers={"authorization": "key-two"})
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    result = client.infer("iris", [tensor], headers={"authorization": "Bearer key-two"})
    assert result.as_numpy("predict_proba").tolist() == expected("iris:v1", np.array([ROW]))["probabilities"]


def test_api_keys_on_the_grpc_stream_are_checked_per_message(guarded: RunningServer) -> None:
    """The stream's key is checked for every message: without one each message gets its
    error and the stream goes on; with one, 30 pipelined messages are all answered even
    though the worker takes one request at a time (the stream waits for its slot)."""
    from tritonclient.grpc import service_pb2 as pb

    def message(i: int) -> bytes:
        request = pb.ModelInferRequest(model_name="iris", id=f"k-{i}")
        request.inputs.add(name="features", datatype="FP64", shape=[1, 4])
        request.raw_input_contents.append(np.array([ROW], dtype="<f8").tobytes())
        return request.SerializeToString()

    def stream(count: int, metadata: tuple[tuple[str, str], ...]) -> list[pb.ModelStreamInferResponse]:
        with grpc.insecure_channel(guarded.grpc_target) as channel:
            answers = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(
                iter([message(i) for i in range(count)]), metadata=metadata, timeout=30
            )
            return [pb.ModelStreamInferResponse.FromString(a) for a in answers]

    for metadata in [(), (("authorization", "key-one"),), (("authorization", "Bearer key-three"),)]:
        refused = stream(3, metadata)
        assert sorted(a.infer_response.id for a in refused) == ["k-0", "k-1", "k-2"]
        for answer in refused:
            assert answer.error_message.startswith("unauthorized: send 'Authorization: Bearer <key>'")
            assert answer.infer_response.parameters["error_code"].string_param == "UNAUTHENTICATED"
    answered = stream(30, (("authorization", "Bearer key-two"),))
    assert [a.error_message for a in answered if a.error_message] == []
    assert sorted(a.infer_response.id for a in answered) == sorted(f"k-{i}" for i in range(30))
    proba = np.frombuffer(answered[0].infer_response.raw_output_contents[1], dtype="<f8")
    assert proba.tolist() == expected("iris:v1", np.array([ROW]))["probabilities"][0]


def test_body_over_the_limit_is_413_and_resource_exhausted(guarded: RunningServer) -> None:
    big = {"instances": [ROW] * 1500}  # about 27 kB of compact JSON
    response = post(guarded, "/v1/models/iris/predict", big)
    assert response.status_code == 413
    assert "at most 20000 bytes are allowed" in response.json()["error"]
    request = triton_grpc.service_pb2.ModelInferRequest(model_name="iris")
    request.inputs.add(name="features", datatype="FP64", shape=[1000, 4])
    request.raw_input_contents.append(np.zeros((1000, 4)).tobytes())  # 32 kB
    with grpc.insecure_channel(guarded.grpc_target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            call(request.SerializeToString(), metadata=(("authorization", "Bearer key-one"),), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_overload_is_refused_at_once_with_retry_after(guarded: RunningServer) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(post, guarded, "/v1/models/iris_slow/predict", {"instances": [ROW]})
        wait_until_accepted(guarded, 1)  # the slow model takes 2 s per call: it holds the only slot now
        refused = post(guarded, "/v1/models/iris/predict", {"instances": [ROW]})
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert "limit of 1 requests in flight" in refused.json()["error"]
        assert not slow.done()  # refused at once, not queued behind the slow request
        assert slow.result().status_code == 200  # the accepted request is not lost
    assert post(guarded, "/v1/models/iris/predict", {"instances": [ROW]}).status_code == 200


def test_model_failure_is_500_with_request_id_and_logged(guarded: RunningServer) -> None:
    response = post(guarded, "/v1/models/iris_broken/predict", {"instances": [ROW]}, **{"X-Request-ID": "trace-me-1"})
    assert response.status_code == 500
    assert response.json()["request_id"] == "trace-me-1" == response.headers["x-request-id"]
    assert "this model always fails" not in response.text  # no internals to the caller
    assert post(guarded, "/v1/models/iris/predict", {"instances": [ROW]}).status_code == 200

    def logged() -> bool:
        log = guarded.log()
        return "this model always fails" in log and "Traceback" in log and "trace-me-1" in log

    deadline = time.monotonic() + 10
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert logged()


def test_access_log_is_json_without_input_values(guarded: RunningServer) -> None:
    post(guarded, "/v1/models/iris/predict", {"instances": [[6.123456, 3.5, 1.4, 0.2]]}, **{"X-Request-ID": "log-me-7"})

    def logged() -> list[dict[str, Any]]:
        return [json.loads(line) for line in guarded.log().splitlines() if line.startswith("{") and "log-me-7" in line]

    deadline = time.monotonic() + 10
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = logged()
    assert lines, "no access log line for the request"
    entry = lines[-1]
    assert entry["logger"] == "model_server.access" and entry["status"] == 200 and entry["tag"] == "iris:v1"
    assert entry["target"] == "POST /v1/models/iris/predict" and entry["latency_ms"] > 0
    assert "6.123456" not in guarded.log()


FAULT_CONFIG = CONFIGURATIONS / "two_workers_with_a_slow_model.yaml"


def workers(server: RunningServer) -> list[psutil.Process]:
    """The live worker processes (a killed one is a zombie until reaped)."""
    found = []
    for process in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE and "_bentoml_impl.worker" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def slow_model_server(trained_default_models: list[str]) -> Iterator[RunningServer]:
    """Two workers and a slow model. The worker test below runs on it first, then the
    SIGTERM test ends it; should that test not run, the server is stopped here."""
    server = start_with(FAULT_CONFIG)
    try:
        yield server
    finally:
        server.stop()


def test_killed_worker_is_replaced(slow_model_server: RunningServer) -> None:
    server = slow_model_server
    before = workers(server)
    assert len(before) == 2
    os.kill(before[0].pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    replaced = False
    while time.monotonic() < deadline and not replaced:
        now = workers(server)
        replaced = len(now) == 2 and before[0].pid not in {p.pid for p in now}
        time.sleep(0.2)
    assert replaced, "the killed worker was not replaced"
    answers = [post(server, "/v1/models/iris/predict", {"instances": [ROW]}, key=None).status_code for _ in range(20)]
    assert answers == [200] * 20


def test_sigterm_drains_in_flight_requests(slow_model_server: RunningServer) -> None:
    server = slow_model_server
    assert server.process.poll() is None and len(workers(server)) == 2
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        in_flight = [
            pool.submit(post, server, "/v1/models/iris_slow/predict", {"instances": [ROW]}, None) for _ in range(4)
        ]
        wait_until_accepted(server, 4)  # the slow model takes 2 s: these are in flight now
        os.killpg(server.process.pid, signal.SIGTERM)
        answers = [f.result(timeout=60) for f in in_flight]
    assert [a.status_code for a in answers] == [200] * 4
    assert all(a.json()["tag"] == "iris:slow" for a in answers)
    assert server.process.wait(timeout=60) is not None


def test_grpc_listens_on_the_http_host_by_default(server: RunningServer) -> None:
    """The test servers set no grpc_host and serve HTTP on 127.0.0.1: gRPC follows it."""
    root = psutil.Process(server.process.pid)
    listening = [
        conn.laddr
        for process in [root, *root.children(recursive=True)]
        for conn in process.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == server.grpc_port
    ]
    # gRPC binds dual-stack sockets: 127.0.0.1 shows as its IPv4-mapped form, still loopback only.
    assert listening and {address.ip.removeprefix("::ffff:") for address in listening} == {"127.0.0.1"}
    assert "MODEL_SERVER_GRPC_HOST" not in open(f"/proc/{server.process.pid}/environ").read()


SLOW_CLIENT_CONFIG = CONFIGURATIONS / "short_client_timeouts.yaml"
SLOW_CLIENTS = 1000
PREDICT_HEAD = (
    b"POST /v1/models/iris/predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    b"X-Request-ID: %s\r\nContent-Length: 100\r\n\r\n"
)


def _at_least_open_files(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < count:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(count, hard), hard))


def _answers(sockets: dict[socket.socket, str], timeout: float) -> dict[str, tuple[float, bytes]]:
    """Everything each socket receives until the server closes it, and when it closed."""
    received: dict[socket.socket, bytearray] = {sock: bytearray() for sock in sockets}
    closed: dict[str, tuple[float, bytes]] = {}
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while len(closed) < len(sockets) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except ConnectionError:
                    data = b""
                if data:
                    received[sock] += data
                else:
                    selector.unregister(sock)
                    closed[sockets[sock]] = (time.monotonic(), bytes(received[sock]))
    return closed


def _status_and_body(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_slow_bodies_and_headers_time_out_without_taking_slots_from_others(trained_default_models: list[str]) -> None:
    """1,000 bodies that promise 100 bytes and send 1 hold no concurrency slot (64 per
    worker here): 16 normal clients meanwhile get no error; each slow one gets a 408
    after body_idle_timeout_s, a body that trickles one after body_timeout_s, unfinished
    headers one after header_timeout_s; a client that leaves mid-body is never answered
    from its truncated body."""
    _at_least_open_files(SLOW_CLIENTS + 512)  # the server inherits the limit too
    server = start_with(SLOW_CLIENT_CONFIG)
    opened: list[socket.socket] = []

    def connect() -> socket.socket:
        opened.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        return opened[-1]

    def normal_client(until: float) -> list[tuple[int, float]]:
        results = []
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while time.monotonic() < until:
                started = time.perf_counter()
                answer = client.post("/v1/models/iris/predict", json={"instances": [ROW]})
                results.append((answer.status_code, time.perf_counter() - started))
        return results

    def trickle(sock: socket.socket, until: float) -> None:
        while time.monotonic() < until:  # a byte a second: within the idle limit, past the total
            sock.sendall(b" ")
            time.sleep(1)

    try:
        slow, sent_at = {}, {}
        for i in range(SLOW_CLIENTS):
            sock = connect()
            sock.sendall(PREDICT_HEAD % f"slow-{i}".encode() + b"{")
            slow[sock], sent_at[f"slow-{i}"] = f"slow-{i}", time.monotonic()
        special = {connect(): name for name in ("trickle", "headers", "silent")}
        by_name = {name: sock for sock, name in special.items()}
        by_name["trickle"].sendall(PREDICT_HEAD % b"trickle")
        by_name["headers"].sendall(b"POST /v1/models/iris/predict HTTP/1.1\r\nHost: test\r\n")
        cut = connect()
        cut.sendall(PREDICT_HEAD % b"cut-body" + json.dumps({"instances": [ROW]}).encode())
        cut.close()  # leaves after a body that is valid JSON but shorter than it promised
        now = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(17) as pool:
            runs = [pool.submit(normal_client, now + 3) for _ in range(16)]
            pool.submit(trickle, by_name["trickle"], now + 7.5)
            answers = _answers(slow, timeout=60)
            results = [result for run in runs for result in run.result()]
        answers.update(_answers(special, timeout=30))
    finally:
        for sock in opened:
            sock.close()
        server.stop()

    statuses = [status for status, _ in results]
    latencies = sorted(latency for _, latency in results)
    p50, p99 = latencies[len(latencies) // 2], latencies[int(0.99 * (len(latencies) - 1))]
    print(f"normal clients: {len(results)} requests, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    # Every normal client was served, again and again, while the slow ones held their connections.
    assert min(len(run.result()) for run in runs) >= 2 and statuses == [200] * len(results)
    assert p99 < 5  # generous: the point is no error, not a timing

    assert len(answers) == SLOW_CLIENTS + 3
    waited = []
    for name, started in sent_at.items():
        closed_at, raw = answers[name]
        status, headers, body = _status_and_body(raw)
        assert status == 408 and headers["connection"] == "close" and headers["x-request-id"] == name
        assert body["request_id"] == name
        assert body["detail"] == [{"loc": ["body"], "msg": body["error"], "type": "timeout"}]
        assert "paused for more than 4 s (body_idle_timeout_s)" in str(body["error"])
        waited.append(closed_at - started)
    print(f"slow clients answered 408 after {min(waited):.2f}-{max(waited):.2f} s")
    assert 3.5 < min(waited) and max(waited) < 40
    status, _, body = _status_and_body(answers["trickle"][1])
    assert status == 408 and "did not arrive in full within 8 s (body_timeout_s)" in str(body["error"])
    status, headers, body = _status_and_body(answers["headers"][1])
    assert status == 408 and body["detail"] == [{"loc": ["headers"], "msg": body["error"], "type": "timeout"}]
    assert "within 4 s (header_timeout_s)" in str(body["error"]) and body["request_id"] == headers["x-request-id"]
    assert answers["silent"][1] == b""  # a connection that sent nothing is closed without a word
    # The truncated body never reached the model: its access line says the client left (499).
    logged = [json.loads(line) for line in server.log().splitlines() if '"cut-body"' in line and line.startswith("{")]
    assert [(entry["status"], entry["tag"]) for entry in logged] == [(499, None)]
