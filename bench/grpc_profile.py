"""Where a gRPC ModelInfer call's CPU goes: py-spy samples one worker while h2load loads
the OIP gRPC front at 64 concurrent calls, as in `make bench`, and the JSON API the same
way for comparison.

    .venv/bin/python -m bench.grpc_profile [--seconds 15]

Starts the server (configuration.yaml) on free ports, loads each front for `--seconds`
while py-spy (from the lock) records one worker at 200 samples per second including idle
time, then groups the samples by the layer they were taken in: grpcio's C core and its
Cython glue, the event loop, the server's own code (edge, validation, batching), the
model, and idle. Writes bench/results/grpc_profile.md and prints it.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.run import (
    GRPC_CONNECTIONS,
    ROOT,
    Front,
    ensure_tool,
    grpc_message,
    run_h2load,
    run_wrk,
    server_processes,
)
from bench.workload import BENCH_MODEL, BENCH_VERSION, bench_rows
from model_server.local_server import start_server

RESULTS = ROOT / "bench" / "results"
RATE = 25  # samples per second: with native frames py-spy pauses the process for each sample

# A sample belongs to the first layer (from the innermost frame outwards) whose pattern
# its frame's file or function matches.
LAYERS = (
    ("model (onnxruntime / scikit-learn)", ("onnxruntime", "sklearn", "onnx_runtime.py", "registry.py")),
    ("batcher", ("batching.py",)),
    ("OIP decoding and encoding (the server's code)", ("oip.py", "oip_grpc.py", "datatypes.py", "schema.py")),
    ("edge (keys, limits, access log, errors)", ("edge.py", "auth.py", "logs.py", "errors.py")),
    ("core (routing, metrics)", ("server.py", "ab_split.py", "metrics.py", "prometheus_client")),
    ("JSON front (HTTP parsing, JSON codec)", ("http_front_door.py", "json_api.py", "json_codec.py", "route_table.py")),
    ("uvicorn / h11 / httptools", ("uvicorn", "h11", "httptools", "starlette")),
    ("grpcio (aio server, Cython glue, C core)", ("grpc", "cygrpc", "_server.py", "completion_queue")),
    ("protobuf", ("protobuf", "_pb2", "message.py")),
    ("event loop (uvloop, asyncio)", ("uvloop", "asyncio", "events.py", "base_events.py")),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15, help="seconds of load (and of sampling) per front")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    wrk = ensure_tool("wrk", "wrk")
    ensure_tool("h2load", "nghttp2-client")
    server = start_server(ROOT / "configuration.yaml", {"OMP_NUM_THREADS": "1"})
    rows = bench_rows()
    fronts = {
        "OIP gRPC": Front("OIP gRPC", server, "h2load", grpc_body=grpc_message(rows[0])),
        "JSON API": Front(
            "JSON API",
            server,
            "wrk",
            f"/v1/models/{BENCH_MODEL}/versions/{BENCH_VERSION}/predict",
            [json.dumps({"instances": [r]}) for r in rows.tolist()],
        ),
    }
    found = {}
    try:
        workers = [p.pid for p in server_processes(server) if "worker" in " ".join(p.cmdline())]
        for name, front in fronts.items():
            found[name] = profile(py_spy, wrk, front, workers, args.seconds)
    finally:
        server.stop()
    write_report(found, args)


def profile(py_spy: str, wrk: str, front: Front, workers: list[int], seconds: float) -> dict[str, object]:
    """Load `front` at 64 clients while py-spy records every worker; throughput and where
    each worker's threads spent their samples."""
    with tempfile.TemporaryDirectory() as folder:
        recorders = []
        for pid in workers:
            raw = Path(folder) / f"{pid}.txt"
            command = [py_spy, "record", "--pid", str(pid), "--rate", str(RATE), "--duration", str(int(seconds))]
            command += ["--idle", "--threads", "--native", "--format", "raw", "--output", str(raw)]
            recorders.append(
                (raw, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            )
        load: dict[str, float] = {}

        def run_load() -> None:
            if front.kind == "wrk":
                requests, errors, rps, p50, p99 = run_wrk(wrk, front, 64, seconds)
            else:
                requests, errors, rps, p50, p99 = run_h2load(front.grpc_body, front.server.grpc_port, 64, seconds)
            load.update(requests=requests, errors=errors, rps=rps, p50=p50, p99=p99)

        time.sleep(0.5)
        loader = threading.Thread(target=run_load)
        loader.start()
        loader.join()
        stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
        for raw, recorder in recorders:
            _, complaint = recorder.communicate(timeout=seconds + 60)
            if not raw.exists():
                raise SystemExit(f"py-spy recorded nothing: {complaint.strip()[-500:]}")
            stacks.update(parse_raw(raw.read_text()))
    return {"load": load, **shares(stacks)}


def parse_raw(text: str) -> collections.Counter[tuple[str, ...]]:
    """py-spy's raw (collapsed) format, `thread;frame;...;frame count`, outermost first."""
    stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
    for line in text.splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks[tuple(frames.split(";"))] += int(count)
    return stacks


# Innermost frames of a thread that waits: for sockets (epoll), for a lock or a queue.
WAITING = ("epoll_wait", "epoll_pwait", "PyThread_acquire_lock_timed", "pthread_cond_wait", "pthread_cond_timedwait")


def layer_of(stack: tuple[str, ...]) -> str:
    """Idle when the thread waits (any of WAITING among its three innermost frames, except
    a wait for the GIL), else the layer of its innermost frame that matches one."""
    inner = " ".join(stack[-3:])
    if "take_gil" in inner:
        return "waiting for the GIL"
    if any(word in inner for word in WAITING):
        return "idle"
    for frame in reversed(stack):
        for layer, patterns in LAYERS:
            if any(pattern in frame for pattern in patterns):
                return layer
    return "other (Python, libc)"


def thread_kind(name: str) -> str:
    """Thread names as py-spy gives them (`thread (tid): name`), without the tid."""
    label = name.split(": ", 1)[-1]
    if label.startswith("model_"):
        return "model thread"
    if label.startswith("shadow"):
        return "shadow thread"
    return {"MainThread": "event loop", "Thread-1 (_poll_wrapper)": "grpcio poller"}.get(label, label)


def shares(stacks: collections.Counter[tuple[str, ...]]) -> dict[str, object]:
    """Per kind of thread, the samples per layer; and the busiest innermost frames."""
    by_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    busiest: collections.Counter[str] = collections.Counter()
    for stack, count in stacks.items():
        if not stack:
            continue
        layer = layer_of(stack[1:])
        by_thread[thread_kind(stack[0])][layer] += count
        if layer not in ("idle", "waiting for the GIL"):
            named = [f for f in stack[1:] if not f.startswith("0x")]
            busiest[named[-1] if named else stack[-1]] += count
    return {
        "samples": sum(stacks.values()),
        "threads": {t: dict(c.most_common()) for t, c in by_thread.items()},
        "top_frames": busiest.most_common(15),
    }


def write_report(found: dict[str, dict[str, object]], args: argparse.Namespace) -> None:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Profile of one worker at 64 clients: OIP gRPC and the JSON API ({BENCH_MODEL}:{BENCH_VERSION})",
        "",
        f"Run {when}; `python -m bench.grpc_profile --seconds {args.seconds:g}`. py-spy samples every worker "
        f"at {RATE} Hz, native frames and idle threads included; h2load spreads gRPC calls over "
        f"{GRPC_CONNECTIONS} connections, wrk uses 64. Shares are of each kind of thread's samples, summed "
        "over the workers; a thread is idle while it waits for sockets, a lock or a queue.",
        "",
    ]
    for name, result in found.items():
        load = result["load"]
        assert isinstance(load, dict)
        lines += [
            f"## {name}: {load['rps']:.0f} req/s (both workers), p50 {load['p50']:.2f} ms, "
            f"p99 {load['p99']:.2f} ms, {load['errors']} errors",
            "",
        ]
        threads = result["threads"]
        assert isinstance(threads, dict)
        for thread, layers in sorted(threads.items(), key=lambda item: -sum(item[1].values())):
            total = sum(layers.values())
            lines.append(
                f"- thread {thread} ({total} samples): "
                + ", ".join(
                    f"{layer} {100 * count / total:.0f} %" for layer, count in layers.items() if count / total >= 0.02
                )
            )
        lines += ["", "Busiest frames (samples, not idle):", ""]
        top = result["top_frames"]
        assert isinstance(top, list)
        lines += [f"- {count}: `{frame}`" for frame, count in top]
        lines.append("")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "grpc_profile.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
