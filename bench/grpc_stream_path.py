"""CPU per message of the server's own code on the gRPC stream's path, beside the JSON
front door's, without grpc.aio, HTTP parsing or sockets.

    .venv/bin/python -m bench.grpc_stream_path [--requests 2000] [--rounds 5]

Builds what a worker builds (as bench/front_door_path.py does) and calls, in one process,
the stream's per-message function (`oip_grpc._stream_answer`: parse, edge, core, encode,
serialize) and the JSON front door's ASGI callable with the same one-row requests, one at
a time and 12 at once (about as many JSON requests as one model call joins at 64 clients).
Process CPU time, so the figures hold on a busy machine. The gap between these figures
and the server CPU per message in bench/results/grpc_stream.md is what grpc.aio, the
event loop and the sockets cost around them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from typing import Any

from bench.front_door_path import ROOT, build, drive


async def drive_stream(
    edge: Any, servicer: Any, messages: list[bytes], requests: int, rounds: int, together: int
) -> float:
    """The least CPU seconds per message over `rounds` rounds, `together` messages at once."""
    from model_server.transports.oip_grpc import _stream_answer

    for message in messages * 5:  # warm up, and check the answers are not errors
        answer = await _stream_answer(edge, servicer, message, {})
        if answer[:1] != b"\x12":
            raise SystemExit(f"the stream answered an error: {answer[:300]!r}")
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for i in range(0, requests, together):
            batch = [messages[(i + j) % len(messages)] for j in range(together)]
            await asyncio.gather(*(_stream_answer(edge, servicer, m, {}) for m in batch))
            for _ in range(3):  # what a request leaves for later runs before the next
                await asyncio.sleep(0)
        best = min(best, (time.process_time() - started) / requests)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the least CPU per request is reported")
    args = parser.parse_args()
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bench-metrics-"))
    os.environ["OMP_NUM_THREADS"] = "1"
    import uvloop

    from bench.grpc_stream import request
    from bench.workload import BENCH_MODEL, BENCH_VERSION, bench_rows
    from model_server.transports.oip_grpc import InferenceServicer

    front, server = build(ROOT / "configuration.yaml")
    servicer = InferenceServicer(lambda: server, lambda: True)
    rows = bench_rows()
    path = f"/v1/models/{BENCH_MODEL}/versions/{BENCH_VERSION}/predict"
    bodies = [json.dumps({"instances": [r]}).encode() for r in rows.tolist()]
    raw = [request(r, i, typed=False) for i, r in enumerate(rows)]
    typed = [request(r, i, typed=True) for i, r in enumerate(rows)]
    loop = uvloop.new_event_loop()  # as uvicorn runs the server
    for together in (1, 12):
        json_cpu = loop.run_until_complete(drive(front, server, path, bodies, args.requests, args.rounds, together))
        print(f"JSON /v1 front door, {together} at once: {1e6 * json_cpu:.1f} µs of CPU per request")
        for name, messages in (("raw", raw), ("typed", typed)):
            cpu = loop.run_until_complete(
                drive_stream(front.edge, servicer, messages, args.requests, args.rounds, together)
            )
            print(f"stream message, {name}, {together} at once: {1e6 * cpu:.1f} µs of CPU per message")


if __name__ == "__main__":
    main()
