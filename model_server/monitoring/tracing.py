"""Tracing with OpenTelemetry: one trace per sampled request, exported over OTLP/HTTP.

Off by default (`tracing: false`), and then a request pays one attribute check where a
trace would begin (`TRACING.on`, at the edge) and one in the core. On, each request is
sampled when it begins (`tracing_sample_ratio`, else the standard OTEL_TRACES_SAMPLER
variables), parented to the caller's W3C `traceparent` (HTTP header or gRPC metadata),
and only a sampled request records anything: a few clock readings on its way through
the edge and the core. When it is answered, its spans are made from those readings:

  edge             the whole request at the edge (SERVER span; transport, target, status)
    decode         from the handler's start to the core's call (the door decodes)
    validation     the core resolves the tag and checks the input against its schema
    queue wait     from the batcher's queue to the start of the model call
    model call     the batch's model call: model, tag, runtime, batch size, replica
    encode         from the core's answer to the door's answer

The exporter is OpenTelemetry's OTLP/HTTP exporter, configured by the standard variables
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, _HEADERS, _TIMEOUT,
OTEL_SERVICE_NAME, OTEL_BSP_*); spans leave in batches from a thread of the SDK.
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# A W3C traceparent: version, trace id, parent span id, flags (bit 0: sampled).
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16

# perf_counter() readings become Unix nanoseconds with one offset taken at start-up.
_EPOCH_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def _ns(perf: float) -> int:
    return int(perf * 1e9) + _EPOCH_OFFSET_NS


@dataclass
class RequestTrace:
    """The clock readings of one sampled request (perf_counter seconds); 0.0: not reached."""

    transport: str
    target: str
    started: float
    span: Any  # the edge span (opentelemetry.trace.Span)
    handler_started: float = 0.0
    infer_started: float = 0.0
    validated: float = 0.0
    infer_ended: float = 0.0
    call: tuple[float, float, int] | None = None  # the model call: start, end, requests in its batch
    attributes: dict[str, Any] = field(default_factory=dict)  # model, tag, runtime


CURRENT: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar("model_server_trace", default=None)


class Tracing:
    """This worker's tracer; `on` is the one check the request path makes when it is off."""

    def __init__(self) -> None:
        self.on = False
        self.replica = ""
        self._tracer: Any = None
        self._provider: Any = None
        self._root_ratio: float | None = None  # the share of requests without a parent traced

    def configure(self, enabled: bool, sample_ratio: float | None, replica: str, exporter: Any = None) -> None:
        """Turn tracing on in this worker (call it in the worker, not before the fork: the
        SDK exports from a thread). `exporter` replaces the OTLP exporter (tests)."""
        if not enabled:
            self.on = False
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        # With a ratio, `begin` draws which requests without a parent are traced before
        # OpenTelemetry is asked, so that the others cost one random number; the SDK then
        # samples what it is given (ParentBased(ALWAYS_ON)), and a caller's flag still rules.
        self._root_ratio = sample_ratio
        sampler = None if sample_ratio is None else ParentBased(ALWAYS_ON)
        # The service's name unless OTEL_SERVICE_NAME gives one; OTEL_RESOURCE_ATTRIBUTES adds others.
        names = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "tabular-model-server"}
        resource = Resource.create({**names, "service.instance.id": replica})
        provider = TracerProvider(resource=resource, sampler=sampler)  # None: OTEL_TRACES_SAMPLER(_ARG)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        self._provider = provider
        self._tracer = provider.get_tracer("model_server")
        self.replica = replica
        self.on = True

    def shutdown(self) -> None:
        """Export what is left (at the worker's shutdown)."""
        if self._provider is not None:
            self._provider.shutdown()
        self.on = False

    def begin(self, transport: str, target: str, traceparent: str | None, started: float) -> RequestTrace | None:
        """Start a request's trace, parented to the caller's `traceparent`; None when it is
        not sampled. The trace is the current one of this task (CURRENT) until `end`."""
        found = _TRACEPARENT.fullmatch(traceparent) if traceparent else None
        if found is not None and (found[1] == _ZERO_TRACE or found[2] == _ZERO_SPAN):
            found = None  # an invalid parent: the request is a root
        if self._root_ratio is not None:  # else OTEL_TRACES_SAMPLER decides, in start_span
            if found is not None and not int(found[3], 16) & 1:
                return None  # the caller did not sample it (ParentBased)
            if found is None and random.random() >= self._root_ratio:
                return None
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent}) if found is not None else None
        span = self._tracer.start_span(
            "edge",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=_ns(started),
            attributes={"transport": transport, "target": target},
        )
        if not span.is_recording():
            return None
        trace = RequestTrace(transport, target, started, span)
        CURRENT.set(trace)
        return trace

    def end(self, trace: RequestTrace, request_id: str, status: int) -> None:
        """Make the request's spans from its readings and end them (exported later)."""
        from opentelemetry import trace as api
        from opentelemetry.trace import Status, StatusCode

        CURRENT.set(None)
        ended = time.perf_counter()
        context = api.set_span_in_context(trace.span)

        def child(name: str, start: float, end: float, attributes: dict[str, Any] | None = None) -> None:
            if start and end and end >= start:
                span = self._tracer.start_span(name, context=context, start_time=_ns(start), attributes=attributes)
                span.end(end_time=_ns(end))

        handler = trace.handler_started or trace.started
        child("decode", handler, trace.infer_started)
        child("validation", trace.infer_started, trace.validated, trace.attributes or None)
        if trace.call is not None:
            call_start, call_end, batch = trace.call
            child("queue wait", trace.validated, call_start)
            child(
                "model call",
                call_start,
                call_end,
                {**trace.attributes, "batch_size": batch, "replica": self.replica},
            )
        child("encode", trace.infer_ended, ended)
        span = trace.span
        span.set_attribute("request_id", request_id)
        span.set_attribute("status", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=_ns(ended))


# This worker's tracing (configured by service.py in each worker).
TRACING = Tracing()
