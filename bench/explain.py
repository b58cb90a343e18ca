"""Latency of explanations, in process: one row per call, per algorithm and model.

    .venv/bin/python -m bench.explain [--calls 200]

For each built-in tag (trained into the model store first when it is missing), with one
OpenMP thread as the server's explanation thread has: the time to build the explainer
(once per tag, on its first explanation), the p50 and p95 of a 1-row explanation over
`--calls` calls, the p50 of a 1-row prediction by the same pipeline for comparison, and
one explanation of `max_explained_rows` (100) rows. Writes bench/results/explain.md and
prints the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from model_server.models import explain, registry
from model_server.models.registry import LoadedModel
from model_server.models.schema import ACCEPT

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "bench" / "results" / "explain.md"
TAGS = [
    "iris:v1",
    "breast_cancer:v1",
    "diabetes:v1",
    "titanic:v2",
    "iris:v2",
    "breast_cancer:v2",
    "diabetes:v2",
    "titanic:v1",
]
MANY_ROWS = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="1-row explanations timed per tag")
    args = parser.parse_args()
    ensure_trained(TAGS)
    lines = []
    with threadpool_limits(1):
        for tag in TAGS:
            lines.append(measure(registry.load(tag), args.calls))
            print(lines[-1])
    header = [
        "| tag | algorithm | method | features | build (ms) | 1 row p50 (ms) | 1 row p95 (ms) "
        f"| predict 1 row p50 (ms) | {MANY_ROWS} rows (ms) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    REPORT.write_text(
        "# Explanation latency\n\n"
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} ({os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end) with `python -m bench.explain --calls {args.calls}`: "
        "in process, one OpenMP thread (as the server's explanation thread). On a shared machine, "
        "treat the figures as an order of magnitude. *build* is the first explanation's one-off cost "
        "per tag; *predict* is the same pipeline's `predict_proba` / `predict` on the same row.\n\n"
        + "\n".join(header + lines)
        + "\n"
    )
    print(f"wrote {REPORT.relative_to(ROOT)}")


def ensure_trained(tags: list[str]) -> None:
    from training.recipes import DEFAULT_RECIPES, DEFAULT_SEED
    from training.register import tag_exists, train_and_register

    for tag in tags:
        if not tag_exists(tag):
            name, version = tag.split(":")
            train_and_register(name, version, DEFAULT_RECIPES[tag], DEFAULT_SEED)


def measure(model: LoadedModel, calls: int) -> str:
    schema = model.schema
    one = schema.sample_matrix()
    many = schema.rows_to_matrix([schema.sample_matrix()[0].tolist()] * MANY_ROWS, MANY_ROWS, ACCEPT)
    started = time.perf_counter()
    explainer = explain.explainer_for(model)
    build = time.perf_counter() - started
    method = explainer.explain(one).method
    explained = timings(lambda: explainer.explain(one), calls)
    predicted = timings(lambda: model.infer(one), calls)
    started = time.perf_counter()
    explainer.explain(many)
    batch = time.perf_counter() - started
    return (
        f"| {model.tag} | {model.labels.get('algorithm', '')} | {method} | {len(schema.features)} "
        f"| {build * 1000:.1f} | {statistics.median(explained):.2f} | {np.percentile(explained, 95):.2f} "
        f"| {statistics.median(predicted):.2f} | {batch * 1000:.1f} |"
    )


def timings(call: object, calls: int) -> list[float]:
    """Milliseconds of `calls` calls, after five warm-up calls."""
    assert callable(call)
    for _ in range(5):
        call()
    found = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        found.append((time.perf_counter() - started) * 1000)
    return found


if __name__ == "__main__":
    main()
