"""Prometheus metrics of the model server, served on BentoML's own /metrics.

prometheus_client is imported only when `Metrics` is built (in the worker, after
BentoML has set PROMETHEUS_MULTIPROC_DIR); importing it earlier would put it in
single-process mode and the metrics would never reach /metrics.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence
from typing import Any

# Rows per model call: powers of two up to the largest batch we allow.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DIFFERENCE_BUCKETS = (0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 50, 100, 200)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.5)


class Metrics:
    """Counters and histograms labelled by model name and tag.

    Labelled children are looked up once per label set and kept: `labels()` costs a
    lock and several allocations, which on a one-row request is not negligible. In the
    server (Prometheus' multiprocess mode) every increment is a locked write to a shared
    file, so what the requests of one turn of the event loop count is written together
    at its end: one write per counter and histogram bucket touched, not several per
    request. Outside the event loop's thread a write is made at once.
    """

    def __init__(self, registry: Any = None) -> None:
        import prometheus_client as prom

        self._children: dict[tuple[Any, ...], Any] = {}
        # Writes of this turn of the event loop, made at its end: counter -> amount, histogram -> values.
        self._counts: dict[Any, float] = {}
        self._observations: dict[Any, list[float]] = {}
        self._flush_scheduled = False

        registry = registry if registry is not None else prom.CollectorRegistry()
        labels = ("model", "tag")
        self.requests = prom.Counter(
            "model_server_requests",
            "Prediction requests by model, tag and outcome.",
            (*labels, "outcome"),
            registry=registry,
        )
        self.latency = prom.Histogram(
            "model_server_request_seconds",
            "Time from validated input to model output.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_rows = prom.Histogram(
            "model_server_batch_rows",
            "Rows per model call (the batcher's batch size).",
            labels,
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_requests = prom.Histogram(
            "model_server_batch_requests",
            "Requests joined into one model call.",
            labels,
            buckets=BATCH_BUCKETS,
            registry=registry,
        )

        self.predicted_classes = prom.Counter(
            "model_server_predicted_classes",
            "Rows predicted as each class, by model and tag.",
            (*labels, "class"),
            registry=registry,
        )
        self.shadow_comparisons = prom.Counter(
            "model_server_shadow_comparisons",
            "Rows compared between the live tag and the shadow tag; outcome agree, disagree "
            "(classes), compared (regression), error or dropped (requests).",
            ("model", "tag", "shadow_tag", "outcome"),
            registry=registry,
        )
        self.shadow_abs_difference = prom.Histogram(
            "model_server_shadow_abs_difference",
            "Absolute difference between live and shadow predictions of regression models.",
            ("model", "tag", "shadow_tag"),
            buckets=DIFFERENCE_BUCKETS,
            registry=registry,
        )

        # One series per live worker process (prometheus_client's multiprocess mode adds a
        # `pid` label): workers that disagree show as different values.
        self.routing_revision = prom.Gauge(
            "model_server_routing_revision",
            "The routing revision this worker serves (grows by one with each change).",
            registry=registry,
            multiprocess_mode="liveall",
        )

        self.model_runtime = prom.Gauge(
            "model_server_model_runtime",
            "1 for the runtime (sklearn or onnx) each served tag predicts with.",
            ("model", "tag", "runtime"),
            registry=registry,
            multiprocess_mode="liveall",
        )
        self._runtimes: dict[str, tuple[str, str]] = {}

        self.cache_rows = prom.Counter(
            "model_server_prediction_cache_rows",
            "Rows looked up in the prediction cache, by outcome (hit or miss).",
            (*labels, "outcome"),
            registry=registry,
        )
        self.cache_evictions = prom.Counter(
            "model_server_prediction_cache_evictions",
            "Rows evicted from the prediction cache to stay within its entries and bytes.",
            labels,
            registry=registry,
        )

        self.feedback_items = prom.Counter(
            "model_server_feedback_items",
            "Feedback items by model and result (accepted, duplicate, invalid_id, invalid_truth, expired, "
            "outside_window).",
            ("model", "result"),
            registry=registry,
        )
        self.inference_log_rows = prom.Counter(
            "model_server_inference_log_rows",
            "Rows of the inference log by outcome: written, dropped (the queue was full, or writing failed), "
            "removed (old files deleted to stay under max_bytes).",
            ("outcome",),
            registry=registry,
        )

    def observe_feedback(self, name: str, counts: dict[str, int]) -> None:
        for result, count in counts.items():
            if count:
                self._child(self.feedback_items, name, result).inc(count)

    def observe_inference_log(self, outcome: str, rows: int) -> None:
        self._child(self.inference_log_rows, outcome).inc(rows)

    def set_routing_revision(self, revision: int) -> None:
        self.routing_revision.set(revision)

    def set_runtimes(self, runtimes: dict[str, tuple[str, str]]) -> None:
        """Which runtime each served tag predicts with: tag -> (model name, runtime)."""
        for tag, (name, runtime) in self._runtimes.items():
            if runtimes.get(tag) != (name, runtime):
                self.model_runtime.labels(name, tag, runtime).set(0)
        for tag, (name, runtime) in runtimes.items():
            self.model_runtime.labels(name, tag, runtime).set(1)
        self._runtimes = dict(runtimes)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_classes(self, name: str, tag: str, counts: dict[str, int]) -> None:
        for label, count in counts.items():
            self._inc(self._child(self.predicted_classes, name, tag, label), count)

    def observe_shadow(self, name: str, tag: str, shadow: str, outcome: str, count: int = 1) -> None:
        if count:
            self._inc(self._child(self.shadow_comparisons, name, tag, shadow, outcome), count)

    def observe_shadow_differences(self, name: str, tag: str, shadow: str, differences: Sequence[float]) -> None:
        self._inc(self._child(self.shadow_comparisons, name, tag, shadow, "compared"), len(differences))
        histogram = self._child(self.shadow_abs_difference, name, tag, shadow)
        for difference in differences:
            self._observe(histogram, difference)

    def observe_cache(self, name: str, tag: str, hits: int, misses: int, evicted: int) -> None:
        if hits:
            self._inc(self._child(self.cache_rows, name, tag, "hit"), hits)
        if misses:
            self._inc(self._child(self.cache_rows, name, tag, "miss"), misses)
        if evicted:
            self._inc(self._child(self.cache_evictions, name, tag), evicted)

    def observe_batch(self, name: str, tag: str, rows: int, requests: int) -> None:
        self._observe(self._child(self.batch_rows, name, tag), rows)
        self._observe(self._child(self.batch_requests, name, tag), requests)

    def observe_request(self, name: str, tag: str, outcome: str, seconds: float | None) -> None:
        self._inc(self._child(self.requests, name, tag, outcome))
        if seconds is not None:
            self._observe(self._child(self.latency, name, tag), seconds)

    def flush(self) -> None:
        """Write what this turn of the event loop counted (the loop calls this at its end)."""
        self._flush_scheduled = False
        counts, self._counts = self._counts, {}
        observations, self._observations = self._observations, {}
        for counter, amount in counts.items():
            counter.inc(amount)
        for histogram, values in observations.items():
            observe_all(histogram, values)

    def _inc(self, counter: Any, amount: float = 1) -> None:
        if not self._buffered():
            counter.inc(amount)
            return
        self._counts[counter] = self._counts.get(counter, 0) + amount

    def _observe(self, histogram: Any, value: float) -> None:
        if not self._buffered():
            histogram.observe(value)
            return
        values = self._observations.get(histogram)
        if values is None:
            self._observations[histogram] = [value]
        else:
            values.append(value)

    def _buffered(self) -> bool:
        """Whether a write waits for the end of this turn: in the event loop's thread, yes
        (the first one of the turn asks the loop to flush at its end); elsewhere, no."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if not self._flush_scheduled:
            loop.call_soon(self.flush)
            self._flush_scheduled = True
        return True


def observe_all(histogram: Any, values: Sequence[float]) -> None:
    """`histogram.observe` for each value, with one write per bucket touched and one for
    the sum (prometheus_client 0.2x's Histogram keeps `_upper_bounds`, `_buckets`, `_sum`;
    `tests/test_metrics.py` checks that the exposition equals one observe per value)."""
    if len(values) == 1 or not hasattr(histogram, "_upper_bounds"):
        for value in values:
            histogram.observe(value)
        return
    bounds = histogram._upper_bounds
    counts: dict[int, int] = {}
    for value in values:
        if value == value:  # NaN falls in no bucket, as with observe
            index = bisect.bisect_left(bounds, value)
            counts[index] = counts.get(index, 0) + 1
    histogram._sum.inc(sum(values))
    for index, count in counts.items():
        histogram._buckets[index].inc(count)
