"""The outcomes answer of a served name (GET /v1/models/{name}/outcomes), the guard of a
promotion, and the live quality gauges appended to /metrics, all read from an
`OutcomeView` that the core describes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from model_server.monitoring import quality
from model_server.monitoring.outcomes import OutcomeStore


@dataclass(frozen=True)
class TagOutcomes:
    """One tag of a served name: its classes (empty for a regressor) and held-out metrics."""

    name: str
    tag: str
    classes: tuple[str, ...]
    heldout: dict[str, float]


@dataclass(frozen=True)
class OutcomeView:
    """What an outcomes answer reads: the tags asked about (variants first) and the store."""

    tags: list[TagOutcomes]
    store: OutcomeStore
    variants: int  # how many of `tags` are the name's variants (verdicts compare them)


def report(name: str, view: OutcomeView, verdicts: bool = True) -> dict[str, Any]:
    """Each tag's live quality beside its held-out metrics and, for each pair of the
    name's variants, the verdict on each metric."""
    records = {entry.tag: view.store.read(entry.tag) for entry in view.tags}
    tags = []
    for entry in view.tags:
        rows, workers = records[entry.tag]
        tags.append(
            {
                "tag": entry.tag,
                "heldout": entry.heldout,
                "live": quality.live_quality(rows, entry.classes),
                "outcomes_per_worker": list(workers),
            }
        )
    answer: dict[str, Any] = {
        "model": name,
        "routing_revision": view.store.revision,
        "window": view.store.window_key,
        "level": quality.LEVEL,
        "tags": tags,
    }
    if verdicts:
        answer["verdicts"] = [
            verdict(view, a.tag, b.tag, metric, records=records)
            for a, b in itertools.combinations(view.tags[: view.variants], 2)
            for metric in quality.metrics_of(a.classes)
        ]
    return answer


def verdict(
    view: OutcomeView,
    a: str,
    b: str,
    metric: str,
    margin: float | None = None,
    records: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The verdict of tag `b` against tag `a` on `metric`."""
    records = records or {tag: view.store.read(tag) for tag in (a, b)}
    return quality.compare(
        quality.Arm.of(a, records[a][0], metric), quality.Arm.of(b, records[b][0], metric), metric, margin
    )


def primary_metric(classes: tuple[str, ...]) -> str:
    """What a promotion is guarded on: accuracy for a classifier, mean absolute error for a regressor."""
    return "accuracy" if classes else "mae"


def metrics_text(views: list[OutcomeView]) -> str:
    """Live quality gauges of every tag in the views, in Prometheus' text format, computed
    now from every worker's outcomes (appended to BentoML's /metrics at each scrape)."""
    import prometheus_client
    from prometheus_client.core import GaugeMetricFamily

    labels = ["model", "tag"]
    outcomes = GaugeMetricFamily(
        "model_server_outcomes", "Outcomes fed back in the current routing window.", labels=labels
    )
    live = GaugeMetricFamily(
        "model_server_live_quality",
        "Live quality in the current routing window (metric: accuracy, log_loss, brier, mae, rmse).",
        labels=[*labels, "metric"],
    )
    lower = GaugeMetricFamily(
        "model_server_live_quality_lower", "Lower end of the live quality's 95 % interval.", labels=[*labels, "metric"]
    )
    upper = GaugeMetricFamily(
        "model_server_live_quality_upper", "Upper end of the live quality's 95 % interval.", labels=[*labels, "metric"]
    )
    heldout = GaugeMetricFamily(
        "model_server_heldout_quality",
        "The tag's metric on held-out data at registration (metric: accuracy, mae, rmse, ...).",
        labels=[*labels, "metric"],
    )
    for entry, store in ((entry, view.store) for view in views for entry in view.tags):
        rows, _ = store.read(entry.tag)
        found = quality.live_quality(rows, entry.classes)
        outcomes.add_metric([entry.name, entry.tag], found["outcomes"])
        for metric in ("accuracy", "log_loss", "brier", "mae", "rmse"):
            value = found.get(metric)
            if value is None or value["value"] is None:
                continue
            live.add_metric([entry.name, entry.tag, metric], value["value"])
            if value["interval"] is not None:
                lower.add_metric([entry.name, entry.tag, metric], value["interval"][0])
                upper.add_metric([entry.name, entry.tag, metric], value["interval"][1])
        for metric, value in entry.heldout.items():
            heldout.add_metric([entry.name, entry.tag, metric], value)

    class Collected:
        def collect(self) -> Iterator[Any]:
            yield from (outcomes, live, lower, upper, heldout)

    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(Collected())  # type: ignore[arg-type]
    return prometheus_client.generate_latest(registry).decode()
