"""Metrics counted per turn of the event loop equal metrics counted per request."""

from __future__ import annotations

import asyncio
import math

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from model_server.monitoring.metrics import LATENCY_BUCKETS, Metrics, observe_all

VALUES = [0.0, 0.0005, 0.0004999, 0.00051, 0.003, 0.9, 1.0, 2.5, 7.0, math.inf, math.nan, -1.0, 0.064]


def test_observing_all_at_once_equals_one_observe_per_value() -> None:
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    first = Histogram("latency", "seconds", ["tag"], buckets=LATENCY_BUCKETS, registry=one_by_one).labels("a")
    second = Histogram("latency", "seconds", ["tag"], buckets=LATENCY_BUCKETS, registry=at_once).labels("a")
    for value in VALUES:
        first.observe(value)
    observe_all(second, VALUES)
    assert exposition(at_once) == exposition(one_by_one)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The text Prometheus scrapes, without the creation times (which differ)."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_requests_of_one_turn_are_counted_together_and_exactly() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)

    async def turn() -> float | None:
        for i in range(50):
            metrics.observe_request("m", "m:v1", "ok", 0.001 * i)
        metrics.observe_request("m", "m:v1", "invalid", None)
        # Nothing is written until the turn ends.
        labels = {"model": "m", "tag": "m:v1", "outcome": "ok"}
        before = registry.get_sample_value("model_server_requests_total", labels)
        await asyncio.sleep(0)
        return before

    assert asyncio.run(turn()) == 0
    labels = {"model": "m", "tag": "m:v1"}
    assert registry.get_sample_value("model_server_requests_total", {**labels, "outcome": "ok"}) == 50
    assert registry.get_sample_value("model_server_requests_total", {**labels, "outcome": "invalid"}) == 1
    assert registry.get_sample_value("model_server_request_seconds_count", labels) == 50
    assert registry.get_sample_value("model_server_request_seconds_sum", labels) == sum(0.001 * i for i in range(50))
    # Outside an event loop a request is counted at once.
    metrics.observe_request("m", "m:v1", "ok", 0.5)
    assert registry.get_sample_value("model_server_requests_total", {**labels, "outcome": "ok"}) == 51
