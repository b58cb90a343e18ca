"""The benchmark: our fronts against the plain BentoML recipe, on the same model.

    .venv/bin/python -m bench.run [--seconds 8] [--rounds 2] [--soak 60]

Starts our server (configuration.yaml) and the baseline (bench/baseline_service.py) on
free ports, then in each round, interleaved (ours, baseline, ours, baseline), loads each
front at concurrency 1, 16, 64 and 1 again right after 64 (some batchers collapse after
a burst). Load comes from C load generators from Debian, so that the client costs
little of the 2 cores: wrk for HTTP, h2load (nghttp2) for gRPC, whose answers carry
their status in trailers h2load does not read, so gRPC errors are counted from the
server's access log. A final soak at concurrency 64 on the JSON API checks worker RSS,
and two references bound the figures: the model alone in-process, and a grpc.aio
server that does nothing (bench/grpc_ceiling.py). Writes bench/results/report.md,
bench/results/results.json and bench/results/throughput.png, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import yaml

from bench import ceiling
from bench.grpc_ceiling import Ceiling
from bench.workload import (
    BENCH_MODEL,
    BENCH_TAG,
    BENCH_VERSION,
    TITANIC_CATEGORICAL,
    TITANIC_FEATURES,
    TITANIC_MODEL,
    TITANIC_VERSION,
    bench_rows,
    titanic_records,
)
from model_server.local_server import RunningServer, free_port, start_server
from model_server.transports.oip_proto import grpc_predict_v2_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench" / "results"
PHASES = (("c1", 1), ("c16", 16), ("c64", 64), ("c1_after_burst", 1))
# The titanic model (categorical features) is measured at one and at 64 clients.
TITANIC_PHASES = (("c1", 1), ("c16", 16), ("c64", 64))
# The ceilings (bench/ceiling.py): a bare ASGI app on the same export, and one answering a constant.
CEILING_PHASES = (("c1", 1), ("c16", 16), ("c64", 64))
CEILING_FRONT = "ceiling, ONNX"
TITANIC_CEILING_FRONT = "titanic ceiling, ONNX"
CONSTANT_FRONT = "ceiling, constant"
# The scikit-learn runtime and the prediction cache, against the JSON API's default (ONNX).
RUNTIME_PHASES = (("c1", 1), ("c64", 64))
SKLEARN_FRONT = "JSON API, sklearn"
CACHE_FRONT = "JSON API, cache"
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
QUIET_BEFORE_LOAD = 0.5  # seconds between reading /metrics and starting a load
# gRPC clients multiplex calls over few connections, and each connection stays with
# one worker (SO_REUSEPORT); h2load spreads the calls over this many connections.
GRPC_CONNECTIONS = 16


@dataclass
class Measurement:
    front: str
    phase: str
    round: int
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_ms_per_request: float
    mean_batch: float


@dataclass
class Front:
    """One way of sending the benchmark's requests to one server."""

    name: str
    server: RunningServer
    kind: str  # "wrk" (HTTP) or "h2load" (gRPC)
    path: str = ""
    bodies: list[str] = field(default_factory=list)
    grpc_body: bytes = b""
    batch_metric: str = "model_server_batch_requests"
    phases: tuple[tuple[str, int], ...] = PHASES
    first_answer: Any = None  # the answer to the first body, checked before timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8, help="seconds per load phase")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--soak", type=float, default=60, help="seconds of the RSS soak at concurrency 64")
    args = parser.parse_args()

    wrk = ensure_tool("wrk", "wrk")
    ensure_tool("h2load", "nghttp2-client")
    subprocess.run([sys.executable, "-m", "training", "--configured"], cwd=ROOT, check=True)
    env = {"OMP_NUM_THREADS": "1"}
    configs = Path(tempfile.mkdtemp(prefix="bench-configs-"))
    ours = start_server(ROOT / "configuration.yaml", env)
    baseline = start_server(ROOT / "configuration.yaml", env, service="bench.baseline_service:BaselineClassifier")
    # The same server with scikit-learn as every benchmarked tag's runtime, and one with
    # the prediction cache on; both stay idle while the others are measured.
    sklearn_only = start_server(derived_configuration(configs, "sklearn", sklearn_runtime), env)
    caching = start_server(derived_configuration(configs, "cache", prediction_cache), env)
    workers = configured_workers()
    ceilings = {
        name: start_ceiling(tag, workers, configs / f"{name}.log")
        for name, tag in (("onnx", BENCH_TAG), ("titanic", f"{TITANIC_MODEL}:{TITANIC_VERSION}"), ("constant", None))
    }
    try:
        rows = bench_rows()
        fronts = [
            Front(
                "JSON API",
                ours,
                "wrk",
                f"/v1/models/{BENCH_MODEL}/versions/{BENCH_VERSION}/predict",
                [json.dumps({"instances": [r]}) for r in rows.tolist()],
            ),
            Front(
                "baseline",
                baseline,
                "wrk",
                "/classify",
                [json.dumps({"input": [r]}) for r in rows.tolist()],
                batch_metric="bentoml_service_adaptive_batch_size",
            ),
            Front(
                "BentoML API",
                ours,
                "wrk",
                "/predict",
                [json.dumps({"model": BENCH_MODEL, "instances": [r], "version": BENCH_VERSION}) for r in rows.tolist()],
            ),
            Front(
                "OIP REST",
                ours,
                "wrk",
                f"/v2/models/{BENCH_MODEL}/versions/{BENCH_VERSION}/infer",
                [
                    json.dumps({"inputs": [{"name": "features", "datatype": "FP64", "shape": [1, len(r)], "data": r}]})
                    for r in rows.tolist()
                ],
            ),
            Front("OIP gRPC", ours, "h2load", GRPC_PATH, grpc_body=grpc_message(rows[0])),
            Front(
                "titanic JSON API",
                ours,
                "wrk",
                f"/v1/models/{TITANIC_MODEL}/versions/{TITANIC_VERSION}/predict",
                [json.dumps({"instances": [r]}) for r in titanic_records()],
                phases=TITANIC_PHASES,
            ),
            Front(
                "titanic OIP REST",
                ours,
                "wrk",
                f"/v2/models/{TITANIC_MODEL}/versions/{TITANIC_VERSION}/infer",
                [json.dumps({"inputs": titanic_tensors(r)}) for r in titanic_records()],
                phases=TITANIC_PHASES,
            ),
            Front(
                CEILING_FRONT,
                ceilings["onnx"],
                "wrk",
                "/",
                [json.dumps({"instances": [r]}) for r in rows.tolist()],
                batch_metric="",
                phases=CEILING_PHASES,
            ),
            Front(
                TITANIC_CEILING_FRONT,
                ceilings["titanic"],
                "wrk",
                "/",
                [json.dumps({"instances": [r]}) for r in titanic_records()],
                batch_metric="",
                phases=CEILING_PHASES,
            ),
            Front(
                CONSTANT_FRONT,
                ceilings["constant"],
                "wrk",
                "/",
                [json.dumps({"instances": [r]}) for r in rows.tolist()],
                batch_metric="",
                phases=CEILING_PHASES,
            ),
            Front(
                SKLEARN_FRONT,
                sklearn_only,
                "wrk",
                f"/v1/models/{BENCH_MODEL}/versions/{BENCH_VERSION}/predict",
                [json.dumps({"instances": [r]}) for r in rows.tolist()],
                phases=RUNTIME_PHASES,
            ),
            Front(
                "titanic JSON API, sklearn",
                sklearn_only,
                "wrk",
                f"/v1/models/{TITANIC_MODEL}/versions/{TITANIC_VERSION}/predict",
                [json.dumps({"instances": [r]}) for r in titanic_records()],
                phases=TITANIC_PHASES,
            ),
            Front(
                CACHE_FRONT,
                caching,
                "wrk",
                f"/v1/models/{BENCH_MODEL}/versions/{BENCH_VERSION}/predict",
                [json.dumps({"instances": [r]}) for r in rows.tolist()],
                phases=RUNTIME_PHASES,
            ),
        ]
        check_answers(fronts)
        rss_start = {"ours": worker_rss(ours), "baseline": worker_rss(baseline)}
        results: list[Measurement] = []
        for round_ in range(1, args.rounds + 1):
            for front in fronts:
                for phase, concurrency in front.phases:
                    m = measure(wrk, front, phase, concurrency, args.seconds, round_)
                    results.append(m)
                    print(
                        f"round {round_} {front.name:9s} {phase:15s} {m.requests_per_s:8.0f} req/s "
                        f"p50 {m.p50_ms:7.2f} ms p99 {m.p99_ms:7.2f} ms errors {m.errors} "
                        f"cpu {m.cpu_ms_per_request:.2f} ms/req batch {m.mean_batch:.1f}",
                        flush=True,
                    )
        rss_before_soak = worker_rss(ours)
        soak = measure(wrk, fronts[0], "soak", 64, args.soak, 0)
        rss_after_soak = worker_rss(ours)
        cache_rows = cache_outcomes(caching)
    finally:
        for server in (ours, baseline, sklearn_only, caching, *ceilings.values()):
            server.stop()
    limit = in_process_limit()
    limit.update(cache_rows)
    runtimes = one_row_calls()
    grpc_front = next(front for front in fronts if front.kind == "h2load")
    limit.update(grpc_ceiling(grpc_front.grpc_body, args.seconds))
    write_report(results, soak, limit, runtimes, rss_start, rss_before_soak, rss_after_soak, args)


def configured_workers() -> int:
    """The worker processes configuration.yaml gives the server (the ceilings get as many)."""
    settings = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    return int(settings["services"]["TabularModelServer"]["workers"])


def start_ceiling(tag: str | None, workers: int, log_path: Path) -> RunningServer:
    """A ceiling app (bench/ceiling.py) on a free port, as a RunningServer for the fronts."""
    port = free_port()
    return RunningServer(ceiling.start(tag, workers, port, log_path), port, 0, log_path)


def derived_configuration(folder: Path, name: str, change: Callable[[dict[str, Any]], None]) -> Path:
    """configuration.yaml with `change` applied to its model_server block, written to `folder`."""
    document = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    change(document["services"]["TabularModelServer"]["model_server"])
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def sklearn_runtime(settings: dict[str, Any]) -> None:
    """Every benchmarked tag served by its scikit-learn pipeline (the bench's tag, a
    shadow in configuration.yaml, becomes a variant without traffic to carry the runtime)."""
    models = settings["models"]
    models[BENCH_MODEL]["variants"].append({"tag": BENCH_TAG, "weight": 0})
    models[BENCH_MODEL].pop("shadow", None)
    for served in models.values():
        for variant in served["variants"]:
            variant["runtime"] = "sklearn"


def prediction_cache(settings: dict[str, Any]) -> None:
    settings["prediction_cache"] = {"max_entries": 100_000, "max_bytes": 64 * 1024 * 1024}


def cache_outcomes(server: RunningServer) -> dict[str, float]:
    """Rows the cache server's prediction caches answered (hits) and computed (misses)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = {"cache_hits": 0.0, "cache_misses": 0.0}
    for outcome in ("hit", "miss"):
        pattern = rf'^model_server_prediction_cache_rows_total\{{[^}}]*outcome="{outcome}"[^}}]*\}} (\S+)$'
        found[f"cache_{outcome}es" if outcome == "miss" else "cache_hits"] = sum(
            float(value) for value in re.findall(pattern, text, flags=re.MULTILINE)
        )
    return found


def one_row_calls() -> dict[str, dict[str, float]]:
    """Microseconds per one-row call of each runtime, in-process on one thread, for the
    benchmark's tag and the titanic tag: the median of 2,000 calls after a warm-up."""
    from threadpoolctl import threadpool_limits

    from model_server.models import registry

    threadpool_limits(1)
    rows = {
        BENCH_TAG: bench_rows()[:1],
        f"{TITANIC_MODEL}:{TITANIC_VERSION}": np.asarray(
            [[r[f] if r[f] is not None else np.nan for f in TITANIC_FEATURES] for r in titanic_records(1)],
            dtype=object,
        ),
    }
    found: dict[str, dict[str, float]] = {}
    for tag, row in rows.items():
        model = registry.load(tag)
        found[tag] = {}
        for runtime in model.runtimes:
            run = model.runner(runtime)
            for _ in range(50):
                run(row)
            times = []
            for _ in range(2000):
                started = time.perf_counter()
                run(row)
                times.append(time.perf_counter() - started)
            found[tag][runtime] = 1e6 * float(np.median(times))
    return found


def ensure_tool(command: str, package: str) -> str:
    """A load generator from Debian's packages, installed when missing."""
    found = shutil.which(command)
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-q", package], check=False, capture_output=True)
    if not shutil.which(command):
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", package], check=True, capture_output=True)
    return shutil.which(command) or command


def titanic_tensors(record: dict[str, object]) -> list[dict[str, object]]:
    """One OIP tensor per feature, BYTES for the categorical ones."""
    return [
        {
            "name": name,
            "datatype": "BYTES" if name in TITANIC_CATEGORICAL else "FP64",
            "shape": [1],
            "data": [record[name]],
        }
        for name in TITANIC_FEATURES
    ]


def grpc_message(row: np.ndarray) -> bytes:
    """One ModelInfer call as it travels in an HTTP/2 DATA frame: flag, length, protobuf."""
    request = pb.ModelInferRequest(model_name=BENCH_MODEL, model_version=BENCH_VERSION)
    request.inputs.add(name="features", datatype="FP64", shape=[1, row.shape[0]])
    request.raw_input_contents.append(row.astype("<f8").tobytes())
    raw = request.SerializeToString()
    return b"\x00" + len(raw).to_bytes(4, "big") + raw


def check_answers(fronts: list[Front]) -> None:
    """Every front answers the benchmark request correctly before it is timed."""
    for front in fronts:
        if front.kind == "h2load":
            check_grpc_answer(front)
            continue
        response = httpx.post(
            front.server.url + front.path,
            content=front.bodies[0],
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        if response.status_code != 200:
            raise SystemExit(f"{front.name} answered {response.status_code}: {response.text[:300]}")
        front.first_answer = response.json()
    # The ceilings run the same export: their answers equal the server's.
    by_name = {front.name: front for front in fronts}
    for ceiling_front, ours in ((CEILING_FRONT, "JSON API"), (TITANIC_CEILING_FRONT, "titanic JSON API")):
        theirs, mine = by_name[ceiling_front].first_answer, by_name[ours].first_answer
        if not np.allclose(theirs["probabilities"], mine["probabilities"], atol=1e-6):
            raise SystemExit(f"{ceiling_front} answers {theirs} where {ours} answers {mine}")


def check_grpc_answer(front: Front) -> None:
    """The benchmark's gRPC call, made with grpcio, answers OK with the model's classes."""
    import grpc

    from model_server.transports.oip_proto import grpc_predict_v2_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest.FromString(front.grpc_body[5:])
    with grpc.insecure_channel(front.server.grpc_target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    if response.model_version != BENCH_VERSION or not response.raw_output_contents:
        raise SystemExit(f"OIP gRPC answered unexpectedly: {response}")


def measure(wrk: str, front: Front, phase: str, concurrency: int, seconds: float, round_: int) -> Measurement:
    before_cpu = cpu_seconds(front.server)
    before_batch = batch_totals(front)
    # The workers share one listening socket, and a worker still busy answering /metrics
    # when the load generator opens its connections would get none of them.
    time.sleep(QUIET_BEFORE_LOAD)
    if front.kind == "wrk":
        requests, errors, rps, p50, p99 = run_wrk(wrk, front, concurrency, seconds)
    else:
        log_offset = front.server.log_path.stat().st_size
        requests, errors, rps, p50, p99 = run_h2load(front.grpc_body, front.server.grpc_port, concurrency, seconds)
        errors += grpc_errors_logged(front.server, log_offset)
    cpu = cpu_seconds(front.server) - before_cpu
    after_batch = batch_totals(front)
    calls = after_batch[1] - before_batch[1]
    mean_batch = (after_batch[0] - before_batch[0]) / calls if calls else float("nan")
    return Measurement(
        front.name,
        phase,
        round_,
        concurrency,
        rps,
        p50,
        p99,
        errors,
        requests,
        1000 * cpu / max(requests, 1),
        mean_batch,
    )


def run_wrk(wrk: str, front: Front, concurrency: int, seconds: float) -> tuple[int, int, float, float, float]:
    script = RESULTS / f".{front.name.replace(' ', '_')}.lua"
    bodies = ",\n".join("[==[" + b + "]==]" for b in front.bodies)  # Lua long strings: JSON holds ]]
    script.write_text(
        f"local bodies = {{\n{bodies}\n}}\nlocal i = 0\n"
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        "request = function()\n  i = i % #bodies + 1\n  return wrk.format(nil, nil, nil, bodies[i])\nend\n"
    )
    threads = 1 if concurrency == 1 else 2
    out = subprocess.run(
        [
            wrk,
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "5s",
            "-s",
            str(script),
            front.server.url + front.path,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    script.unlink()
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(g) for g in sockets.groups()) if sockets else 0)
    return requests, errors, rps, _wrk_percentile(out, "50%"), _wrk_percentile(out, "99%")


def _wrk_percentile(out: str, which: str) -> float:
    found = re.search(rf"^\s+{which}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not found:
        return float("nan")
    value, unit = float(found.group(1)), found.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_h2load(body: bytes, port: int, concurrency: int, seconds: float) -> tuple[int, int, float, float, float]:
    """Closed-loop gRPC calls from h2load; latencies from its per-request log."""
    connections = min(concurrency, GRPC_CONNECTIONS)
    streams = -(-concurrency // connections)
    with tempfile.TemporaryDirectory() as tmp:
        body_file, log_file = Path(tmp) / "call.bin", Path(tmp) / "requests.log"
        body_file.write_bytes(body)
        out = subprocess.run(
            [
                "h2load",
                f"--clients={connections}",
                f"--max-concurrent-streams={streams}",
                f"--duration={max(1, round(seconds))}",
                "--threads=1",
                f"--data={body_file}",
                "--header=content-type: application/grpc",
                "--header=te: trailers",
                f"--log-file={log_file}",
                f"http://127.0.0.1:{port}{GRPC_PATH}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        micros = np.array([int(line.split("\t")[2]) for line in log_file.read_text().splitlines()], dtype=float)
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    done, failed = int(counts.group(2)), int(counts.group(4))  # type: ignore[union-attr]
    ms = micros / 1000 if micros.size else np.array([np.nan])
    return done, failed, rps, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def grpc_errors_logged(server: RunningServer, offset: int) -> int:
    """gRPC calls the server answered with a status other than OK since `offset` of its log."""
    with server.log_path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    errors = 0
    for line in text.splitlines():
        if '"grpc"' not in line or not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("transport") == "grpc" and entry.get("status") != 200:
            errors += 1
    return errors


def grpc_ceiling(body: bytes, seconds: float) -> dict[str, float]:
    """Calls per second and CPU per call of a grpc.aio server that does nothing, at concurrency 64."""
    ceiling = Ceiling.start()
    try:
        before = ceiling.cpu_seconds()
        requests, _, rps, _, _ = run_h2load(body, ceiling.grpc_port, 64, seconds)
        cpu = ceiling.cpu_seconds() - before
    finally:
        ceiling.stop()
    return {"grpc_ceiling_rps": rps, "grpc_ceiling_cpu_ms_per_call": 1000 * cpu / max(requests, 1)}


def server_processes(server: RunningServer) -> list[psutil.Process]:
    main_process = psutil.Process(server.process.pid)
    return [main_process, *main_process.children(recursive=True)]


def cpu_seconds(server: RunningServer) -> float:
    total = 0.0
    for process in server_processes(server):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def worker_rss(server: RunningServer) -> list[float]:
    """RSS in MiB of each worker process (the ones that load the models)."""
    workers = [p for p in server_processes(server) if "worker" in " ".join(p.cmdline())]
    return sorted(round(p.memory_info().rss / 2**20, 1) for p in workers)


def batch_totals(front: Front) -> tuple[float, float]:
    if not front.batch_metric:  # the ceilings count no batches
        return 0.0, 0.0
    text = httpx.get(front.server.url + "/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(front.batch_metric + "_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(front.batch_metric + "_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def in_process_limit() -> dict[str, float]:
    """Rows per second of the bare model, one thread, at 1 and 64 rows per call."""
    import bentoml
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    model = bentoml.sklearn.load_model(BENCH_TAG)
    rows = bench_rows()
    out = {}
    for size in (1, 64):
        batch = rows[:size]
        model.predict_proba(batch)
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < 2:
            model.predict_proba(batch)
            calls += 1
        elapsed = time.perf_counter() - started
        out[f"rows_per_s_at_{size}"] = calls * size / elapsed
        out[f"ms_per_call_at_{size}"] = 1000 * elapsed / calls
    return out


def write_report(
    results: list[Measurement],
    soak: Measurement,
    limit: dict[str, float],
    runtimes: dict[str, dict[str, float]],
    rss_start: dict[str, list[float]],
    rss_before: list[float],
    rss_after: list[float],
    args: argparse.Namespace,
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = (
        f"{os.cpu_count()} cores ({_cpu_model()}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
    fronts = list(dict.fromkeys(m.front for m in results))
    measured = {f: [p for p, _ in PHASES if any(m.front == f and m.phase == p for m in results)] for f in fronts}
    mean = {(f, p): _mean([m for m in results if m.front == f and m.phase == p]) for f in fronts for p in measured[f]}

    lines = [
        f"# Benchmark: {BENCH_TAG} (breast_cancer gradient boosting), one row per request",
        "",
        "Our server serves each tag with its ONNX export by default; the `, sklearn` rows come from the same "
        "server with `runtime: sklearn`, the `, cache` row from one with the prediction cache on.",
        "",
        f"Run {when} on {machine}.",
        f"`python -m bench.run --seconds {args.seconds:g} --rounds {args.rounds} "
        f"--soak {args.soak:g}`; rounds interleaved (ours, baseline, ours, baseline); values are means over "
        "rounds. Load generators (wrk for HTTP, h2load for gRPC with "
        f"{GRPC_CONNECTIONS} connections) run on the same 2 cores as the servers.",
        "",
        "| Front | Phase | req/s | p50 ms | p99 ms | errors | server CPU ms/req | mean batch |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in fronts:
        for p in measured[f]:
            m = mean[(f, p)]
            lines.append(
                f"| {f} | {p} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['errors']:.0f} | "
                f"{m['cpu']:.2f} | {m['batch']:.1f} |"
            )
    ratios = []
    for p, _ in PHASES:
        per_round = [
            next(m.requests_per_s for m in results if m.front == "JSON API" and m.phase == p and m.round == r)
            / max(
                next(m.requests_per_s for m in results if m.front == "baseline" and m.phase == p and m.round == r), 1e-9
            )
            for r in range(1, args.rounds + 1)
        ]
        ratios.append((p, per_round))
    lines += ["", "JSON API / baseline, requests per second, per round (same round, so drift cancels):", ""]
    lines += [f"- {p}: " + ", ".join(f"{x:.1f}x" for x in rs) for p, rs in ratios]
    lines += ceiling_lines(results, mean, args.rounds)
    growth = [100 * (a - b) / b for a, b in zip(rss_after, rss_before, strict=False)]
    lines += [
        "",
        f"Soak: {args.soak:g} s at concurrency 64 on the JSON API: {soak.requests_per_s:.0f} req/s, "
        f"{soak.errors} errors, p99 {soak.p99_ms:.1f} ms. Worker RSS (MiB) at start {rss_start['ours']}, "
        f"before the soak {rss_before}, after {rss_after} (growth {', '.join(f'{g:+.1f} %' for g in growth)}); "
        f"baseline worker RSS at start {rss_start['baseline']}.",
        "",
        f"In-process limit (one thread, no server): {limit['rows_per_s_at_1']:.0f} rows/s at 1 row per call "
        f"({limit['ms_per_call_at_1']:.2f} ms/call), {limit['rows_per_s_at_64']:.0f} rows/s at 64 rows per call "
        f"({limit['ms_per_call_at_64']:.2f} ms/call).",
        "",
        f"Python gRPC ceiling (bench/grpc_ceiling.py: a grpc.aio server whose ModelInfer does nothing, one "
        f"process, the same h2load load at concurrency 64): {limit['grpc_ceiling_rps']:.0f} calls/s, "
        f"{limit['grpc_ceiling_cpu_ms_per_call']:.2f} ms of CPU per call.",
        "",
        "One-row model calls in-process (one thread, median of 2,000 calls), by runtime:",
        "",
    ]
    for tag, by_runtime in runtimes.items():
        described = ", ".join(f"{runtime} {us:,.1f} µs" for runtime, us in by_runtime.items())
        speedup = by_runtime.get("sklearn", float("nan")) / by_runtime.get("onnx", float("nan"))
        lines.append(f"- {tag}: {described} (onnx {speedup:.1f}x faster)")
    hits, misses = limit.get("cache_hits", 0.0), limit.get("cache_misses", 0.0)
    lines += [
        "",
        f"Prediction cache ({CACHE_FRONT}: the same 64 rows over and over): {hits:,.0f} rows answered from the "
        f"cache, {misses:,.0f} computed ({100 * hits / max(hits + misses, 1):.1f} % hits).",
        "",
    ]
    c64 = mean[("JSON API", "c64")]
    grpc64 = mean[("OIP gRPC", "c64")]
    ratio64 = float(np.mean(dict(ratios)["c64"]))
    onnx_vs_sklearn = [
        next(m.requests_per_s for m in results if m.front == "JSON API" and m.phase == "c64" and m.round == r)
        / next(m.requests_per_s for m in results if m.front == SKLEARN_FRONT and m.phase == "c64" and m.round == r)
        for r in range(1, args.rounds + 1)
    ]
    speedups = {
        tag: by_runtime.get("sklearn", float("nan")) / by_runtime.get("onnx", float("nan"))
        for tag, by_runtime in runtimes.items()
    }
    c1_p50 = max(mean[("JSON API", p)]["p50"] for p in ("c1", "c1_after_burst"))
    sklearn64 = mean[(SKLEARN_FRONT, "c64")]
    lines += [
        "## Targets",
        "",
        f"- c64 JSON API >= 5x baseline: {ratio64:.1f}x, errors {c64['errors']:.0f}, p99 {c64['p99']:.1f} ms "
        f"(target < 100 ms) -> {'met' if ratio64 >= 5 and c64['errors'] == 0 and c64['p99'] < 100 else 'NOT met'}",
        "- a 1-row ONNX call >= 10x faster than scikit-learn's, in-process: "
        + ", ".join(f"{tag} {x:.1f}x" for tag, x in speedups.items())
        + f" -> {'met' if speedups and min(speedups.values()) >= 10 else 'NOT met'}",
        f"- c1 JSON API p50 <= 1.0 ms, also after a burst: {mean[('JSON API', 'c1')]['p50']:.2f} ms, "
        f"{mean[('JSON API', 'c1_after_burst')]['p50']:.2f} ms -> {'met' if c1_p50 <= 1.0 else 'NOT met'}",
        "- c64 JSON API (onnx) >= 1.3x the same server with scikit-learn, per round: "
        + ", ".join(f"{x:.2f}x" for x in onnx_vs_sklearn)
        + f" -> {'met' if min(onnx_vs_sklearn) >= 1.3 else 'NOT met'}",
        f"- mean batch > 4 at c64 where the model thread runs the calls ({SKLEARN_FRONT}; ONNX calls run inline, "
        f"unjoined): {sklearn64['batch']:.1f} -> {'met' if sklearn64['batch'] > 4 else 'NOT met'}",
        f"- gRPC c64 >= JSON c64: {grpc64['rps']:.0f} vs {c64['rps']:.0f} req/s -> "
        f"{'met' if grpc64['rps'] >= c64['rps'] else 'NOT met'}",
        f"- worker RSS flat within 10 % over the soak: growth {', '.join(f'{g:+.1f} %' for g in growth)} -> "
        f"{'met' if growth and max(abs(g) for g in growth) <= 10 else 'NOT met'}",
        "",
        "![requests per second](throughput.png)",
        "",
    ]
    (RESULTS / "report.md").write_text("\n".join(lines))
    (RESULTS / "results.json").write_text(
        json.dumps(
            {
                "when": when,
                "machine": machine,
                "measurements": [asdict(m) for m in results],
                "soak": asdict(soak),
                "in_process": limit,
                "one_row_call_us": runtimes,
                "rss": {"start": rss_start, "before_soak": rss_before, "after_soak": rss_after},
            },
            indent=1,
        )
    )
    plot([f for f in fronts if len(measured[f]) == len(PHASES)], mean)
    print("\n".join(lines))


def ceiling_ratios(results: list[Measurement], front: str, ceiling_front: str, phase: str, rounds: int) -> list[float]:
    """Requests per second of `front` over the ceiling's, per round (same round: drift cancels)."""

    def rps(name: str, r: int) -> float:
        return next(m.requests_per_s for m in results if m.front == name and m.phase == phase and m.round == r)

    return [rps(front, r) / max(rps(ceiling_front, r), 1e-9) for r in range(1, rounds + 1)]


def ceiling_lines(results: list[Measurement], mean: dict[tuple[str, str], dict[str, float]], rounds: int) -> list[str]:
    """The server against the ceilings of bench/ceiling.py, at 1, 16 and 64 clients."""
    lines = [
        "",
        "## Against the ceilings",
        "",
        f"`{CEILING_FRONT}` is a bare ASGI app under uvicorn (httptools, uvloop, as many workers as the server): "
        "orjson, onnxruntime with one thread on the same tag's export, orjson; no checks. "
        f"`{CONSTANT_FRONT}` answers a fixed body. Ratios are the server's requests per second over the "
        "ceiling's, per round.",
        "",
        "| Server front | Ceiling | c1 | c16 | c64 | c1 p50 ms (server / ceiling) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    pairs = (
        ("JSON API", CEILING_FRONT),
        ("OIP REST", CEILING_FRONT),
        ("titanic JSON API", TITANIC_CEILING_FRONT),
        ("JSON API", CONSTANT_FRONT),
    )
    for front, ceiling_front in pairs:
        cells = []
        for phase, _ in CEILING_PHASES:
            if not any(m.front == front and m.phase == phase for m in results):
                cells.append("-")
                continue
            cells.append(", ".join(f"{x:.2f}" for x in ceiling_ratios(results, front, ceiling_front, phase, rounds)))
        p50 = f"{mean[(front, 'c1')]['p50']:.2f} / {mean[(ceiling_front, 'c1')]['p50']:.2f}"
        lines.append(f"| {front} | {ceiling_front} | {' | '.join(cells)} | {p50} |")
    c64 = float(np.mean(ceiling_ratios(results, "JSON API", CEILING_FRONT, "c64", rounds)))
    p50_ratio = mean[("JSON API", "c1")]["p50"] / mean[(CEILING_FRONT, "c1")]["p50"]
    lines += [
        "",
        f"- c64 JSON API >= 0.6x the ONNX ceiling: {c64:.2f}x -> {'met' if c64 >= 0.6 else 'NOT met'}",
        f"- c1 JSON API p50 <= 1.5x the ceiling's: {p50_ratio:.2f}x -> {'met' if p50_ratio <= 1.5 else 'NOT met'}",
    ]
    return lines


def plot(fronts: list[str], mean: dict[tuple[str, str], dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(fronts)
    x = np.arange(len(PHASES))
    for i, f in enumerate(fronts):
        left.bar(x + i * width, [mean[(f, p)]["rps"] for p, _ in PHASES], width, label=f)
        right.bar(x + i * width, [mean[(f, p)]["p50"] for p, _ in PHASES], width, label=f)
    for axis, title in ((left, "requests per second"), (right, "p50 latency (ms), log scale")):
        axis.set_xticks(x + width * (len(fronts) - 1) / 2, [p for p, _ in PHASES])
        axis.set_title(title)
    right.set_yscale("log")
    left.legend()
    fig.suptitle(f"{BENCH_TAG}, one row per request, 2 cores")
    fig.tight_layout()
    fig.savefig(RESULTS / "throughput.png", dpi=110)


def _mean(ms: list[Measurement]) -> dict[str, float]:
    return {
        "rps": float(np.mean([m.requests_per_s for m in ms])),
        "p50": float(np.mean([m.p50_ms for m in ms])),
        "p99": float(np.mean([m.p99_ms for m in ms])),
        "errors": float(np.sum([m.errors for m in ms])),
        "cpu": float(np.mean([m.cpu_ms_per_request for m in ms])),
        "batch": float(np.nanmean([m.mean_batch for m in ms]))
        if any(m.mean_batch == m.mean_batch for m in ms)
        else float("nan"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
