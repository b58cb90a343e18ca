"""Where a request's CPU goes, layer by layer, and how far the server is from the ceiling.

    .venv/bin/python -m bench.budget [--seconds 8] [--rounds 2] [--label before]

Starts the server (configuration.yaml) and the ceiling of bench/ceiling.py (a bare ASGI
app on the same tag's ONNX export, as many workers) on free ports. Then:
  1. ratios: each round loads the server's JSON API and the ceiling in turn at 1, 16 and
     64 clients (wrk), for breast_cancer and for titanic (categorical);
  2. budget: at 64 clients on each model's JSON API, py-spy samples every worker (Python
     frames, 200 Hz, without pausing it) while psutil counts the server's CPU seconds;
     each busy sample is put in the layer of its innermost frame that names one, and a
     layer's µs per request is its share of the samples times the CPU per request.
Writes bench/results/budget.md (and budget-LABEL.json with --label) and prints it.

    .venv/bin/python -m bench.budget --base REV [--seconds 8] [--rounds 2]

also starts REV's server (a worktree of that commit, the same configuration and model
store) beside this tree's, and measures both in the same run, the loads interleaved: the
report's "before" (REV) and "after" (this tree) on the same machine at the same time.

    .venv/bin/python -m bench.budget --one-client [--seconds 8] [--rounds 4]

measures only step 1 at one client on breast_cancer (the server's p50 over the
ceiling's, in interleaved rounds) and writes bench/results/ceiling_c1.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
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

from bench.compare_commits import checkout, describe
from bench.grpc_profile import parse_raw
from bench.run import (
    ROOT,
    Front,
    configured_workers,
    cpu_seconds,
    ensure_tool,
    run_wrk,
    server_processes,
    start_ceiling,
)
from bench.workload import BENCH_MODEL, BENCH_VERSION, TITANIC_MODEL, TITANIC_VERSION, bench_rows, titanic_records
from model_server.local_server import start_server

RESULTS = ROOT / "bench" / "results"
# The fronts' names in the results: this tree's server, the ceiling, and --base's server.
SERVER, CEILING, BASE = "server", "ceiling", "base"
RATE = 200
PHASES = (1, 16, 64)

# A busy sample belongs to the first layer, from the innermost frame outwards, whose
# pattern its frame (`function (file:line)` as py-spy writes it) contains.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # The answer's send system call: the front door's transport, or (before it) the lines of
    # uvicorn 0.54's RequestResponseCycle.send that write the head and the body.
    (
        "socket writes (the send system call)",
        (
            "CoalescingTransport.write",
            "CoalescingTransport.flush",
            "httptools_impl.py:524)",
            "httptools_impl.py:544)",
            "httptools_impl.py:551)",
        ),
    ),
    ("model call", ("onnxruntime", "sklearn/", "onnx_runtime.py", "(registry.py")),
    ("drift counting", ("drift_counts.py", "drift_reference.py")),
    ("metrics", ("metrics.py", "prometheus_client")),
    ("access log", ("logs.py", "logging/")),
    ("JSON decode", ("decode_json", "_unique_keys", "_refuse_lone_surrogates")),
    ("JSON encode", ("encode_json", "prediction_body")),
    ("validation", ("schema.py", "to_matrix")),
    ("batching or inline call", ("batching.py", "concurrent/futures")),
    ("routing", ("ab_split.py", "resolve (", "reorder (")),
    ("shadow", ("_start_shadow", "_compare")),
    ("core (the rest of infer)", ("server.py",)),
    ("edge: key check, gate, request id", ("edge.py", "auth.py")),
    ("front door and dispatch", ("http_front_door.py", "route_table.py", "json_api.py", "errors.py")),
    ("uvicorn and httptools (HTTP parsing, ASGI)", ("uvicorn", "httptools", "h11")),
    ("event loop (uvloop, asyncio)", ("uvloop", "asyncio")),
)
OTHER = "other"


def layer_of(stack: tuple[str, ...]) -> str:
    for frame in reversed(stack):
        for layer, patterns in LAYERS:
            if any(pattern in frame for pattern in patterns):
                return layer
    return OTHER


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8, help="seconds per load")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the ratio")
    parser.add_argument("--label", default="", help="also write bench/results/budget-LABEL.json")
    parser.add_argument("--one-client", action="store_true", help="only breast_cancer at one client, no budget")
    parser.add_argument("--base", default=None, help="also measure this commit's server, in the same run")
    args = parser.parse_args()
    with checkout(args.base) as base_tree:
        measure(args, base_tree if args.base else None)


def measure(args: argparse.Namespace, base_tree: Path | None) -> None:
    phases = (1,) if args.one_client else PHASES
    wrk = ensure_tool("wrk", "wrk")
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run([sys.executable, "-m", "training", "--configured"], cwd=ROOT, check=True)
    workers = configured_workers()
    logs = Path(tempfile.mkdtemp(prefix="bench-budget-"))
    server = start_server(ROOT / "configuration.yaml", {"OMP_NUM_THREADS": "1"})
    base = None
    if base_tree is not None:
        base = start_server(base_tree / "configuration.yaml", {"OMP_NUM_THREADS": "1"}, checkout=base_tree)
    ceilings = {BENCH_MODEL: start_ceiling(f"{BENCH_MODEL}:{BENCH_VERSION}", workers, logs / "onnx.log")}
    if not args.one_client:
        ceilings[TITANIC_MODEL] = start_ceiling(f"{TITANIC_MODEL}:{TITANIC_VERSION}", workers, logs / "titanic.log")
    bodies = {
        BENCH_MODEL: [json.dumps({"instances": [r]}) for r in bench_rows().tolist()],
        TITANIC_MODEL: [json.dumps({"instances": [r]}) for r in titanic_records()],
    }
    versions = {BENCH_MODEL: BENCH_VERSION, TITANIC_MODEL: TITANIC_VERSION}
    found: dict[str, Any] = {"ratios": {}, "budget": {}}
    try:
        for model, ceiling in ceilings.items():
            path = f"/v1/models/{model}/versions/{versions[model]}/predict"
            ours = Front(SERVER, server, "wrk", path, bodies[model])
            bare = Front(CEILING, ceiling, "wrk", "/", bodies[model])
            before = Front(BASE, base, "wrk", path, bodies[model]) if base is not None else None
            found["ratios"][model] = ratios(wrk, [ours, bare] + ([before] if before else []), args, phases)
            if not args.one_client:
                found["budget"][model] = budget(py_spy, wrk, ours, args.seconds)
                if before is not None:
                    found.setdefault("base_budget", {})[model] = budget(py_spy, wrk, before, args.seconds)
    finally:
        server.stop()
        if base is not None:
            base.stop()
        for ceiling in ceilings.values():
            ceiling.stop()
    if args.one_client:
        report = render_one_client(found, args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "ceiling_c1.md").write_text(report)
        print(report)
        return
    found["revisions"] = {SERVER: describe(None), BASE: describe(args.base) if args.base else None}
    report = render(found, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "budget.md").write_text(report)
    if args.label:
        (RESULTS / f"budget-{args.label}.json").write_text(json.dumps(found, indent=1))
    print(report)


def ratios(wrk: str, fronts: list[Front], args: argparse.Namespace, phases: tuple[int, ...] = PHASES) -> dict[str, Any]:
    """Requests per second and p50 of the server, the ceiling (and the base's server), per
    round and client count (their order reverses from round to round)."""
    rounds: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        measured: dict[str, Any] = {}
        for clients in phases:
            for front in fronts if round_ % 2 == 0 else fronts[::-1]:
                _, errors, rps, p50, p99 = run_wrk(wrk, front, clients, args.seconds)
                measured[f"{front.name} c{clients}"] = {"rps": rps, "p50": p50, "p99": p99, "errors": errors}
                print(f"{front.name} c{clients}: {rps:.0f} req/s p50 {p50:.2f} ms, {errors} errors", flush=True)
        rounds.append(measured)
    return {"rounds": rounds}


def budget(py_spy: str, wrk: str, front: Front, seconds: float) -> dict[str, Any]:
    """CPU µs per request of the server's processes at 64 clients, by layer."""
    workers = [p.pid for p in server_processes(front.server) if "worker" in " ".join(p.cmdline())]
    with tempfile.TemporaryDirectory() as folder:
        recorders = []
        for pid in workers:
            raw = Path(folder) / f"{pid}.txt"
            command = [py_spy, "record", "--pid", str(pid), "--rate", str(RATE), "--duration", str(int(seconds))]
            command += ["--nonblocking", "--threads", "--format", "raw", "--output", str(raw)]
            recorders.append((raw, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
        time.sleep(0.5)
        load: dict[str, Any] = {}
        before = cpu_seconds(front.server)

        def run_load() -> None:
            requests, errors, rps, p50, p99 = run_wrk(wrk, front, 64, seconds)
            load.update(requests=requests, errors=errors, rps=rps, p50=p50, p99=p99)

        loader = threading.Thread(target=run_load)
        loader.start()
        loader.join()
        cpu = cpu_seconds(front.server) - before
        stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
        for raw, recorder in recorders:
            recorder.wait(timeout=seconds + 60)
            if raw.exists():
                stacks.update(parse_raw(raw.read_text()))
    layers: collections.Counter[str] = collections.Counter()
    frames: collections.Counter[str] = collections.Counter()
    for stack, count in stacks.items():
        if len(stack) < 2:
            continue
        layers[layer_of(stack[1:])] += count
        frames[stack[-1]] += count
    busy = sum(layers.values())
    us_per_request = 1e6 * cpu / max(load["requests"], 1)
    return {
        "load": load,
        "cpu_us_per_request": us_per_request,
        "samples": busy,
        "layers_us": {layer: us_per_request * n / busy for layer, n in layers.most_common()} if busy else {},
        "top_frames": frames.most_common(12),
    }


def render_one_client(found: dict[str, Any], args: argparse.Namespace) -> str:
    """The one-client comparison: p50 and requests per second of the server and the ceiling."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rounds = found["ratios"][BENCH_MODEL]["rounds"]
    lines = [
        f"# One client: the server's JSON API against the bare ASGI ceiling ({BENCH_MODEL}:{BENCH_VERSION})",
        "",
        f"Run {when}, load average at the end {load} (2 cores, shared); "
        f"`python -m bench.budget --one-client --seconds {args.seconds:g} --rounds {args.rounds}`. "
        "wrk with one connection on `/v1` and on bench/ceiling.py (the same ONNX export, as many workers), "
        "in turn, the order alternating per round.",
        "",
        "| round | server p50 ms | ceiling p50 ms | p50 server / ceiling | server req/s | ceiling req/s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(rounds, 1):
        ours, bare = r["server c1"], r["ceiling c1"]
        lines.append(
            f"| {i} | {ours['p50']:.3f} | {bare['p50']:.3f} | {ours['p50'] / max(bare['p50'], 1e-9):.2f} | "
            f"{ours['rps']:,.0f} | {bare['rps']:,.0f} |"
        )
    median = statistics.median(r["server c1"]["p50"] / max(r["ceiling c1"]["p50"], 1e-9) for r in rounds)
    lines += ["", f"Median of the rounds' p50 ratios: {median:.2f} (target: at most 1.5)."]
    return "\n".join(lines) + "\n"


def render(found: dict[str, Any], args: argparse.Namespace) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    revisions = found.get("revisions", {})
    sides = [SERVER] + ([BASE] if revisions.get(BASE) else [])
    names = {SERVER: f"after ({revisions.get(SERVER, 'this tree')})", BASE: f"before ({revisions.get(BASE)})"}
    base_note = (
        f" With `--base`, the server of {revisions[BASE]} (before) ran beside this tree's (after), with the same "
        "configuration and model store, the loads interleaved in the same rounds."
        if BASE in sides
        else ""
    )
    lines = [
        "# Per-request CPU budget and the ratio to the ceiling",
        "",
        f"Run {when}; `python -m bench.budget --seconds {args.seconds:g} --rounds {args.rounds}"
        + (f" --base {args.base}" if BASE in sides else "")
        + "`"
        + (f" (`--label {args.label}`)" if args.label else "")
        + ". The server with configuration.yaml (validation, metrics, request ids, access log and drift counting "
        "on); the ceiling is bench/ceiling.py on the same export, as many workers. wrk on the same 2 cores."
        + base_note,
        "",
        "## Requests per second, server / ceiling (per round)",
        "",
        "| Model | Server | c1 | c16 | c64 | c1 p50 ms server / ceiling | c64 req/s server / ceiling |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model, result in found["ratios"].items():
        rounds = result["rounds"]
        for side in sides:
            cells = []
            for clients in PHASES:
                per = [r[f"{side} c{clients}"]["rps"] / max(r[f"{CEILING} c{clients}"]["rps"], 1e-9) for r in rounds]
                cells.append(", ".join(f"{x:.2f}" for x in per))
            p50 = [(r[f"{side} c1"]["p50"], r[f"{CEILING} c1"]["p50"]) for r in rounds]
            c64 = [(r[f"{side} c64"]["rps"], r[f"{CEILING} c64"]["rps"]) for r in rounds]
            p50_cell = ", ".join(f"{a:.2f} / {b:.2f}" for a, b in p50)
            c64_cell = ", ".join(f"{a:,.0f} / {b:,.0f}" for a, b in c64)
            lines.append(f"| {model} | {names[side]} | {' | '.join(cells)} | {p50_cell} | {c64_cell} |")
    for model, result in found["budget"].items():
        measured = {SERVER: result, BASE: found.get("base_budget", {}).get(model)}
        shown = [side for side in sides if measured[side] is not None]
        lines += ["", f"## Budget at 64 clients: {model} JSON API", ""]
        for side in shown:
            load = measured[side]["load"]
            lines.append(
                f"- {names[side]}: {load['rps']:,.0f} req/s, {measured[side]['cpu_us_per_request']:.0f} µs of "
                f"server CPU per request ({load['errors']} errors)"
            )
        layers = list(dict.fromkeys(layer for side in shown for layer in measured[side]["layers_us"]))
        lines += [
            "",
            "| Layer | " + " | ".join(f"µs per request, {names[side]}" for side in shown) + " |",
            "| --- | " + " | ".join("---:" for _ in shown) + " |",
        ]
        for layer in layers:
            cells = [measured[side]["layers_us"].get(layer) for side in shown]
            lines.append(f"| {layer} | " + " | ".join("-" if us is None else f"{us:.1f}" for us in cells) + " |")
        lines.append("| all | " + " | ".join(f"{measured[side]['cpu_us_per_request']:.1f}" for side in shown) + " |")
        lines += ["", f"Busiest innermost frames, {names[SERVER]} (samples):", ""]
        lines += [f"- `{frame}`: {count}" for frame, count in result["top_frames"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
