"""OIP gRPC streaming against unary gRPC and the JSON API at 64 requests in flight, and
binary tensors (`raw_input_contents`) against typed contents, on one server.

    .venv/bin/python -m bench.grpc_stream [--seconds 4] [--rounds 2] [--profile 6]

Starts the server (configuration.yaml, OMP_NUM_THREADS=1) on free ports and loads it, in
interleaved rounds, with: wrk on JSON `/v1` (64 connections); h2load on unary ModelInfer
(64 calls over 16 connections), raw and typed; and `bench.grpc_stream_client` on
ModelStreamInfer (h2load cannot drive a bidirectional stream): PROCESSES processes of
STREAMS streams, each stream one connection keeping WINDOW messages in flight, 64 in all,
raw and typed. One row of breast_cancer:v2 per request. The machine is shared, so the
report gives medians and ratios to JSON in the same round, and the server's CPU per
request (which the clients' own CPU does not blur). With `--profile`, py-spy then records
the workers under the streaming load and under JSON's, grouped by layer as
bench/grpc_profile.py does. Writes bench/results/grpc_stream.md and prints it.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.grpc_profile import RATE, parse_raw, shares
from bench.grpc_stream_client import write_messages
from bench.run import GRPC_CONNECTIONS, ROOT, Front, cpu_seconds, ensure_tool, run_h2load, run_wrk, server_processes
from bench.workload import BENCH_MODEL, BENCH_VERSION, bench_rows
from model_server.local_server import RunningServer, start_server
from model_server.transports.oip_proto import grpc_predict_v2_pb2 as pb

RESULTS = ROOT / "bench" / "results"
IN_FLIGHT = 64
PROCESSES, STREAMS = 2, 4  # 8 streams (connections) of 8 messages in flight
WINDOW = IN_FLIGHT // (PROCESSES * STREAMS)
JSON_FRONT = "JSON /v1"
FRONTS = (
    JSON_FRONT,
    "gRPC unary, raw (h2load)",
    "gRPC unary, typed (h2load)",
    "gRPC stream, raw",
    "gRPC stream, typed",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4, help="seconds of load per front and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", type=float, default=0, help="seconds of py-spy per profiled front (0: none)")
    args = parser.parse_args()
    wrk = ensure_tool("wrk", "wrk")
    ensure_tool("h2load", "nghttp2-client")
    rows = bench_rows()
    raw = [request(row, i, typed=False) for i, row in enumerate(rows)]
    typed = [request(row, i, typed=True) for i, row in enumerate(rows)]
    server = start_server(ROOT / "configuration.yaml", {"OMP_NUM_THREADS": "1"})
    json_front = Front(
        "JSON API",  # names wrk's script file: no slash
        server,
        "wrk",
        f"/v1/models/{BENCH_MODEL}/versions/{BENCH_VERSION}/predict",
        [json.dumps({"instances": [r]}) for r in rows.tolist()],
    )
    results: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    profiles: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            files = {"raw": Path(folder) / "raw.bin", "typed": Path(folder) / "typed.bin"}
            write_messages(files["raw"], raw)
            write_messages(files["typed"], typed)
            check_answers(server, raw, typed)
            loads = {
                JSON_FRONT: lambda: wrk_load(wrk, json_front, args.seconds),
                "gRPC unary, raw (h2load)": lambda: h2load_load(server, raw[0], args.seconds),
                "gRPC unary, typed (h2load)": lambda: h2load_load(server, typed[0], args.seconds),
                "gRPC stream, raw": lambda: stream_load(server, files["raw"], args.seconds),
                "gRPC stream, typed": lambda: stream_load(server, files["typed"], args.seconds),
            }
            for front in FRONTS:  # warm up every path once
                loads[front]()
            for round_ in range(args.rounds):
                order = FRONTS if round_ % 2 == 0 else tuple(reversed(FRONTS))
                for front in order:
                    results[front].append(measure(server, loads[front]))
                    print(f"round {round_ + 1} {front}: {results[front][-1]}", flush=True)
            if args.profile:
                py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                for front in ("gRPC stream, raw", JSON_FRONT):
                    profiles[front] = profile(py_spy, server, lambda f=front: loads[f](), args.profile)
    finally:
        server.stop()
    write_report(results, profiles, args)


def request(row: np.ndarray, i: int, typed: bool) -> bytes:
    """One row as a serialized ModelInferRequest, in raw bytes or typed fp64 contents."""
    message = pb.ModelInferRequest(model_name=BENCH_MODEL, model_version=BENCH_VERSION, id=str(i))
    tensor = message.inputs.add(name="features", datatype="FP64", shape=[1, row.shape[0]])
    if typed:
        tensor.contents.fp64_contents.extend(row.tolist())
    else:
        message.raw_input_contents.append(row.astype("<f8").tobytes())
    return message.SerializeToString()


def check_answers(server: RunningServer, raw: list[bytes], typed: list[bytes]) -> None:
    """A stream answers both encodings of a row as the unary call does, before timing."""
    with grpc.insecure_channel(server.grpc_target) as channel:
        unary = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        want = pb.ModelInferResponse.FromString(unary(raw[3], timeout=30))
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        for answer in stream(iter([raw[3], typed[3]]), timeout=30):
            got = pb.ModelStreamInferResponse.FromString(answer).infer_response
            same = [o.name for o in got.outputs] == [o.name for o in want.outputs] and all(
                np.allclose(np.frombuffer(a, "<f8"), np.frombuffer(b, "<f8"), rtol=0, atol=1e-6)
                if o.datatype == "FP64"
                else a == b
                for o, a, b in zip(want.outputs, got.raw_output_contents, want.raw_output_contents, strict=True)
            )
            if not same:
                raise SystemExit(f"the stream answered {answer!r} where ModelInfer answered {want}")


def measure(server: RunningServer, load: Any) -> dict[str, float]:
    time.sleep(0.5)  # let the last load's connections close
    before = cpu_seconds(server)
    found = load()
    found["server_cpu_us_per_request"] = 1e6 * (cpu_seconds(server) - before) / max(found["requests"], 1)
    return found


def wrk_load(wrk: str, front: Front, seconds: float) -> dict[str, float]:
    requests, errors, rps, _, _ = run_wrk(wrk, front, IN_FLIGHT, seconds)
    return {"requests": requests, "errors": errors, "rps": rps}


def h2load_load(server: RunningServer, message: bytes, seconds: float) -> dict[str, float]:
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    requests, errors, rps, _, _ = run_h2load(body, server.grpc_port, IN_FLIGHT, seconds)
    return {"requests": requests, "errors": errors, "rps": rps}


def stream_load(server: RunningServer, messages: Path, seconds: float) -> dict[str, float]:
    """PROCESSES client processes at once; their answers summed, rate over the longest."""
    command = [sys.executable, "-m", "bench.grpc_stream_client", server.grpc_target, str(messages)]
    command += ["--seconds", str(seconds), "--streams", str(STREAMS), "--window", str(WINDOW)]
    clients = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(PROCESSES)]
    outs = [json.loads(client.communicate(timeout=seconds + 120)[0]) for client in clients]
    answers = sum(o["answers"] for o in outs)
    return {
        "requests": answers,
        "errors": sum(o["errors"] for o in outs),
        "rps": answers / max(o["seconds"] for o in outs),
        "client_cpu_us_per_request": 1e6 * sum(o["cpu_seconds"] for o in outs) / max(answers, 1),
    }


def profile(py_spy: str, server: RunningServer, load: Any, seconds: float) -> dict[str, Any]:
    """py-spy on every worker while `load` runs; samples per thread and layer."""
    workers = [p.pid for p in server_processes(server) if "worker" in " ".join(p.cmdline())]
    with tempfile.TemporaryDirectory() as folder:
        recorders = []
        for pid in workers:
            out = Path(folder) / f"{pid}.txt"
            command = [py_spy, "record", "--pid", str(pid), "--rate", str(RATE), "--duration", str(int(seconds))]
            command += ["--idle", "--threads", "--native", "--format", "raw", "--output", str(out)]
            recorders.append((out, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
        time.sleep(0.5)
        found: dict[str, float] = {}
        loader = threading.Thread(target=lambda: found.update(load()))
        loader.start()
        loader.join()
        stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
        for out, recorder in recorders:
            recorder.communicate(timeout=seconds + 60)
            if out.exists():
                stacks.update(parse_raw(out.read_text()))
    return {"load": found, **shares(stacks)}


def write_report(
    results: dict[str, list[dict[str, float]]], profiles: dict[str, dict[str, Any]], args: argparse.Namespace
) -> None:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rounds = len(results[JSON_FRONT])
    ratio: dict[str, float] = {
        front: statistics.median(results[front][i]["rps"] / results[JSON_FRONT][i]["rps"] for i in range(rounds))
        for front in FRONTS
    }
    lines = [
        f"# OIP gRPC streaming against unary gRPC and JSON ({BENCH_MODEL}:{BENCH_VERSION}, 1 row per request)",
        "",
        f"Run {when}; `python -m bench.grpc_stream --seconds {args.seconds:g} --rounds {args.rounds}"
        + (f" --profile {args.profile:g}`" if args.profile else "`")
        + f". {IN_FLIGHT} requests in flight on every front: wrk with {IN_FLIGHT} connections on JSON `/v1`; "
        f"h2load with {IN_FLIGHT} calls over {GRPC_CONNECTIONS} connections on unary ModelInfer; "
        f"`bench.grpc_stream_client` on ModelStreamInfer, {PROCESSES} processes x {STREAMS} streams "
        f"(one connection each) x {WINDOW} messages in flight. The fronts run in turn, {rounds} interleaved "
        "rounds after one warm-up each, on 2 cores that the load generators and other work share: read the "
        "ratios to JSON in the same round (medians), not the absolute rates. `raw` sends the row in "
        "`raw_input_contents`, `typed` in `contents.fp64_contents`.",
        "",
        "| front | req/s (median) | ratio to JSON (median of rounds) | server CPU per request | "
        "client CPU per request | errors |",
        "|---|---|---|---|---|---|",
    ]
    for front in FRONTS:
        runs = results[front]
        client = [r["client_cpu_us_per_request"] for r in runs if "client_cpu_us_per_request" in r]
        lines.append(
            f"| {front} | {statistics.median(r['rps'] for r in runs):,.0f} | {ratio[front]:.2f} | "
            f"{statistics.median(r['server_cpu_us_per_request'] for r in runs):.0f} µs | "
            + (f"{statistics.median(client):.0f} µs (Python)" if client else "(C)")
            + f" | {sum(int(r['errors']) for r in runs)} |"
        )
    lines += ["", "Every round:", ""]
    for front in FRONTS:
        lines.append(f"- {front}: " + ", ".join(f"{r['rps']:,.0f}" for r in results[front]) + " req/s")
    lines.append("")
    for name, found in profiles.items():
        load = found["load"]
        lines += [f"## Profile under {name}: {load['rps']:,.0f} req/s, {int(load['errors'])} errors", ""]
        for thread, layers in sorted(found["threads"].items(), key=lambda item: -sum(item[1].values())):
            total = sum(layers.values())
            lines.append(
                f"- thread {thread} ({total} samples): "
                + ", ".join(f"{layer} {100 * n / total:.0f} %" for layer, n in layers.items() if n / total >= 0.02)
            )
        lines += ["", "Busiest frames (samples, not idle):", ""]
        lines += [f"- {count}: `{frame}`" for frame, count in found["top_frames"][:10]]
        lines.append("")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "grpc_stream.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
