"""CPU per request of the server's own code on the JSON path, without HTTP parsing or sockets.

    .venv/bin/python -m bench.front_door_path [--requests 20000] [--profile] [--tracing RATIO]

Builds what a worker builds (configuration.yaml's settings and tags, the edge, the route
tables, the front door, Prometheus in multiprocess mode, the access log) and drives the
front door's ASGI callable directly with one-row requests, one at a time, measuring
process CPU time per request. What uvicorn and the socket cost is left out, so the figure
is the share this project can cut, and it holds on a busy machine (CPU time, not wall
time). With --profile, cProfile's top functions by own time are printed too. With
--tracing RATIO, tracing is on at that sampling ratio (spans go to an in-memory exporter).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def build(settings_path: Path) -> Any:
    """The front door of one worker, over a core serving the configuration's tags."""
    from model_server.config.auth import ApiKeys
    from model_server.config.settings import load_settings
    from model_server.core.server import ModelServer
    from model_server.monitoring.logs import ACCESS_LOG
    from model_server.transports.edge import ConcurrencyGate, Edge
    from model_server.transports.http_front_door import FrontDoor
    from model_server.transports.json_api import JsonApi
    from model_server.transports.oip_rest import OipRestApi
    from model_server.transports.route_table import join

    settings = load_settings(settings_path)
    server = ModelServer.from_settings(settings)
    ACCESS_LOG._stream = io.StringIO()  # the lines are made, and dropped
    json_api = JsonApi(lambda: server, lambda: {})
    oip_rest = OipRestApi(lambda: server, lambda: True)
    routes = join(json_api.bentoml_routes, json_api.routes, oip_rest.routes)
    edge = Edge(ApiKeys([]), ConcurrencyGate(settings.max_concurrent_requests), settings.access_log)
    return FrontDoor(None, routes, edge, settings.max_body_bytes, settings.max_requests_per_connection), server


async def drive(
    front: Any, server: Any, path: str, bodies: list[bytes], requests: int, rounds: int = 1, together: int = 1
) -> float:
    """CPU seconds per request of one-at-a-time calls of the front door: the least over
    `rounds` rounds of `requests` calls (other processes on the machine only add to it),
    `together` calls started at once (as many requests as one turn of a loaded server reads)."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def one(body: bytes) -> None:
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        headers = [
            (b"host", b"127.0.0.1:3000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "client": ("127.0.0.1", 50000)}
        await front(scope, receive, send)

    for body in bodies * 5:  # warm up
        await one(body)
    status = sent[0]["status"]
    if status != 200:
        raise SystemExit(f"{path} answered {status}: {sent[1]['body'][:300]!r}")
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for i in range(0, requests, together):
            if together == 1:
                await one(bodies[i % len(bodies)])
            else:
                await asyncio.gather(*(one(bodies[(i + j) % len(bodies)]) for j in range(together)))
            # What a request leaves for later (shadows, counts, log lines) runs before the next,
            # as between two reads of a server's loop.
            for _ in range(3):
                await asyncio.sleep(0)
        await server.drain_shadows()
        best = min(best, (time.process_time() - started) / requests)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=15, help="rounds; the least CPU per request is reported")
    parser.add_argument("--together", type=int, default=1, help="requests started at once (1: one at a time)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime", help="cProfile's order with --profile (tottime, cumulative)")
    parser.add_argument("--tracing", type=float, default=None, metavar="RATIO", help="trace this share of requests")
    args = parser.parse_args()
    if args.tracing is not None:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from model_server.monitoring.tracing import TRACING

        TRACING.configure(True, args.tracing, "bench", exporter=InMemorySpanExporter())
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bench-metrics-"))
    os.environ["OMP_NUM_THREADS"] = "1"
    from bench.workload import BENCH_MODEL, BENCH_VERSION, TITANIC_MODEL, TITANIC_VERSION, bench_rows, titanic_records

    front, server = build(ROOT / "configuration.yaml")
    loads = {
        "breast_cancer /v1": (
            f"/v1/models/{BENCH_MODEL}/versions/{BENCH_VERSION}/predict",
            [json.dumps({"instances": [r]}).encode() for r in bench_rows().tolist()],
        ),
        "titanic /v1": (
            f"/v1/models/{TITANIC_MODEL}/versions/{TITANIC_VERSION}/predict",
            [json.dumps({"instances": [r]}).encode() for r in titanic_records()],
        ),
        "breast_cancer OIP REST": (
            f"/v2/models/{BENCH_MODEL}/versions/{BENCH_VERSION}/infer",
            [
                json.dumps(
                    {"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, len(r)], "data": r}]}
                ).encode()
                for r in bench_rows().tolist()
            ],
        ),
    }
    import uvloop

    loop = uvloop.new_event_loop()  # as uvicorn runs the server
    for name, (path, bodies) in loads.items():
        seconds = loop.run_until_complete(drive(front, server, path, bodies, args.requests, args.rounds, args.together))
        print(f"{name}, {args.together} at once: {1e6 * seconds:.1f} µs of CPU per request")
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            loop.run_until_complete(drive(front, server, path, bodies, args.requests, 1, args.together))
            profiler.disable()
            stats = io.StringIO()
            pstats.Stats(profiler, stream=stats).sort_stats(args.sort).print_stats(30)
            print(stats.getvalue())


if __name__ == "__main__":
    main()
