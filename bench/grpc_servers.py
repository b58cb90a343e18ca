"""The alternatives to grpc.aio for the gRPC front: servers that answer nothing, side by side
with the server's JSON API, at 64 requests in flight.

    .venv/bin/python -m bench.grpc_servers [--seconds 6] [--rounds 2] [--threads 8]

The server's gRPC front runs on grpc.aio, and grpc.aio alone costs more CPU per call than
the server's whole JSON path (bench/results/grpc_stream.md). This measures what the other
ways of serving gRPC from Python cost, before any of them is built: bench/grpc_ceiling.py
as grpc.aio and as grpcio's synchronous server (handlers on a pool of THREADS threads),
each answering with nothing and, with `--parse`, parsing every ModelInferRequest and
writing a one-output answer with the protobuf classes (the least a front does). Each runs
in as many processes as the server has workers, sharing the port (SO_REUSEPORT). Loads:
h2load on unary ModelInfer (64 calls over 16 connections) and on ModelStreamInfer (8
streams of 8 messages at once); the server (configuration.yaml) is loaded beside them,
wrk on JSON `/v1` and h2load on its unary ModelInfer, so the ratios to JSON are of the
same round. Rounds interleave every load. Writes bench/results/grpc_servers.md.
"""

from __future__ import annotations

import argparse
import statistics
from datetime import UTC, datetime
from functools import partial
from typing import Any

from bench.grpc_ceiling import Ceiling
from bench.grpc_stream import IN_FLIGHT, PER_STREAM, h2load_load, h2load_stream, measure, request, wrk_load
from bench.run import ROOT, Front, configured_workers, ensure_tool
from bench.workload import BENCH_MODEL, BENCH_VERSION, bench_rows
from model_server.local_server import start_server

RESULTS = ROOT / "bench" / "results"
JSON = "server: JSON /v1 (wrk)"
SERVER_UNARY = "server: gRPC unary (grpc.aio)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="the synchronous server's pool, per process")
    args = parser.parse_args()
    wrk = ensure_tool("wrk", "wrk")
    ensure_tool("h2load", "nghttp2-client")
    workers = configured_workers()
    rows = bench_rows()
    messages = [request(rows[i % len(rows)], i, typed=False) for i in range(PER_STREAM)]
    variants = {
        "grpc.aio, nothing parsed": [],
        "grpc.aio, protobuf parsed and written": ["--parse"],
        f"grpcio synchronous ({args.threads} threads), nothing parsed": ["--sync", str(args.threads)],
        f"grpcio synchronous ({args.threads} threads), protobuf parsed and written": [
            "--sync",
            str(args.threads),
            "--parse",
        ],
    }
    found: dict[str, list[dict[str, float]]] = {}
    server = start_server(ROOT / "configuration.yaml", {"OMP_NUM_THREADS": "1"})
    no_ops: dict[str, Ceiling] = {}
    try:
        for name, options in variants.items():
            no_ops[name] = Ceiling.start(*options, processes=workers)
        path = f"/v1/models/{BENCH_MODEL}/versions/{BENCH_VERSION}/predict"
        json_front = Front("JSON API", server, "wrk", path, [f'{{"instances": [{rows[0].tolist()}]}}'])
        for round_ in range(args.rounds + 1):  # the first round warms up, and is left out
            loads: dict[str, Any] = {
                JSON: partial(measure, server, partial(wrk_load, wrk, json_front, args.seconds)),
                SERVER_UNARY: partial(measure, server, partial(h2load_load, server, messages[0], args.seconds)),
            }
            for name, no_op in no_ops.items():
                unary = partial(h2load_load, no_op, messages[0], args.seconds)
                stream = partial(h2load_stream, no_op, messages, args.seconds)
                loads[f"{name}, unary"] = partial(measure, no_op, unary)
                loads[f"{name}, stream"] = partial(measure, no_op, stream)
            for name, load in loads.items():
                result = load()
                result["cpu_us"] = result.pop("server_cpu_us_per_request")
                print(f"round {round_} {name}: {result['rps']:,.0f} calls/s, {result['cpu_us']:.0f} µs CPU per call")
                if round_:
                    found.setdefault(name, []).append(result)
    finally:
        for no_op in no_ops.values():
            no_op.stop()
        server.stop()
    report = write_report(found, args, workers)
    print(report)


def write_report(found: dict[str, list[dict[str, float]]], args: argparse.Namespace, workers: int) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    json_rates = [r["rps"] for r in found[JSON]]
    lines = [
        "# gRPC from Python: grpc.aio against grpcio's synchronous server, answering nothing",
        "",
        f"Run {now}; `python -m bench.grpc_servers --seconds {args.seconds:g} --rounds {args.rounds} "
        f"--threads {args.threads}`. {IN_FLIGHT} requests in flight: h2load with {IN_FLIGHT} unary calls over 16 "
        f"connections, or {IN_FLIGHT // PER_STREAM} streams of {PER_STREAM} messages; wrk with {IN_FLIGHT} "
        f"connections on JSON. Every no-op server runs in {workers} processes on one port, as the server's "
        f"{workers} workers; the loads share the 2 cores. Ratios are to JSON `/v1` in the same round "
        "(medians of the rounds).",
        "",
        "| front | calls/s (median) | ratio to JSON | CPU per call (median) | errors |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, results in found.items():
        rates = [r["rps"] for r in results]
        ratio = statistics.median(r / j for r, j in zip(rates, json_rates, strict=True))
        cpu = statistics.median(r["cpu_us"] for r in results)
        errors = sum(int(r["errors"]) for r in results)
        lines.append(f"| {name} | {statistics.median(rates):,.0f} | {ratio:.2f} | {cpu:.0f} µs | {errors} |")
    lines += ["", "Every round:", ""]
    for name, results in found.items():
        lines.append(f"- {name}: {', '.join(format(r['rps'], ',.0f') for r in results)} calls/s")
    text = "\n".join(lines) + "\n"
    (RESULTS / "grpc_servers.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
