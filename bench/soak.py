"""A bounded soak: the JSON API at concurrency 64 for several minutes, in slices.

    .venv/bin/python -m bench.soak [--minutes 5] [--slice 30]

Reports requests, errors (must be zero) and worker RSS after every slice, and writes
bench/results/soak.md.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from bench.run import RESULTS, ROOT, Front, ensure_tool, run_wrk, worker_rss
from bench.workload import BENCH_MODEL, BENCH_VERSION, bench_rows
from model_server.local_server import start_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--slice", type=float, default=30, help="seconds per measured slice")
    args = parser.parse_args()
    wrk = ensure_tool("wrk", "wrk")
    server = start_server(ROOT / "configuration.yaml", {"OMP_NUM_THREADS": "1"})
    rows = [json.dumps({"instances": [r]}) for r in bench_rows().tolist()]
    front = Front("JSON API", server, "wrk", f"/v1/models/{BENCH_MODEL}/versions/{BENCH_VERSION}/predict", rows)
    lines = ["| slice | req/s | p99 ms | errors | worker RSS MiB |", "| ---: | ---: | ---: | ---: | --- |"]
    start_rss = worker_rss(server)
    total_requests = total_errors = 0
    try:
        for index in range(max(1, round(args.minutes * 60 / args.slice))):
            requests, errors, rps, _, p99 = run_wrk(wrk, front, 64, args.slice)
            total_requests += requests
            total_errors += errors
            rss = worker_rss(server)
            lines.append(f"| {index + 1} | {rps:.0f} | {p99:.1f} | {errors} | {rss} |")
            print(lines[-1], flush=True)
    finally:
        end_rss = worker_rss(server)
        server.stop()
    growth = [100 * (b - a) / a for a, b in zip(start_rss, end_rss, strict=False)]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = [
        f"# Soak: {args.minutes:g} minutes at concurrency 64, JSON API, {BENCH_MODEL}:{BENCH_VERSION}",
        "",
        f"Run {when}. {total_requests} requests, {total_errors} errors. Worker RSS {start_rss} MiB at start, "
        f"{end_rss} MiB at the end ({', '.join(f'{g:+.1f} %' for g in growth)}).",
        "",
        *lines,
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.md").write_text("\n".join(report))
    print("\n".join(report))
    if total_errors:
        raise SystemExit(f"{total_errors} errors during the soak")


if __name__ == "__main__":
    main()
