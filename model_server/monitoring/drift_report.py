"""The drift answer of a served name (GET /v1/models/{name}/drift) and the drift gauges
appended to /metrics, both read from a `DriftView` that the core describes."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_server.errors import NoDriftReference
from model_server.models.drift_reference import EPSILON, MINIMUM_ROWS, MODERATE, SIGNIFICANT, DriftReference, psi
from model_server.monitoring.drift_counts import DriftCounter, Window

TOP_FEATURES = 5


@dataclass(frozen=True)
class TagReference:
    """One served tag of a model name, and its training reference (None when it has none)."""

    name: str
    tag: str
    reference: DriftReference | None


@dataclass(frozen=True)
class DriftView:
    """What a drift answer reads: the tags asked about and the counter of their windows."""

    tags: list[TagReference]
    counter: DriftCounter


def report(name: str, view: DriftView) -> dict[str, Any]:
    """The drift answer of a served name: each tag's window, counts and PSI (the tags of
    the view: every tag that serves the name, or a pinned version's). NoDriftReference
    when no tag asked about has a reference."""
    answers, refusals = [], []
    for entry in view.tags:
        try:
            window = view.counter.window(entry.tag, entry.reference)
            assert entry.reference is not None  # else window() refused
            answers.append(tag_report(entry.tag, entry.reference, window))
        except NoDriftReference as exc:
            refusals.append(str(exc))
            answers.append({"tag": entry.tag, "reference": False, "message": str(exc)})
    if len(refusals) == len(view.tags):
        raise NoDriftReference(" ".join(dict.fromkeys(refusals)))
    return {
        "model": name,
        "routing_revision": view.counter.revision,
        "thresholds": {"moderate": MODERATE, "significant": SIGNIFICANT, "minimum_rows": MINIMUM_ROWS},
        "epsilon": EPSILON,
        "tags": answers,
    }


def tag_report(tag: str, reference: DriftReference, window: Window) -> dict[str, Any]:
    """One tag's window, its bins (expected share, count) and the PSI of each feature and
    of the predictions."""
    every = [*reference.features, reference.predictions]
    described: list[dict[str, Any]] = []
    for i, bins in enumerate(every):
        counts = window.counts[reference.offsets[i] : reference.offsets[i + 1]]
        described.append(
            {
                "name": bins.name,
                "kind": bins.kind,
                "psi": _rounded(psi(np.asarray(bins.expected), counts)),
                "bins": [
                    {"bin": label, "expected": share, "count": int(count)}
                    for label, share, count in zip(bins.labels(), bins.expected, counts, strict=True)
                ],
            }
        )
    features, predictions = described[:-1], described[-1]
    ranked = sorted((f for f in features if f["psi"] is not None), key=lambda f: -float(f["psi"]))
    return {
        "tag": tag,
        "reference": True,
        "window": {"since": window.since, "rows": window.rows, "rows_per_worker": list(window.worker_rows)},
        "reference_rows": reference.rows,
        "psi": {
            "predictions": predictions["psi"],
            "features": {f["name"]: f["psi"] for f in features},
        },
        "top_drifting": [{"feature": f["name"], "psi": f["psi"]} for f in ranked[:TOP_FEATURES]],
        "features": features,
        "predictions": predictions,
    }


def metrics_text(view: DriftView) -> str:
    """Drift gauges of every tag in the view, in Prometheus' text format, computed now from
    every worker's counts (appended to BentoML's /metrics at each scrape)."""
    if not view.counter.enabled:
        return ""
    import prometheus_client
    from prometheus_client.core import GaugeMetricFamily

    labels = ["model", "tag"]
    rows = GaugeMetricFamily("model_server_drift_rows", "Rows counted for drift in the current window.", labels=labels)
    started = GaugeMetricFamily(
        "model_server_drift_window_start_seconds",
        "When the current drift window started (the routing revision's start), seconds since the epoch.",
        labels=labels,
    )
    features = GaugeMetricFamily(
        "model_server_feature_psi",
        "PSI of each feature's live values against the training data, in the current window.",
        labels=[*labels, "feature"],
    )
    predictions = GaugeMetricFamily(
        "model_server_prediction_psi",
        "PSI of the live predictions against the predictions on the training data, in the current window.",
        labels=labels,
    )
    for entry in view.tags:
        name, tag, reference = entry.name, entry.tag, entry.reference
        if reference is None:
            continue
        window = view.counter.window(tag, reference)
        rows.add_metric([name, tag], window.rows)
        started.add_metric([name, tag], window.started_ms / 1000)
        if not window.rows:
            continue
        for i, bins in enumerate([*reference.features, reference.predictions]):
            value = psi(np.asarray(bins.expected), window.counts[reference.offsets[i] : reference.offsets[i + 1]])
            if value is None:
                continue
            if i < len(reference.features):
                features.add_metric([name, tag, bins.name], value)
            else:
                predictions.add_metric([name, tag], value)

    class Collected:
        def collect(self) -> Iterator[Any]:
            yield from (rows, started, features, predictions)

    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(Collected())  # type: ignore[arg-type]
    return prometheus_client.generate_latest(registry).decode()


def _rounded(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 6)
