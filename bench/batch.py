"""Batch scoring throughput: the local engine, Spark local[2], and plain scikit-learn.

    .venv/bin/python -m bench.batch [--rows 1000000 4000000] [--no-spark]

For a numeric table (breast_cancer-like, scored by breast_cancer:v2, gradient boosting) and
a categorical one (titanic-like, titanic:v1), both with their ONNX export, at each size:
the rows/s of `pipeline.predict_proba` over the whole pandas frame in this process (the
frame read beforehand, not timed), of `python -m scoring` (the local engine) and of
`python -m scoring --engine spark --master local[2]` (each in its own process; rows/s over
the job's own time, from the output's summary, and the process's wall time beside it),
the same Spark job run a second time in one session (bench/spark_second_job.py: a JVM that
has run a job before), and the local engine's peak RSS. Spark's job time starts once its
Python workers are up, as the local engine's starts after its imports (docs/batch.md).
Writes bench/results/batch.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq

from bench.batch_tables import ID, write_parquet
from scoring.job import BATCH_ROWS, METADATA_KEY, SUMMARY_FILE

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "bench" / "results" / "batch.md"
KINDS = {"numeric": ("breast_cancer:v2", "measurements"), "categorical": ("titanic:v1", "passengers")}
# Targets of issue 28.
LOCAL_OVER_SKLEARN = 3.0
SPARK_OVER_LOCAL = 0.7
RSS_GROWTH = 0.10
# The Spark job run twice in one session (bench/spark_second_job.py): the second's figures.
SECOND_JOB = "spark, a session's second job"


@dataclass
class Run:
    kind: str
    tag: str
    rows: int
    engine: str
    seconds: float  # the job's own time (scikit-learn: predict_proba alone)
    wall: float  # the process's, start-up included
    rss_mb: float | None = None
    cpu: float | None = None  # CPU seconds of the job, every thread (not measured for Spark)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--no-spark", action="store_true", help="skip the Spark engine")
    parser.add_argument("--keep-data", help="a folder to keep (and reuse) the generated tables in")
    args = parser.parse_args()
    _ensure_trained([tag for tag, _ in KINDS.values()])
    folder = Path(args.keep_data or tempfile.mkdtemp(prefix="bench-batch-"))
    folder.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    try:
        for kind, (tag, table) in KINDS.items():
            for rows in args.rows:
                data = folder / f"{table}-{rows}.parquet"
                if not data.exists():
                    write_parquet(data, table, rows, seed=rows)
                runs.append(plain_sklearn(kind, tag, data, rows))
                runs.append(model_alone(kind, tag, data, rows))
                runs.append(engine(kind, tag, data, rows, folder, "local"))
                first = len(runs) - 3
                if not args.no_spark:
                    runs.append(engine(kind, tag, data, rows, folder, "spark"))
                    runs.append(engine(kind, tag, data, rows, folder, SECOND_JOB))
                print(*(f"{r.kind} {r.rows:,} {r.engine}: {r.rate:,.0f} rows/s" for r in runs[first:]), sep="\n")
    finally:
        if not args.keep_data:
            shutil.rmtree(folder, ignore_errors=True)
    text = report(runs, args)
    REPORT.write_text(text)
    print(text)


def plain_sklearn(kind: str, tag: str, data: Path, rows: int) -> Run:
    """`predict_proba` of the tag's pipeline over the whole frame, as a notebook would."""
    import bentoml

    from model_server.models import registry

    schema = registry.stored_schema(tag)
    pipeline = bentoml.sklearn.load_model(tag)
    frame = pq.read_table(data, columns=schema.names).to_pandas()
    inputs = frame if schema.frame_input else frame.to_numpy()
    started, cpu = time.perf_counter(), time.process_time()
    pipeline.predict_proba(inputs)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    del frame, inputs
    return Run(kind, tag, rows, "scikit-learn", seconds, seconds, cpu=cpu)


def model_alone(kind: str, tag: str, data: Path, rows: int) -> Run:
    """The tag's ONNX export alone: onnxruntime's run on one thread over the same rows, in
    the engines' batches, their inputs built beforehand (not timed). Its CPU per row is
    what any engine on this runtime pays at least: the ceiling of the local engine's speed
    over scikit-learn's, with the same cores, is scikit-learn's CPU per row over this one."""
    import numpy as np

    from model_server.models import registry
    from model_server.models.onnx_runtime import OnnxModel, onnx_inputs

    artifact = registry.scoring_artifact(tag, "onnx")
    schema = artifact.schema
    model = OnnxModel(artifact.onnx or b"", schema, 1, artifact.onnx_inputs)
    frame = pq.read_table(data, columns=schema.names).to_pandas()
    matrix = frame.to_numpy(dtype=object if schema.has_categorical else np.float64)
    del frame
    seconds = cpu = 0.0
    for start in range(0, rows, BATCH_ROWS):
        inputs = onnx_inputs(schema, matrix[start : start + BATCH_ROWS], artifact.onnx_inputs)
        clock, used = time.perf_counter(), time.process_time()
        model.session.run(None, inputs)
        seconds += time.perf_counter() - clock
        cpu += time.process_time() - used
    return Run(kind, tag, rows, "onnxruntime alone", seconds, seconds, cpu=cpu)


def engine(kind: str, tag: str, data: Path, rows: int, folder: Path, name: str) -> Run:
    """`python -m scoring` in its own process (for SECOND_JOB, bench.spark_second_job):
    the job's time from its summary, the process's wall time and peak RSS."""
    slug = "spark-second-job" if name == SECOND_JOB else name
    output = folder / f"out-{slug}"
    for leftover in (output, Path(f"{output}.drift.json")):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif leftover.exists():
            leftover.unlink()
    spark = name in ("spark", SECOND_JOB)
    module = "bench.spark_second_job" if name == SECOND_JOB else "scoring"
    command = [sys.executable, "-m", module, "--model", tag, "--input", str(data), "--output", str(output)]
    command += ["--keep", ID]
    if spark:
        command += ["--engine", "spark", "--master", "local[2]"]
    started = time.perf_counter()
    logs = folder / f"{slug}.log"
    cpu = _TreeCpu()
    with open(logs, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        peak = 0
        polls = 0
        while process.poll() is None:
            peak = max(peak, _high_water_kb(process.pid))
            if spark and polls % 5 == 0:
                cpu.sample(process.pid)
            polls += 1
            time.sleep(0.05)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{logs.read_text()[-3000:]}")
    if spark:
        summary = json.loads((output / SUMMARY_FILE).read_text())
    else:
        summary = json.loads(pq.ParquetFile(output).metadata.metadata[METADATA_KEY.encode()])
    assert summary["rows"] == rows and summary["runtime"] == "onnx"
    # The local engine's process; Spark's work happens in its JVM and the JVM's Python workers.
    rss = peak / 1024 if name == "local" else None
    job_cpu = summary.get("cpu_seconds")
    if spark:  # every process of the run (driver, JVM, Python workers) while the job ran
        begun = datetime.fromisoformat(summary["started_at"]).timestamp()
        job_cpu = cpu.between(begun, begun + float(summary["seconds"]))
    return Run(kind, tag, rows, name, float(summary["seconds"]), wall, rss, job_cpu)


class _TreeCpu:
    """The CPU seconds of a process and all its descendants, sampled now and then: each
    process's last reading counts (one that lives between two samples is missed)."""

    def __init__(self) -> None:
        self.last: dict[int, float] = {}
        self.samples: list[tuple[float, float]] = []  # (time.time(), CPU seconds so far)
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self, root: int) -> None:
        children: dict[int, list[int]] = {}
        times: dict[int, float] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry.name)
            children.setdefault(int(fields[1]), []).append(pid)
            times[pid] = (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime
        waiting = [root]
        while waiting:
            pid = waiting.pop()
            if pid in times:
                self.last[pid] = times[pid]
            waiting.extend(children.get(pid, []))
        self.samples.append((time.time(), sum(self.last.values())))

    def between(self, start: float, end: float) -> float | None:
        """The CPU seconds spent from `start` to `end` (the samples nearest to them)."""
        if not self.samples:
            return None

        def at(moment: float) -> float:
            return min(self.samples, key=lambda sample: abs(sample[0] - moment))[1]

        return at(end) - at(start)


def _high_water_kb(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM, which exec resets: a forked child's
    ru_maxrss would count the parent's memory at the fork)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _spark_session() -> str:
    """How the command started Spark's sessions (docs/batch.md, the fixed cost of a Spark job)."""
    from scoring import spark_classes

    archive = "without a class archive"
    if spark_classes.java_options():
        archive = "with the class archive of `make batch-setup`"
    return f"Its sessions start their Python workers from the installed pyspark, and their JVM {archive}."


def report(runs: list[Run], args: argparse.Namespace) -> str:
    load = os.getloadavg()[0]
    command = "python -m bench.batch --rows " + " ".join(str(r) for r in args.rows)
    lines = [
        "# Batch scoring throughput",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} ({os.cpu_count()} cores, load "
        f"average {load:.1f} at the end) with `{command}`{' --no-spark' if args.no_spark else ''}. *rows/s* is over "
        "the job's own time (read, check, predict, write; scikit-learn: `predict_proba` alone over a frame read "
        "beforehand; onnxruntime alone: the export's run on one thread, its inputs built beforehand); *wall* adds "
        "the process's start-up (imports, the model store; Spark's session). The models "
        "run their ONNX export (the engines) or the pipeline with every core (scikit-learn: gradient boosting "
        "predicts with OpenMP). On a shared machine, "
        "treat the figures as an order of magnitude: *CPU s / M rows* (every thread's CPU time per million "
        "rows while the job ran; for Spark, of every process of the run: the driver, its JVM and the Python "
        "workers, sampled every 0.25 s) depends less on what else runs. Spark's job time starts once the session's "
        "Python workers are up (on local[2] they start, and import the scoring code, while the driver plans the "
        "job), as the local engine's starts after its imports; the wall time holds the rest. *spark, a session's "
        "second job* runs the same job twice in one session and gives the second (its wall time: the process's, "
        "with both jobs)."
        f"{'' if args.no_spark else ' ' + _spark_session()}",
        "",
        "| table | tag | rows | engine | rows/s | x scikit-learn | job (s) | wall (s) | CPU s / M rows "
        "| peak RSS (MB) |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_key = {(r.kind, r.rows, r.engine): r for r in runs}
    for run in runs:
        base = by_key[(run.kind, run.rows, "scikit-learn")]
        rss = f"{run.rss_mb:,.0f}" if run.rss_mb is not None else ""
        cpu = f"{run.cpu / run.rows * 1e6:.1f}" if run.cpu is not None else ""
        lines.append(
            f"| {run.kind} | {run.tag} | {run.rows:,} | {run.engine} | {run.rate:,.0f} | {run.rate / base.rate:.2f} "
            f"| {run.seconds:.1f} | {run.wall:.1f} | {cpu} | {rss} |"
        )
    lines += ["", "Targets (issue 28):", ""]
    for kind in KINDS:
        for rows in args.rows:
            local, plain = by_key.get((kind, rows, "local")), by_key.get((kind, rows, "scikit-learn"))
            spark = by_key.get((kind, rows, "spark"))
            alone = by_key.get((kind, rows, "onnxruntime alone"))
            if local and plain:
                ratio = local.rate / plain.rate
                per_cpu = ""
                if local.cpu and plain.cpu:
                    per_cpu = f"; per CPU second {plain.cpu / local.cpu:.2f}x"
                if alone and alone.cpu and plain.cpu:
                    per_cpu += f" (the model's run alone: {plain.cpu / alone.cpu:.2f}x, the ceiling on equal cores)"
                lines.append(
                    f"- {kind}, {rows:,} rows: local engine {ratio:.2f}x scikit-learn "
                    f"(target {LOCAL_OVER_SKLEARN:g}x): {'met' if ratio >= LOCAL_OVER_SKLEARN else 'not met'}{per_cpu}"
                )
            if local and spark:
                ratio = spark.rate / local.rate
                second = by_key.get((kind, rows, SECOND_JOB))
                warm = f"; a session's second job {second.rate / local.rate:.2f}x" if second else ""
                lines.append(
                    f"- {kind}, {rows:,} rows: Spark local[2] {ratio:.2f}x the local engine (target "
                    f"{SPARK_OVER_LOCAL:g}x): {'met' if ratio >= SPARK_OVER_LOCAL else 'not met'}{warm}; "
                    f"over the commands' wall time {local.wall / spark.wall:.2f}x"
                )
        sizes = sorted(args.rows)
        small, large = by_key.get((kind, sizes[0], "local")), by_key.get((kind, sizes[-1], "local"))
        if len(sizes) > 1 and small and large and small.rss_mb and large.rss_mb:
            growth = large.rss_mb / small.rss_mb - 1
            lines.append(
                f"- {kind}: local engine's peak RSS at {sizes[-1]:,} rows is {growth:+.1%} of {sizes[0]:,} rows' "
                f"(target within {RSS_GROWTH:.0%}): {'met' if abs(growth) <= RSS_GROWTH else 'not met'}"
            )
    return "\n".join(lines) + "\n"


def _ensure_trained(tags: list[str]) -> None:
    from training.recipes import DEFAULT_RECIPES, DEFAULT_SEED
    from training.register import tag_exists, train_and_register

    for tag in tags:
        if not tag_exists(tag):
            name, version = tag.split(":")
            train_and_register(name, version, DEFAULT_RECIPES[tag], DEFAULT_SEED)


if __name__ == "__main__":
    main()
