"""OIP gRPC streaming against unary gRPC and the JSON API at 64 requests in flight, and
binary tensors (`raw_input_contents`) against typed contents, on one server.

    .venv/bin/python -m bench.grpc_stream [--seconds 4] [--rounds 2] [--profile 6]

Starts the server (configuration.yaml, OMP_NUM_THREADS=1) on free ports and loads it, in
interleaved rounds, with: wrk on JSON `/v1` (64 connections); h2load on unary ModelInfer
(64 calls over 16 connections), raw and typed; and on ModelStreamInfer, raw and typed,
two ways: `bench.grpc_stream_client` (grpcio, long-lived streams, PROCESSES processes of
STREAMS streams, each one connection keeping WINDOW messages in flight), and h2load,
whose every request is a stream carrying PER_STREAM messages at once (h2load cannot keep
a stream open, but it sends a request body of many messages; C, so the client's own CPU
does not cap the rate). One row of breast_cancer:v2 per request. Beside the server, two
grpc.aio servers that answer nothing (bench/grpc_ceiling.py: a plain stream, and one
pipelined as the server's) are loaded the same way, so the report splits a streamed
message's server CPU into grpc.aio, the pipelining, and the server's own layers.

The machine is shared, so the report gives medians and ratios to JSON in the same round,
the server's CPU per request, and the mean requests per model call. With `--profile`,
py-spy then records the workers under h2load's streams and under JSON, grouped by layer
as bench/grpc_profile.py does. Writes bench/results/grpc_stream.md and prints it.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
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

from bench.grpc_ceiling import Ceiling
from bench.grpc_profile import RATE, parse_raw, shares
from bench.grpc_stream_client import write_messages
from bench.run import (
    GRPC_CONNECTIONS,
    ROOT,
    Front,
    batch_totals,
    cpu_seconds,
    ensure_tool,
    grpc_errors_logged,
    run_h2load,
    run_wrk,
    server_processes,
)
from bench.workload import BENCH_MODEL, BENCH_VERSION, bench_rows
from model_server.constants import OUTPUT_PREDICTION_ID
from model_server.local_server import RunningServer, start_server
from model_server.transports.oip_proto import grpc_predict_v2_pb2 as pb

RESULTS = ROOT / "bench" / "results"
STREAM_PATH = "/inference.GRPCInferenceService/ModelStreamInfer"
IN_FLIGHT = 64
# Each connection stays with one worker (SO_REUSEPORT), so enough of them to spread evenly.
PROCESSES, STREAMS = 2, 8  # 16 streams (connections) of 4 messages in flight
WINDOW = IN_FLIGHT // (PROCESSES * STREAMS)
JSON_FRONT = "JSON /v1"
# h2load sends each stream's messages as one request body and reads all the answers: a
# stream of PER_STREAM pipelined messages on each of H2_CONNECTIONS connections.
PER_STREAM, H2_CONNECTIONS = 8, IN_FLIGHT // 8
FRONTS = (
    JSON_FRONT,
    "gRPC unary, raw (h2load)",
    "gRPC unary, typed (h2load)",
    "gRPC stream, raw (Python client)",
    "gRPC stream, typed (Python client)",
    f"gRPC stream, raw (h2load, {PER_STREAM} per stream)",
    f"gRPC stream, typed (h2load, {PER_STREAM} per stream)",
)
# grpc.aio servers that answer every message with an empty response (bench/grpc_ceiling.py),
# one process: in order, one at a time; and pipelined as the server's stream is.
CEILINGS = (
    f"ceiling: no-op stream (h2load, {PER_STREAM} per stream)",
    f"ceiling: no-op stream, pipelined as the server's (h2load, {PER_STREAM} per stream)",
    "ceiling: no-op stream, pipelined as the server's (Python client)",
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
    plain, pipelined = Ceiling.start(), Ceiling.start("--pipelined")
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
                FRONTS[3]: lambda: stream_load(server, files["raw"], args.seconds),
                FRONTS[4]: lambda: stream_load(server, files["typed"], args.seconds),
                FRONTS[5]: lambda: h2load_stream(server, raw, args.seconds),
                FRONTS[6]: lambda: h2load_stream(server, typed, args.seconds),
                CEILINGS[0]: lambda: h2load_stream(plain, raw, args.seconds),
                CEILINGS[1]: lambda: h2load_stream(pipelined, raw, args.seconds),
                CEILINGS[2]: lambda: stream_load(pipelined, files["raw"], args.seconds),
            }
            targets: dict[str, Any] = {front: server for front in FRONTS}
            targets.update({CEILINGS[0]: plain, CEILINGS[1]: pipelined, CEILINGS[2]: pipelined})
            everything = FRONTS + CEILINGS
            for front in everything:  # warm up every path once
                loads[front]()
            for round_ in range(args.rounds):
                order = everything if round_ % 2 == 0 else tuple(reversed(everything))
                for front in order:
                    results[front].append(measure(targets[front], loads[front]))
                    print(f"round {round_ + 1} {front}: {results[front][-1]}", flush=True)
            if args.profile:
                py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                for front in (FRONTS[5], JSON_FRONT):
                    profiles[front] = profile(py_spy, server, lambda f=front: loads[f](), args.profile)
    finally:
        server.stop()
        plain.stop()
        pipelined.stop()
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
                else a == b or o.name == OUTPUT_PREDICTION_ID  # an id is unique to its answer
                for o, a, b in zip(want.outputs, got.raw_output_contents, want.raw_output_contents, strict=True)
            )
            if not same:
                raise SystemExit(f"the stream answered {answer!r} where ModelInfer answered {want}")


def measure(target: RunningServer | Ceiling, load: Any) -> dict[str, float]:
    """One load: its rate and errors, the server's CPU per request, and (for the model
    server) the mean number of requests per model call (model_server_batch_requests)."""
    time.sleep(0.5)  # let the last load's connections close
    cpu = target.cpu_seconds if isinstance(target, Ceiling) else lambda: cpu_seconds(target)
    batches = None if isinstance(target, Ceiling) else Front("metrics", target, "wrk")
    before, (rows_before, calls_before) = cpu(), batch_totals(batches) if batches else (0.0, 0.0)
    found = load()
    found["server_cpu_us_per_request"] = 1e6 * (cpu() - before) / max(found["requests"], 1)
    if batches is not None:
        time.sleep(0.3)  # metrics are written once per turn of the loop
        rows, calls = batch_totals(batches)
        found["mean_batch"] = (rows - rows_before) / max(calls - calls_before, 1)
    return found


def wrk_load(wrk: str, front: Front, seconds: float) -> dict[str, float]:
    requests, errors, rps, _, _ = run_wrk(wrk, front, IN_FLIGHT, seconds)
    return {"requests": requests, "errors": errors, "rps": rps}


def h2load_load(server: RunningServer | Ceiling, message: bytes, seconds: float) -> dict[str, float]:
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    requests, errors, rps, _, _ = run_h2load(body, server.grpc_port, IN_FLIGHT, seconds)
    return {"requests": requests, "errors": errors, "rps": rps}


def h2load_stream(server: RunningServer | Ceiling, messages: list[bytes], seconds: float) -> dict[str, float]:
    """h2load on ModelStreamInfer: each of its requests is one stream carrying PER_STREAM
    messages; the rate is in messages. Error answers are counted from the access log."""
    body = b"".join(b"\x00" + len(m).to_bytes(4, "big") + m for m in messages[:PER_STREAM])
    offset = server.log_path.stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "stream.bin"
        body_file.write_bytes(body)
        out = subprocess.run(
            [
                "h2load",
                f"--clients={H2_CONNECTIONS}",
                "--max-concurrent-streams=1",
                f"--duration={max(1, round(seconds))}",
                "--threads=1",
                f"--data={body_file}",
                "--header=content-type: application/grpc",
                "--header=te: trailers",
                f"http://127.0.0.1:{server.grpc_port}{STREAM_PATH}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    streams_per_s = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    done, failed = int(counts.group(2)), int(counts.group(4))  # type: ignore[union-attr]
    time.sleep(0.3)  # the access log is written once per turn of the loop
    errors = failed * PER_STREAM + (grpc_errors_logged(server, offset) if isinstance(server, RunningServer) else 0)
    return {"requests": done * PER_STREAM, "errors": errors, "rps": streams_per_s * PER_STREAM}


def stream_load(server: RunningServer | Ceiling, messages: Path, seconds: float) -> dict[str, float]:
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
    everything = FRONTS + CEILINGS
    ratio: dict[str, float] = {
        front: statistics.median(results[front][i]["rps"] / results[JSON_FRONT][i]["rps"] for i in range(rounds))
        for front in everything
    }

    def cpu(front: str) -> float:
        return statistics.median(r["server_cpu_us_per_request"] for r in results[front])

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
        "client CPU per request | requests per model call | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for front in everything:
        runs = results[front]
        client = [r["client_cpu_us_per_request"] for r in runs if "client_cpu_us_per_request" in r]
        lines.append(
            f"| {front} | {statistics.median(r['rps'] for r in runs):,.0f} | {ratio[front]:.2f} | "
            f"{statistics.median(r['server_cpu_us_per_request'] for r in runs):.0f} µs | "
            + (f"{statistics.median(client):.0f} µs (Python)" if client else "(C)")
            + (f" | {statistics.median(r['mean_batch'] for r in runs):.1f}" if "mean_batch" in runs[0] else " | -")
            + f" | {sum(int(r['errors']) for r in runs)} |"
        )
    floor, pipelined, stream = cpu(CEILINGS[0]), cpu(CEILINGS[1]), cpu(FRONTS[5])
    lines += [
        "",
        "Server CPU per streamed message, by layer (medians above, raw contents, h2load):",
        "",
        f"- grpc.aio itself (read a message, write an answer; the no-op stream): {floor:.0f} µs",
        f"- the stream's pipelining (a task per message, the answer queue): {pipelined - floor:+.0f} µs",
        f"- the edge, OIP decoding and encoding, the core and the model: {stream - pipelined:.0f} µs",
        f"- all of it: {stream:.0f} µs, against {cpu(JSON_FRONT):.0f} µs for a JSON request (all layers)",
        f"- the Python load client reaches {statistics.median(r['rps'] for r in results[CEILINGS[2]]):,.0f} "
        "messages/s against the no-op stream: above that, its rate is the client's limit, not the server's",
    ]
    lines += ["", "Every round:", ""]
    for front in everything:
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
