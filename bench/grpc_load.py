"""A closed-loop gRPC load generator for the OIP ModelInfer call (grpc.aio).

    python bench/grpc_load.py TARGET CONCURRENCY SECONDS

Prints one JSON line: requests, errors, seconds, latencies (ms) p50 and p99.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.workload import BENCH_MODEL, BENCH_VERSION, bench_rows  # noqa: E402
from model_server.oip_proto import grpc_predict_v2_pb2 as pb  # noqa: E402
from model_server.oip_proto import grpc_predict_v2_pb2_grpc as pb_grpc  # noqa: E402


async def run(target: str, concurrency: int, seconds: float) -> dict[str, float]:
    rows = bench_rows()
    requests = []
    for row in rows:
        request = pb.ModelInferRequest(model_name=BENCH_MODEL, model_version=BENCH_VERSION)
        request.inputs.add(name="features", datatype="FP64", shape=[1, row.shape[0]])
        request.raw_input_contents.append(row.astype("<f8").tobytes())
        requests.append(request)
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    await stub.ModelInfer(requests[i % len(requests)], timeout=10)
                    latencies.append(time.perf_counter() - started)
                except grpc.RpcError:
                    errors += 1
                i += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


if __name__ == "__main__":
    target, concurrency, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(asyncio.run(run(target, concurrency, seconds))))
