"""Did a change make the server slower? Two commits' servers, side by side, interleaved.

    .venv/bin/python -m bench.compare_commits BASE [--head HEAD] [--seconds 8] [--rounds 3]
        [--head-inference-log] [--head-tracing RATIO]

Checks out BASE (and HEAD, default: the working tree) in temporary worktrees, trains the
benchmark's tag (bench/workload.py) into a model store of each side's own with that side's
training code, starts both servers (`bentoml serve`, two workers, that tag alone, the
default settings otherwise) on free ports, and loads the JSON API with wrk at 64 and at 1
client(s), alternating the sides in each round so that the machine's noise falls on both.
With --head-inference-log, HEAD serves with the inference log on at sampling 1.0. With
--head-tracing RATIO, HEAD traces that share of its requests and exports their spans over
OTLP/HTTP to a receiver this benchmark runs (it counts what arrives, so the report shows
that tracing was on); `compare_commits HEAD --head-tracing 0.01` is the cost of tracing.
Writes bench/results/compare_commits.md (inference_log_cost.md with --head-inference-log,
tracing_cost.md with --head-tracing) and prints it.
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.run import Front, ensure_tool, run_wrk
from bench.workload import BENCH_MODEL, BENCH_TAG, BENCH_VERSION, bench_rows
from model_server.local_server import free_port

ROOT = Path(__file__).resolve().parents[1]
# (side, clients) -> rps, p50 ms, p99 ms, errors of each round
Results = dict[tuple[str, int], list[tuple[float, float, float, int]]]
REPORT = ROOT / "bench" / "results" / "compare_commits.md"
TRACING_REPORT = ROOT / "bench" / "results" / "tracing_cost.md"
INFERENCE_LOG_REPORT = ROOT / "bench" / "results" / "inference_log_cost.md"
BENTOML = str(Path(sys.executable).parent / "bentoml")
CONFIG = f"""services:
  TabularModelServer:
    workers: 2
    model_server:
      models:
        {BENCH_MODEL}:
          variants: [{{tag: '{BENCH_TAG}'}}]
"""


class Side:
    """One commit's checkout, model store and running server."""

    def __init__(
        self, label: str, checkout: Path, inference_log: bool = False, tracing: tuple[float, str] | None = None
    ) -> None:
        self.label, self.checkout = label, checkout
        self.inference_log = inference_log
        self.tracing = tracing  # (sample ratio, OTLP/HTTP traces endpoint)
        self.home = Path(tempfile.mkdtemp(prefix=f"compare-{label}-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        config = self.home / "configuration.yaml"
        logging = f"      inference_log: {{enabled: true, sample_rate: 1.0, directory: '{self.home / 'log'}'}}\n"
        tracing = f"      tracing: true\n      tracing_sample_ratio: {self.tracing[0]}\n" if self.tracing else ""
        config.write_text(CONFIG + (logging if self.inference_log else "") + tracing)
        exporter = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.tracing[1]} if self.tracing else {}
        return {
            **os.environ,
            **exporter,
            "BENTOML_HOME": str(self.home),
            "BENTOML_CONFIG": str(config),
            "BENTOML_DO_NOT_TRACK": "True",
            "MODEL_SERVER_GRPC_PORT": "0",
        }

    def train(self) -> None:
        command = [sys.executable, "-m", "training", BENCH_MODEL, "--version", BENCH_VERSION]
        subprocess.run([*command, "--algorithm", "gradient_boosting"], cwd=self.checkout, env=self.env(), check=True)

    def start(self) -> None:
        log = (self.home / "serve.log").open("wb")
        command = [BENTOML, "serve", "service:TabularModelServer", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            command, cwd=self.checkout, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.label} did not start: {(self.home / 'serve.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            self.process.wait(30)
        shutil.rmtree(self.home, ignore_errors=True)


@contextmanager
def checkout(revision: str | None) -> Iterator[Path]:
    """A worktree of `revision`, or the working tree itself when None."""
    if revision is None:
        yield ROOT
        return
    where = Path(tempfile.mkdtemp(prefix="compare-checkout-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(where), revision], cwd=ROOT, check=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, check=False)


class SpanReceiver:
    """An OTLP/HTTP endpoint that accepts every export and counts the batches and bytes."""

    def __init__(self) -> None:
        self.batches = self.bytes = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                receiver.batches += 1
                receiver.bytes += length
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def describe(revision: str | None) -> str:
    if revision is None:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return f"working tree ({head.stdout.strip()})"
    out = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the commit to compare against")
    parser.add_argument("--head", default=None, help="the commit to measure (default: the working tree)")
    parser.add_argument("--seconds", type=float, default=8, help="seconds per load phase")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--head-inference-log", action="store_true", help="HEAD logs every answered row")
    parser.add_argument("--head-tracing", type=float, default=None, metavar="RATIO", help="HEAD traces this share")
    args = parser.parse_args(argv)
    receiver = SpanReceiver() if args.head_tracing is not None else None
    wrk = ensure_tool("wrk", "wrk")
    bodies = [f'{{"instances": [{[float(v) for v in row]}]}}' for row in bench_rows()]
    results: Results = {}
    labels = {"base": describe(args.base), "head": describe(args.head)}
    with checkout(args.base) as base_tree, checkout(args.head) as head_tree:
        tracing = (args.head_tracing, receiver.endpoint) if receiver is not None else None
        sides = [Side("base", base_tree), Side("head", head_tree, args.head_inference_log, tracing)]
        try:
            for side in sides:
                side.train()
                side.start()
            for round_ in range(args.rounds):
                for concurrency in (64, 1):
                    for side in sides if round_ % 2 == 0 else reversed(sides):
                        path = f"/v1/models/{BENCH_MODEL}/predict"
                        front = Front(side.label, side, "wrk", path, bodies)  # type: ignore[arg-type]
                        _, errors, rps, p50, p99 = run_wrk(wrk, front, concurrency, args.seconds)
                        results.setdefault((side.label, concurrency), []).append((rps, p50, p99, errors))
                        print(f"round {round_ + 1} {side.label} c={concurrency}: {rps:,.0f} req/s, p99 {p99:.1f} ms")
        finally:
            for side in sides:
                side.stop()
            if receiver is not None:
                receiver.close()
    exported = (receiver.batches, receiver.bytes) if receiver is not None else None
    report = render(labels, results, args, exported)
    if receiver is not None:
        TRACING_REPORT.write_text(report)
    else:
        (INFERENCE_LOG_REPORT if args.head_inference_log else REPORT).write_text(report)
    print(report)
    return 0


def render(
    labels: dict[str, str], results: Results, args: argparse.Namespace, exported: tuple[int, int] | None = None
) -> str:
    tracing = (
        f" with tracing on at sampling {args.head_tracing:g}, exporting to an OTLP/HTTP receiver of the benchmark's"
        if args.head_tracing is not None
        else ""
    )
    lines = [
        "# Two commits side by side",
        "",
        f"Written by `python -m bench.compare_commits` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: base "
        f"`{labels['base']}`, head `{labels['head']}`"
        + (" with the inference log on at sampling 1.0" if args.head_inference_log else "")
        + tracing
        + f"; {BENCH_TAG} (default runtime), JSON `/v1`, one row per "
        f"request, wrk, {args.rounds} interleaved rounds of {args.seconds:.0f} s, 2 workers each, on this 2-core "
        "machine (the load generator shares it).",
        "",
        "| clients | side | req/s (median) | req/s per round | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    medians = {}
    for concurrency in (64, 1):
        for label in ("base", "head"):
            runs = results[(label, concurrency)]
            medians[(label, concurrency)] = statistics.median(r[0] for r in runs)
            lines.append(
                f"| {concurrency} | {label} | {medians[(label, concurrency)]:,.0f} | "
                f"{', '.join(f'{r[0]:,.0f}' for r in runs)} | {statistics.median(r[1] for r in runs):.2f} | "
                f"{statistics.median(r[2] for r in runs):.1f} | {sum(r[3] for r in runs)} |"
            )
    lines.append("")
    for concurrency in (64, 1):
        ratio = medians[("head", concurrency)] / medians[("base", concurrency)]
        lines.append(f"- {concurrency} client(s): head / base = {ratio:.3f}")
    if exported is not None:
        lines.append(f"- spans exported by head: {exported[0]:,} OTLP batches, {exported[1]:,} bytes")
    lines.append(f"- load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
