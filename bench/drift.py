"""What drift counting costs plain predictions: two servers in one run, drift counting on
(the default) and off (MODEL_SERVER_DRIFT_COUNTING=false), loaded in turn by wrk.

    .venv/bin/python -m bench.drift [--seconds 8] [--rounds 3] [--concurrency 32]

Each round loads each server on the numeric benchmark model (breast_cancer:v2, 30
features) and on titanic:v1 (categorical features), one row per request, interleaved
(on, off, on, off) so that a busy machine slows both alike. Reports requests per second,
p50/p99 and the server CPU per request, and the cost of counting one batch in-process.
The configured tags are trained first into a temporary model store, so that they carry
a drift reference whatever the user's store holds. Writes bench/results/drift.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.run import RESULTS, Front, cpu_seconds, ensure_tool, run_wrk
from bench.workload import BENCH_MODEL, BENCH_VERSION, TITANIC_MODEL, TITANIC_VERSION, bench_rows, titanic_records
from model_server.local_server import start_server

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"on": {}, "off": {"MODEL_SERVER_DRIFT_COUNTING": "false"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    wrk = ensure_tool("wrk", "wrk")
    home = tempfile.mkdtemp(prefix="bench-drift-home-")
    os.environ["BENTOML_HOME"] = home  # before BentoML's store is first used
    try:
        train_configured()
        run(wrk, args)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def train_configured() -> None:
    from model_server.config.settings import load_settings
    from training.recipes import DEFAULT_RECIPES, DEFAULT_SEED
    from training.register import train_and_register

    for tag in load_settings(ROOT / "configuration.yaml").tags():
        name, version = tag.split(":")
        train_and_register(name, version, DEFAULT_RECIPES[tag], DEFAULT_SEED)


def run(wrk: str, args: argparse.Namespace) -> None:
    numeric = [json.dumps({"instances": [row]}) for row in bench_rows().tolist()]
    titanic = [json.dumps({"instances": [record]}) for record in titanic_records()]
    servers = {name: start_server(ROOT / "configuration.yaml", env) for name, env in SETTINGS.items()}
    results: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    try:
        for round_ in range(args.rounds):
            for model, version, bodies in (
                (BENCH_MODEL, BENCH_VERSION, numeric),
                (TITANIC_MODEL, TITANIC_VERSION, titanic),
            ):
                for setting, server in servers.items():
                    front = Front(setting, server, "wrk", f"/v1/models/{model}/versions/{version}/predict", bodies)
                    before = cpu_seconds(server)
                    time.sleep(0.5)
                    requests, errors, rps, p50, p99 = run_wrk(wrk, front, args.concurrency, args.seconds)
                    cpu_ms = 1000 * (cpu_seconds(server) - before) / max(requests, 1)
                    assert errors == 0, f"{errors} errors with drift counting {setting}"
                    results.setdefault((f"{model}:{version}", setting), []).append((rps, p50, p99, cpu_ms))
                    print(f"round {round_} {model}:{version} drift {setting}: {rps:,.0f} req/s, p50 {p50:.2f} ms")
    finally:
        for server in servers.values():
            server.stop()
    write_report(results, counting_cost(), args)


def counting_cost() -> dict[str, float]:
    """Microseconds to count one batch of 1 and of 64 rows, in-process (the model thread's share)."""
    import timeit

    from model_server.models.drift_reference import DriftReference
    from model_server.models.registry import load

    found = {}
    for tag in (f"{BENCH_MODEL}:{BENCH_VERSION}", f"{TITANIC_MODEL}:{TITANIC_VERSION}"):
        model = load(tag)
        assert isinstance(model.drift, DriftReference), f"{tag} has no drift reference; register it again"
        if model.schema.has_categorical:
            matrix = model.schema.rows_to_matrix(titanic_records(), 64)
        else:
            matrix = bench_rows()
        reference = model.drift
        for rows in (1, 64):
            batch, output = matrix[:rows], model.infer(matrix[:rows])
            timer = timeit.Timer(functools.partial(reference.count, batch, output))
            found[f"{tag}, {rows} row{'s' if rows > 1 else ''}"] = min(timer.repeat(3, 2000)) / 2000 * 1e6
    return found


def write_report(
    results: dict[tuple[str, str], list[tuple[float, float, float, float]]],
    cost: dict[str, float],
    args: argparse.Namespace,
) -> None:
    lines = [
        "# Drift counting: cost on plain predictions",
        "",
        f"Written by `python -m bench.drift` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: two servers "
        "(configuration.yaml, 2 workers each) in one run, drift counting on and off "
        f"(`MODEL_SERVER_DRIFT_COUNTING=false`), loaded in turn by wrk with {args.concurrency} connections "
        f"for {args.seconds:g} s per phase, {args.rounds} rounds; one row per request on "
        "POST /v1/models/{name}/versions/{version}/predict. Means over the rounds. The machine's 2 cores "
        "were shared with other work, so compare the two settings of one round rather than with other reports.",
        "",
        "| Tag | drift counting | req/s | p50 ms | p99 ms | server CPU ms per request |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for (tag, setting), measured in results.items():
        rps, p50, p99, cpu = np.mean(np.array(measured), axis=0)
        lines.append(f"| {tag} | {setting} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.3f} |")
    lines += [
        "",
        "Counting on, relative to off: throughput, and server CPU per request (the steadier figure "
        "on a shared machine):",
        "",
    ]
    for tag in dict.fromkeys(tag for tag, _ in results):
        on, off = (np.mean(np.array(results[(tag, setting)]), axis=0) for setting in ("on", "off"))
        lines.append(f"- {tag}: {100 * (on[0] / off[0] - 1):+.1f} % req/s, {100 * (on[3] / off[3] - 1):+.1f} % CPU")
    lines += ["", "Counting one batch in-process (best of 3 x 2,000 calls):", ""]
    lines += [f"- {what}: {micro:.1f} µs" for what, micro in cost.items()]
    text = "\n".join(lines) + "\n"
    (RESULTS / "drift.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
