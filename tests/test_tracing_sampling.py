"""Which requests a worker traces, decided before OpenTelemetry is asked: the caller's
sampled flag when it sends a valid traceparent, else a draw at the configured ratio."""

from __future__ import annotations

import random
import time

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from model_server.monitoring.tracing import Tracing

TRACE_ID, SPAN_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def traced(ratio: float | None, traceparent: str | None, requests: int = 1) -> tuple[int, InMemorySpanExporter]:
    """How many of `requests` a worker configured with `ratio` traces; its spans."""
    exporter = InMemorySpanExporter()
    tracing = Tracing()
    tracing.configure(True, ratio, "replica-1", exporter=exporter)
    count = 0
    for _ in range(requests):
        trace = tracing.begin("http", "/v1/models/iris/predict", traceparent, time.perf_counter())
        if trace is not None:
            count += 1
            tracing.end(trace, "request-1", 200)
    tracing.shutdown()
    return count, exporter


def test_without_traceparent_the_ratio_decides_each_request() -> None:
    random.seed(7)
    count, _ = traced(0.25, None, 8000)
    assert abs(count - 2000) < 4 * (8000 * 0.25 * 0.75) ** 0.5  # within four standard deviations
    assert traced(0.0, None, 500)[0] == 0
    assert traced(1.0, None, 50)[0] == 50


def test_a_callers_sampled_flag_decides_whatever_the_ratio() -> None:
    sampled, unsampled = f"00-{TRACE_ID}-{SPAN_ID}-01", f"00-{TRACE_ID}-{SPAN_ID}-00"
    count, exporter = traced(0.0, sampled, 3)
    assert count == 3
    edges = [s for s in exporter.get_finished_spans() if s.name == "edge"]
    assert len(edges) == 3
    assert {f"{s.context.trace_id:032x}" for s in edges} == {TRACE_ID}
    assert {f"{s.parent.span_id:016x}" for s in edges if s.parent is not None} == {SPAN_ID}
    assert traced(1.0, unsampled, 20)[0] == 0


@pytest.mark.parametrize(
    "traceparent",
    ["garbage", f"00-{'0' * 32}-{SPAN_ID}-01", f"00-{TRACE_ID}-{'0' * 16}-01", f"00-{TRACE_ID}-{SPAN_ID}-0x"],
)
def test_an_invalid_traceparent_is_a_root_under_the_ratio(traceparent: str) -> None:
    assert traced(0.0, traceparent, 200)[0] == 0
    count, exporter = traced(1.0, traceparent, 2)
    assert count == 2
    assert all(s.parent is None for s in exporter.get_finished_spans() if s.name == "edge")
