"""Tracing against a real server: a test OTLP/HTTP receiver decodes the real OTLP protobuf
that OpenTelemetry's exporter sends, and gets one trace per sampled request, parented to
the caller's W3C traceparent, over HTTP and gRPC, with the edge, decode, validation,
queue wait, model call and encode spans."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from tritonclient.grpc import service_pb2

from model_server.local_server import ONE_WORKER, RunningServer, start_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ROW = [5.1, 3.5, 1.4, 0.2]
SPANS = {"edge", "decode", "validation", "queue wait", "model call", "encode"}
REPLICA = "traced-replica"


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent: str
    name: str
    attributes: dict[str, Any]
    start: int
    end: int


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP collector stand-in: POST /v1/traces with ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def traces(self, trace_id: str, timeout: float = 20, count: int = len(SPANS)) -> list[Span]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [s for s in self.spans if s.trace_id == trace_id]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        assert self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        spans = []
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    resource_attributes = {a.key: _value(a.value) for a in resource.resource.attributes}
                    spans.append(
                        Span(
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.name,
                            {**attributes, "resource": resource_attributes},
                            span.start_time_unix_nano,
                            span.end_time_unix_nano,
                        )
                    )
        with self.server.lock:
            self.server.spans.extend(spans)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def traced_server(trained_default_models: list[str], receiver: Receiver) -> Iterator[RunningServer]:
    env = {
        "MODEL_SERVER_TRACING": "true",
        "MODEL_SERVER_REPLICA_NAME": REPLICA,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "model-server-under-test",
    }
    assert "OTEL_TRACES_SAMPLER" not in os.environ
    running = start_server(ROOT / "configuration.yaml", {**env, **ONE_WORKER})
    try:
        yield running
    finally:
        running.stop()


def _traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def _check_trace(spans: list[Span], parent: str, tag: str, transport: str) -> None:
    assert sorted(s.name for s in spans) == sorted(SPANS), [s.name for s in spans]
    [edge] = [s for s in spans if s.name == "edge"]
    assert edge.parent == parent and edge.attributes["transport"] == transport
    assert edge.attributes["status"] == 200 and edge.attributes["resource"]["service.name"] == "model-server-under-test"
    children = [s for s in spans if s.name != "edge"]
    assert {s.parent for s in children} == {edge.span_id}
    assert all(edge.start <= s.start <= s.end <= edge.end for s in children)
    [call] = [s for s in spans if s.name == "model call"]
    assert call.attributes["model"] == "iris" and call.attributes["tag"] == tag
    assert call.attributes["runtime"] in ("sklearn", "onnx") and call.attributes["batch_size"] >= 1
    assert call.attributes["replica"] == REPLICA
    ordered = [next(s for s in spans if s.name == n) for n in ("decode", "validation", "queue wait", "model call")]
    assert [s.start for s in ordered] == sorted(s.start for s in ordered)


def test_http_requests_are_traced_under_the_callers_traceparent(
    traced_server: RunningServer, receiver: Receiver
) -> None:
    for _ in range(3):
        header, trace_id, span_id = _traceparent()
        response = httpx.post(
            f"{traced_server.url}/v1/models/iris/predict", json={"instances": [ROW]}, headers={"traceparent": header}
        )
        assert response.status_code == 200
        spans = receiver.traces(trace_id)
        _check_trace(spans, span_id, response.headers["x-model-tag"], "http")


def test_grpc_calls_are_traced_under_the_callers_traceparent(traced_server: RunningServer, receiver: Receiver) -> None:
    header, trace_id, span_id = _traceparent()
    request = service_pb2.ModelInferRequest(model_name="iris")
    request.inputs.add(name="features", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend(ROW)
    with grpc.insecure_channel(traced_server.grpc_target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        raw = call(request.SerializeToString(), timeout=10, metadata=[("traceparent", header)])
    answer = service_pb2.ModelInferResponse.FromString(raw)
    spans = receiver.traces(trace_id)
    _check_trace(spans, span_id, f"iris:{answer.model_version}", "grpc")


def test_an_unsampled_caller_gets_no_trace_and_one_without_traceparent_a_root(
    traced_server: RunningServer, receiver: Receiver
) -> None:
    header, unsampled, _ = _traceparent(sampled=False)
    assert httpx.post(
        f"{traced_server.url}/v1/models/iris/predict", json={"instances": [ROW]}, headers={"traceparent": header}
    ).is_success
    before = {s.trace_id for s in receiver.spans}
    response = httpx.post(f"{traced_server.url}/v1/models/iris/predict", json={"instances": [ROW]})
    assert response.status_code == 200
    deadline = time.monotonic() + 20
    while not (roots := [s for s in receiver.spans if s.name == "edge" and not s.parent and s.trace_id not in before]):
        assert time.monotonic() < deadline, "no trace for a request without traceparent"
        time.sleep(0.1)
    _check_trace(receiver.traces(roots[0].trace_id), "", response.headers["x-model-tag"], "http")
    assert receiver.traces(unsampled, timeout=0) == []
