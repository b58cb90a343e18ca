"""Hot update under load: latency and errors at 64 clients while the routing changes, and
the memory a large tag takes and gives back when it is loaded and unloaded.

    .venv/bin/python -m bench.rollout [--seconds 10] [--interval 1]

Starts the server (configuration.yaml, 2 workers) with an admin key and its own routing
file on free ports. Then, with wrk at 64 connections on POST /v1/models/iris/predict
(no version: the routing decides):
  1. steady: no change, as the reference;
  2. cycling: promote iris:v2, roll back, promote, ... one change every `--interval`
     seconds for the whole phase; each change returns once both workers serve it.
Last, the memory: a deliberately large iris tag (a nearest-neighbours model that keeps
three million training rows) is added as a 10 % variant, then removed; worker RSS is
read before, with it, and after; the tag is deleted from the store at the end. Writes
bench/results/rollout.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import bentoml
import httpx
import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from bench.run import Front, ensure_tool, run_wrk, worker_rss
from model_server.local_server import RunningServer, start_server

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "bench" / "results" / "rollout.md"
ADMIN_KEY = "bench-admin-key"
LARGE_TAG = "iris:bench-large"
LARGE_ROWS = 3_000_000
ROW = [5.1, 3.5, 1.4, 0.2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="seconds per load phase")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between routing changes")
    args = parser.parse_args()
    wrk = ensure_tool("wrk", "wrk")
    register_large_tag()
    routing_file = Path(tempfile.mkdtemp(prefix="bench-routing-")) / "routing.yaml"
    env = {"OMP_NUM_THREADS": "1", "MODEL_SERVER_ADMIN_KEYS": ADMIN_KEY, "MODEL_SERVER_ROUTING_FILE": str(routing_file)}
    server = start_server(ROOT / "configuration.yaml", env)
    try:
        front = Front("JSON API", server, "wrk", "/v1/models/iris/predict", [json.dumps({"instances": [ROW]})])
        run_wrk(wrk, front, 64, 2)  # warm-up
        steady = run_wrk(wrk, front, 64, args.seconds)
        print(f"steady : {steady[2]:8.0f} req/s p50 {steady[3]:6.2f} ms p99 {steady[4]:6.2f} ms errors {steady[1]}")
        changes: list[float] = []
        stop = threading.Event()
        cycler = threading.Thread(target=cycle, args=(server, args.interval, stop, changes))
        cycler.start()
        try:
            cycling = run_wrk(wrk, front, 64, args.seconds)
        finally:
            stop.set()
            cycler.join()
        print(
            f"cycling: {cycling[2]:8.0f} req/s p50 {cycling[3]:6.2f} ms p99 {cycling[4]:6.2f} ms errors {cycling[1]} "
            f"({len(changes)} changes, each answered in p50 {statistics.median(changes) * 1000:.0f} ms)"
        )
        memory = large_tag_memory(server)
        print(
            f"worker RSS MiB: before {memory['before']}, with {LARGE_TAG} {memory['loaded']}, after {memory['after']}"
        )
    finally:
        server.stop()
        bentoml.models.delete(LARGE_TAG)  # it only serves this measurement
    write_report(args, steady, cycling, changes, memory)


def cycle(server: RunningServer, interval: float, stop: threading.Event, durations: list[float]) -> None:
    """Promote iris:v2 and roll back, one change per interval, until stopped."""
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        promote = True
        while not stop.wait(interval):
            started = time.perf_counter()
            if promote:
                response = client.post("/v1/admin/models/iris/promote", json={"tag": "iris:v2"})
            else:
                response = client.post("/v1/admin/models/iris/rollback")
            response.raise_for_status()
            assert response.json()["workers_behind"] == [], response.text
            durations.append(time.perf_counter() - started)
            promote = not promote
        if not promote:  # leave the configured routing in place
            client.post("/v1/admin/models/iris/rollback").raise_for_status()


def register_large_tag() -> None:
    """A large iris model: nearest neighbours over LARGE_ROWS rows (about 100 MB of arrays)."""
    try:
        bentoml.models.get(LARGE_TAG)
        return
    except bentoml.exceptions.NotFound:
        pass
    base = bentoml.models.get("iris:v1")
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    labels = rng.integers(0, 3, LARGE_ROWS)
    rows = centres[labels] + rng.normal(0, 0.3, (LARGE_ROWS, 4))
    model = KNeighborsClassifier(n_neighbors=5, algorithm="kd_tree").fit(
        rows, np.array(["setosa", "versicolor", "virginica"])[labels]
    )
    bentoml.sklearn.save_model(
        LARGE_TAG, model, labels={"purpose": "benchmark: a large tag"}, metadata=dict(base.info.metadata)
    )


def large_tag_memory(server: RunningServer) -> dict[str, list[float]]:
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as client:
        before = worker_rss(server)
        added = {"variants": [{"tag": "iris:v1", "weight": 90}, {"tag": LARGE_TAG, "weight": 10}]}
        client.put("/v1/admin/models/iris", json=added).raise_for_status()
        for _ in range(50):  # both workers answer with the large tag
            httpx.post(
                f"{server.url}/v1/models/iris/versions/bench-large/predict", json={"instances": [ROW]}
            ).raise_for_status()
        loaded = worker_rss(server)
        client.post("/v1/admin/models/iris/rollback").raise_for_status()
        time.sleep(2)
        after = worker_rss(server)
    return {"before": before, "loaded": loaded, "after": after}


def write_report(
    args: argparse.Namespace,
    steady: tuple[int, int, float, float, float],
    cycling: tuple[int, int, float, float, float],
    changes: list[float],
    memory: dict[str, list[float]],
) -> None:
    def row(name: str, m: tuple[int, int, float, float, float]) -> str:
        return f"| {name} | {m[2]:,.0f} | {m[3]:.2f} | {m[4]:.2f} | {m[0]:,} | {m[1]} |"

    change_ms = sorted(d * 1000 for d in changes)
    REPORT.write_text(
        "# Hot update under load\n\n"
        f"Written by `python -m bench.rollout` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"wrk, 64 connections, {args.seconds:.0f} s per phase, POST /v1/models/iris/predict "
        "(no version, so the routing decides); 2 workers.\n\n"
        "| Phase | req/s | p50 ms | p99 ms | requests | errors |\n| --- | ---: | ---: | ---: | ---: | ---: |\n"
        f"{row('steady (no change)', steady)}\n"
        f"{row(f'promote and roll back every {args.interval:g} s', cycling)}\n\n"
        f"Changes during the cycling phase: {len(changes)}, each answered once both workers served it: "
        f"p50 {statistics.median(change_ms):.0f} ms, max {change_ms[-1]:.0f} ms.\n\n"
        f"## Memory of a large tag\n\n`{LARGE_TAG}` (nearest neighbours over {LARGE_ROWS:,} rows) added as a "
        "10 % variant of iris, then removed by a rollback. Worker RSS in MiB:\n\n"
        "| | worker 1 | worker 2 |\n| --- | ---: | ---: |\n"
        f"| before | {memory['before'][0]} | {memory['before'][1]} |\n"
        f"| serving `{LARGE_TAG}` | {memory['loaded'][0]} | {memory['loaded'][1]} |\n"
        f"| 2 s after it was removed | {memory['after'][0]} | {memory['after'][1]} |\n"
    )
    print(f"wrote {REPORT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
