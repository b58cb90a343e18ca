"""The Spark engine: the same scoring core over a Spark DataFrame, for tables that outgrow
one machine (`--engine spark`, docs/batch.md).

The driver reads the tag from the model store once and broadcasts its artifact's bytes;
every Python worker builds one scorer from them (`Scorer.shared`). Executors import only
this project's code (shipped with the job as a zip), numpy, pandas, pyarrow and onnxruntime
or scikit-learn, never BentoML. Two ways to the rows:

- Parquet on a file system every node mounts (Hadoop's `file` scheme, the default outside
  HDFS): each task reads its share of the row groups with pyarrow, scores them and writes
  its own part file, as the local engine reads and writes. The JVM only schedules the
  tasks: its Parquet reader, and the conversions of every row to Arrow and back, cost about
  three times the scoring's own CPU (bench/results/batch.md). A task returns its counts
  (rows, invalid rows, drift bins) and writes its part under a name of its own, so a task
  that Spark runs twice writes and counts once.
- Anything else Spark reads (CSV, HDFS, object stores, `--input-format`): a DataFrame whose
  partitions' Arrow batches are scored with `mapInArrow`. Each task adds its partition's
  counts to an accumulator keyed by partition, so a task that runs twice counts once.

The output is written to a temporary folder beside the output and renamed once the job
has passed its checks, through Hadoop's file system API (local paths, HDFS, object stores).

A session that scoring starts on this machine (`local[N]`, a standalone cluster on the
loopback address) starts its JVM with the class archive of `make batch-setup`
(scoring/spark_classes.py); on `local[N]` its Python workers come from the installed
pyspark (scoring/spark_daemon.py) and import the project from its folder. Scoring starts
a Spark context, and a SQL session only for Spark's reader. On `local[N]` every core's
Python worker starts, and imports the scoring code, while the driver plans the job; the
job's clock starts once they are up (docs/batch.md, "The fixed cost of a Spark job").
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from model_server.models.scoring import Scorer, Totals
from scoring import spark_classes
from scoring.job import DRIFT_SUFFIX, SUMMARY_FILE, Job, JobError, Outcome, now, summary_text
from scoring.local import columns_of, nested_feature, refuse_nested
from scoring.sources import open_source, parquet_batches

ENGINE = "spark"
# How the rows reached the scorer (the summary's `read_by`): the tasks themselves, or Spark.
READ_BY_TASKS, READ_BY_SPARK = "tasks (pyarrow)", "Spark's reader (mapInArrow)"
# Aim for at least this many input partitions per core of the session (small inputs are
# split finer than Spark's 128 MiB default so that every core scores).
PARTITIONS_PER_CORE = 2
MIN_PARTITION_BYTES = 1 << 20
FORMAT_PROBE = 1000  # data files looked at for an input folder's format
PROJECT_PACKAGES = ("model_server", "scoring")
DAEMON_MODULE_KEY, JVM_OPTIONS_KEY = "spark.python.daemon.module", "spark.driver.extraJavaOptions"
SUBMIT_OPTIONS = "SPARK_SUBMIT_OPTS"  # the driver JVM's options, read by spark-submit
# The driver JVM's compilers when the tasks read the rows; options of the user's own that
# name the compilers win.
C1_ONLY = "-XX:TieredStopAtLevel=1"
COMPILER_OPTIONS = ("TieredStopAtLevel", "TieredCompilation", "CompileThreshold", "-Xint", "-Xcomp")


class JobFailed(Exception):
    """The Spark job failed while it ran (a lost executor, a read error in a task): exit 1."""

    exit_code = 1


class PartitionTotals:
    """Accumulator of {partition: (rows, invalid, drift counts)}; a partition's second
    report (a task run again) replaces its first."""

    def zero(self, value: dict[int, Any]) -> dict[int, Any]:
        return {}

    def addInPlace(self, value1: dict[int, Any], value2: dict[int, Any]) -> dict[int, Any]:  # noqa: N802 (Spark's name)
        value1.update(value2)
        return value1


def run(
    job: Job, master: str | None = None, conf: dict[str, str] | None = None, report: Callable[[str], None] = print
) -> Outcome:
    """Score the job's input into its output folder with Spark. Uses the active session or
    context (spark-submit, a notebook, tests) or starts a context for `master` and stops it
    after; a SQL session is made only for inputs that Spark's reader reads."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # else workers may lack numpy and pyarrow
    _quiet_pandas_warning()
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    context: Any = active.sparkContext if active else SparkContext._active_spark_context
    started = context is None
    if started:
        tasks_read = read_by_tasks(job.input, job.output, job.input_format)
        context = start_context(master, conf or {}, f"scoring {job.artifact.tag}", tasks_read)
    made: list[Any] = []  # the SQL session _run makes for Spark's reader, if it makes one
    try:
        return _run(context, job, report, made)
    finally:
        if started:
            try:
                _stop(made[0] if made else context)
            except Exception as exc:  # the JVM is gone (often why the job failed): nothing is left to stop
                logging.getLogger(__name__).warning("stopping Spark failed: %s", _first_line(exc))


def _stop(started: Any) -> None:
    """Stop a context (or its SQL session) that scoring started, without waiting for
    pyspark's accumulator server. Its handler polls the JVM's connection once a second and
    the JVM leaves that connection open, so `SparkContext.stop` waits up to a second after
    the JVM has stopped (0.9 s of a 0.1 s stop, docs/batch.md). The server is shut down in
    a thread of its own instead; a process that exits meanwhile closes its TCP socket."""
    context = getattr(started, "sparkContext", started)
    server: Any = getattr(context, "_accumulatorServer", None)
    # A Unix socket's server removes its file as it stops: that one is left to stop().
    detached = server is not None and getattr(server, "address_family", None) != socket.AF_UNIX
    if detached:
        context._accumulatorServer = None  # so that stop() leaves it to the thread below
    try:
        started.stop()
    finally:
        if detached:
            threading.Thread(target=server.shutdown, name="scoring-accumulators-stop", daemon=True).start()


def session(master: str | None, conf: dict[str, str], name: str) -> Any:
    """A Spark SQL session for `master` (see `start_context`), for a notebook or a script
    that scores several tables in one session."""
    start_context(master, conf, name)
    from pyspark.sql import SparkSession

    return SparkSession.builder.getOrCreate()  # on the context just started


def start_context(master: str | None, conf: dict[str, str], name: str, tasks_read: bool = False) -> Any:
    """A Spark context for `master` (Spark's default when None: local[*], or what
    spark-submit says); on a local or loopback master the driver listens on 127.0.0.1.
    No SQL session: the tasks that read Parquet themselves need none, and making one costs
    about a second (docs/batch.md, "The fixed cost of a Spark job"). `tasks_read`: the
    tasks will read the rows, so a new JVM on a local master compiles with C1 alone."""
    _quiet_pandas_warning()
    from pyspark import SparkConf, SparkContext

    seen = master_of(master)
    settings = SparkConf().setAppName(name).set("spark.ui.enabled", "false")
    # Spark's own progress bar on a terminal; none in a log.
    settings.set("spark.ui.showConsoleProgress", "true" if sys.stderr.isatty() else "false")
    if master:
        settings.setMaster(master)
    # A local or loopback master keeps the driver on 127.0.0.1, whatever the host name resolves to.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    on_this_machine = _loopback(seen)
    if on_this_machine:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        settings.set("spark.driver.bindAddress", "127.0.0.1").set("spark.driver.host", "127.0.0.1")
    launch: dict[str, str] = {}
    # Only a JVM that starts now gets them: pyspark keeps one JVM per process, and a session
    # started after an earlier one's stop (a notebook) runs in that JVM, as it was started.
    if on_this_machine and not submitted and SparkContext._gateway is None:
        conf, launch = launch_settings(seen, conf, os.environ, tasks_read)
    for key, value in conf.items():
        settings.set(key, value)
    with _environment(launch):  # what the JVM that pyspark starts inherits
        context = SparkContext.getOrCreate(settings)
    context.setLogLevel("ERROR")
    return context


def master_of(master: str | None) -> str:
    """The master a context started now gets: `master`; else, under spark-submit, its
    --master (held by its JVM, which is already up); else Spark's default, local[*]."""
    from pyspark import SparkConf, SparkContext

    if master:
        return master
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return "local[*]"
    SparkContext._ensure_initialized()  # joins spark-submit's JVM, whose settings SparkConf then reads
    return str(SparkConf().get("spark.master", "local[*]"))


def launch_settings(
    master: str, conf: dict[str, str], environ: Mapping[str, str], tasks_read: bool = False
) -> tuple[dict[str, str], dict[str, str]]:
    """The settings and the environment of the JVM that start a session on this machine
    faster (docs/batch.md, "The fixed cost of a Spark job"), given the user's settings and
    environment; what the user set wins, and what they set elsewhere is kept.

    - The driver's JVM maps the class archive of `make batch-setup` (spark_classes.py):
      its options go in SPARK_SUBMIT_OPTS, which spark-submit adds to the driver's command
      line beside any `spark.driver.extraJavaOptions` (of `--conf` or spark-defaults.conf).
    - On a local master, whose Python workers inherit the JVM's environment, the workers
      come from scoring's daemon (spark_daemon.py), found through PYTHONPATH, when they run
      this interpreter (whose pyspark is the driver's).
    - On a local master whose tasks read the rows themselves (`tasks_read`), the JVM only
      schedules a few tasks: it compiles with C1 alone (`-XX:TieredStopAtLevel=1`), whose
      code is ready sooner, instead of spending seconds of the same cores on C2's.
    """
    conf, environment = dict(conf), {}
    own = f"{conf.get(JVM_OPTIONS_KEY, '')} {environ.get(SUBMIT_OPTIONS, '')}"
    options = []
    sharing = spark_classes.java_options()
    if sharing and not any(word in own for word in ("SharedArchiveFile", "ArchiveClassesAtExit", "Xshare")):
        options.append(sharing)
    if tasks_read and master.startswith("local") and not any(word in own for word in COMPILER_OPTIONS):
        options.append(C1_ONLY)
    if options:
        environment[SUBMIT_OPTIONS] = " ".join([environ.get(SUBMIT_OPTIONS, ""), *options]).strip()
    workers = conf.get("spark.pyspark.python") or environ.get("PYSPARK_PYTHON") or sys.executable
    this_interpreter = Path(shutil.which(workers) or workers).absolute() == Path(sys.executable).absolute()
    if master.startswith("local") and DAEMON_MODULE_KEY not in conf and this_interpreter:
        conf[DAEMON_MODULE_KEY] = "scoring.spark_daemon"
        root = str(Path(__file__).resolve().parent.parent)  # where `python -m scoring.spark_daemon` is found
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, (environ.get("PYTHONPATH"), root)))
    return conf, environment


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in the process's environment for the time of the block, then as before."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run(context: Any, job: Job, report: Callable[[str], None], made: list[Any]) -> Outcome:
    context.addPyFile(_code_zip())
    workers = _Workers(context, job.artifact.onnx is not None)
    try:
        return _run_started(context, job, report, workers, made)
    finally:
        workers.wait()


def _run_started(context: Any, job: Job, report: Callable[[str], None], workers: _Workers, made: list[Any]) -> Outcome:
    from pyspark import TaskContext
    from pyspark.sql import SparkSession
    from pyspark.sql.pandas.types import from_arrow_schema
    from pyspark.sql.types import ArrayType, BinaryType, MapType, StructType
    from pyspark.sql.utils import AnalysisException

    files = _Files(context)
    output = job.output
    if files.exists(output) and not job.overwrite:
        raise JobError(f"output '{output}' exists; pass --overwrite to replace it")
    if not files.exists(job.input):
        raise JobError(f"input '{job.input}' does not exist")
    kind = job.input_format or files.format_of(job.input)
    if kind == "parquet" and files.is_local(job.input) and files.is_local(output):
        if not _partitioned(files.local(job.input)):
            scored = _score_row_groups(context, job, files, workers)
            return _finish(context, job, files, report, *scored, READ_BY_TASKS)
    spark = SparkSession.getActiveSession()
    if spark is None:
        spark = SparkSession.builder.getOrCreate()  # on `context`
        made.append(spark)
    workers.start(spark=spark)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(job.batch_rows))
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(files.partition_bytes(job.input, context)))
    try:
        reader = spark.read.format(kind)
        if kind == "csv":  # read as the local engine reads CSV (scoring/sources.py)
            reader = reader.options(
                header="true",  # every column as text, named by the header
                enforceSchema="false",  # each part's header checked: Spark reads columns by position
                escape='"',  # a quote inside a quoted value is doubled, as RFC 4180 writes it
            )
        frame = reader.load(job.input)
        columns = tuple(frame.columns)
    except AnalysisException as exc:
        raise JobError(f"cannot read '{job.input}' as {kind}: {_first_line(exc)}") from None
    except Exception as exc:  # a file Spark cannot open (py4j's or Spark's own error)
        raise JobError(f"cannot read '{job.input}' as {kind}: {_cause(exc)}") from None
    needed, keep = columns_of(job, columns)
    nested = (ArrayType, MapType, StructType, BinaryType)
    for field in frame.schema.fields:
        if field.name in job.artifact.schema.feature_index and isinstance(field.dataType, nested):
            raise JobError(nested_feature(job, field.name, field.dataType.simpleString()))
    # Quoted: a column named like `yrs.since.phd` is a column, not a field of a struct.
    frame = frame.select(*["`" + name.replace("`", "``") + "`" for name in needed])

    scorer = Scorer(job.artifact, job.explain)  # on the driver: the output's columns, drift, facts
    scoring_fields = from_arrow_schema(pa.schema(scorer.output_fields()))
    kept_fields = [frame.schema[name] for name in keep]
    schema = StructType([*kept_fields, *scoring_fields.fields])

    data = job.artifact.to_bytes()
    digest, explain, kept = job.artifact.digest(), job.explain, list(keep)
    shipped = context.broadcast(data)
    counted = context.accumulator({}, PartitionTotals())

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        worker = Scorer.shared(shipped.value, digest, explain)
        totals = Totals()
        for batch in batches:
            scored = worker.score(batch, kept)
            totals.add(scored)
            yield scored.batch
        task = TaskContext.get()
        counted.add({task.partitionId() if task else 0: totals.to_tuple()})

    temporary = files.sibling(output, f".{files.name(output)}.tmp-{uuid.uuid4().hex[:12]}")
    workers.wait()
    started, clock = now(), time.perf_counter()

    def score() -> Totals:
        frame.mapInArrow(score_partition, schema).write.parquet(temporary)
        totals = Totals()
        for value in counted.value.values():
            totals.add(Totals.from_tuple(value))
        return totals

    return _finish(context, job, files, report, scorer, temporary, (started, clock), score, shipped, READ_BY_SPARK)


class _Workers:
    """On a local master, every core's Python worker started and the scoring code imported
    in it, by a small job in a thread of its own while the driver plans the scoring job.
    Spark keeps those workers for the job's tasks (`spark.python.worker.reuse`), and the
    job's clock starts once they are up, as the local engine's starts after its imports
    (docs/batch.md, "The fixed cost of a Spark job"). On a cluster it does nothing: which
    executors the job's tasks reach is the cluster's choice."""

    def __init__(self, context: Any, onnx: bool) -> None:
        self._context, self._onnx = context, onnx
        self._thread: Any = None  # a thread while the workers start
        self.started: list[int] = []  # the workers' process ids

    def start(self, tasks: int | None = None, spark: Any = None) -> None:
        """Start the workers of plain tasks (as many as the job's `tasks` run at once), or
        with a SQL session `spark` those of Arrow functions (`mapInArrow`, one per core),
        which Spark keeps apart."""
        context = self._context
        reused = context.getConf().get("spark.python.worker.reuse", "true").lower() == "true"
        if not context.master.startswith("local") or not reused or tasks == 0:
            return
        cores = min(max(1, context.defaultParallelism), tasks or sys.maxsize)
        if spark is None:
            job = context.parallelize(range(cores), cores).map(partial(_import_scoring_code, self._onnx))
        else:
            job = spark.range(cores, numPartitions=cores).mapInArrow(
                partial(_import_scoring_code_in_arrow, self._onnx), "worker long"
            )
        from pyspark import InheritableThread  # the caller's job group and scheduler pool reach it

        self._thread = InheritableThread(self._run, args=(job,), name="scoring-workers", daemon=True)
        self._thread.start()

    def _run(self, job: Any) -> None:
        try:
            self.started = [int(row[0]) if isinstance(row, tuple) else int(row) for row in job.collect()]
        except Exception:  # noqa: S110 (the job's own tasks start their workers, and meet the same error)
            pass

    def wait(self) -> None:
        """Until the workers are up (or their start failed)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _import_scoring_code(onnx: bool, _: int) -> int:
    """A task that starts a Python worker: importing this module imports what a scoring
    task needs, and a tag's export needs onnxruntime (its scorer imports it)."""
    if onnx:
        import onnxruntime  # noqa: F401

    return os.getpid()


def _import_scoring_code_in_arrow(onnx: bool, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for _ in batches:
        pass
    yield pa.RecordBatch.from_pydict({"worker": [_import_scoring_code(onnx, 0)]})


Scored = tuple[Scorer, str, tuple[float, float], Callable[[], Totals], Any]


def _score_row_groups(context: Any, job: Job, files: _Files, workers: _Workers) -> Scored:
    """The Parquet input's row groups, split among tasks that read, score and write them
    with pyarrow (what `_finish` runs): the scorer, the temporary folder, the start (once
    the workers are up), the scoring, the broadcast."""
    # Absolute paths: the tasks run in other working folders (and on other hosts).
    # The format as the local engine reads it: named, or by suffix (a folder's other files are skipped).
    source = open_source(str(files.local(job.input)), job.input_format)
    needed, keep = columns_of(job, source.columns)
    refuse_nested(job, source)
    scorer = Scorer(job.artifact, job.explain)
    schema = pa.schema([*(source.field(name) for name in keep), *scorer.output_fields()])
    units = _units(source.files, max(1, context.defaultParallelism) * PARTITIONS_PER_CORE)
    workers.start(tasks=len(units))
    output = files.local(job.output)
    temporary = output.with_name(f".{output.name}.tmp-{uuid.uuid4().hex[:12]}")
    digest, explain, kept, batch_rows = job.artifact.digest(), job.explain, list(keep), job.batch_rows
    shipped = context.broadcast(job.artifact.to_bytes())

    def score_unit(numbered: tuple[int, list[tuple[str, list[int]]]]) -> tuple[int, Any]:
        index, unit = numbered
        worker = Scorer.shared(shipped.value, digest, explain)
        totals = Totals()
        part = temporary / f"part-{index:05d}.parquet"
        # Written under a hidden name, then renamed: a task that runs twice leaves one part,
        # and an attempt that fails leaves none.
        writing = temporary / f".{part.name}.{uuid.uuid4().hex[:12]}"
        try:
            with pq.ParquetWriter(writing, schema, compression="snappy") as writer:
                for path, row_groups in unit:
                    for batch in parquet_batches(path, needed, batch_rows, row_groups):
                        scored = worker.score(batch, kept)
                        totals.add(scored)
                        batch = scored.batch
                        writer.write_batch(batch.cast(schema) if batch.schema != schema else batch)
            os.replace(writing, part)
        except BaseException:
            writing.unlink(missing_ok=True)
            raise
        return index, totals.to_tuple()

    def score() -> Totals:
        temporary.mkdir(parents=True)  # as Spark's writer, which makes the output's folders
        if not units:  # an input without rows: one empty part, so the output has its schema
            pq.write_table(schema.empty_table(), temporary / "part-00000.parquet")
        reports = dict(context.parallelize(list(enumerate(units)), max(1, len(units))).map(score_unit).collect())
        totals = Totals()
        for value in reports.values():
            totals.add(Totals.from_tuple(value))
        return totals

    workers.wait()
    # Hadoop's form of the path (not a URI: Hadoop would not decode `%20`).
    return scorer, "file:" + str(temporary), (now(), time.perf_counter()), score, shipped


def read_by_tasks(source: str, output: str, input_format: str | None = None) -> bool:
    """Whether the tasks will read the rows themselves, judged before a JVM starts from the
    local file system (`_run_started` decides it with Hadoop's, once the JVM is up): the
    input and output are local paths, and the input is Parquet, not partitioned Hive's way.
    A wrong guess only changes how the driver's JVM compiles (`launch_settings`)."""
    if any(urlparse(path).scheme not in ("", "file") for path in (source, output)):
        return False
    path = Path(urlparse(source).path if source.startswith("file:") else source)
    if not path.exists():
        return False
    names = [path.name]
    if path.is_dir():
        data = (p.name for p in path.rglob("*") if p.is_file() and not p.name.startswith(("_", ".")))
        names = list(islice(data, FORMAT_PROBE))
    return (input_format or _format_by_names(names)) == "parquet" and not _partitioned(path)


def _format_by_names(names: list[str]) -> str | None:
    """csv or parquet by the first data file name with either suffix (.gz aside)."""
    for name in names:
        suffix = Path(name.removesuffix(".gz")).suffix.lower()
        if suffix in (".parquet", ".pq"):
            return "parquet"
        if suffix == ".csv":
            return "csv"
    return None


def _partitioned(folder: Path) -> bool:
    """Whether the input is partitioned Hive's way (`year=2026/` folders): Spark's reader
    makes the folders' keys columns, which the tasks' own reading would not."""
    return folder.is_dir() and any("=" in path.name for path in folder.rglob("*") if path.is_dir())


def _units(paths: tuple[Path, ...], wanted: int) -> list[list[tuple[str, list[int]]]]:
    """The files' row groups in order, cut into at most `wanted` runs of about equal rows
    (a run may span files); each run is a list of (file, its row groups)."""
    groups: list[tuple[str, int, int]] = []
    for file in paths:
        metadata = pq.ParquetFile(file).metadata
        groups += [(str(file), i, metadata.row_group(i).num_rows) for i in range(metadata.num_row_groups)]
    total = sum(rows for _, _, rows in groups)
    if not total:
        return []
    share = total / min(wanted, len(groups))
    units: list[list[tuple[str, list[int]]]] = [[]]
    done = 0
    for path, group, rows in groups:
        if done >= share * len(units) and units[-1] and rows:
            units.append([])
        unit = units[-1]
        if unit and unit[-1][0] == path:
            unit[-1][1].append(group)
        else:
            unit.append((path, [group]))
        done += rows
    return units


def _finish(
    context: Any,
    job: Job,
    files: _Files,
    report: Callable[[str], None],
    scorer: Scorer,
    temporary: str,
    start: tuple[float, float],
    score: Callable[[], Totals],
    shipped: Any,
    read_by: str,
) -> Outcome:
    """Run the scoring into `temporary`, then check the job, write its summary and drift
    report, and move the output into place; nothing is left when a check fails."""
    output = job.output
    started, clock = start
    try:
        try:
            totals = score()
        except Exception as exc:
            raise JobFailed(f"the Spark job failed: {_cause(exc)}") from None
        outcome = Outcome(job, ENGINE, totals, started, time.perf_counter() - clock, scorer.explanation_facts())
        outcome.extra["master"] = context.master
        outcome.extra["read_by"] = read_by
        outcome.check_invalid()
        files.write(temporary + "/" + SUMMARY_FILE, summary_text(outcome.summary()) + "\n")
        drift = outcome.drift_report(scorer)
        if drift is not None:
            files.write(output + DRIFT_SUFFIX, summary_text(drift) + "\n")
        elif files.exists(output + DRIFT_SUFFIX):  # it described the output this one replaces
            files.delete(output + DRIFT_SUFFIX)
        if files.exists(output):
            files.delete(output)
        files.rename(temporary, output)
    finally:
        if files.exists(temporary):
            files.delete(temporary)
        shipped.unpersist()
    for line in outcome.lines(output, drift):
        report(line)
    return outcome


class _Files:
    """Hadoop's file system API through the session's JVM: local paths, HDFS, object stores."""

    def __init__(self, context: Any) -> None:
        self._jvm = context._jvm
        self._conf = context._jsc.hadoopConfiguration()

    def _path(self, path: str) -> tuple[Any, Any]:
        hadoop_path = self._jvm.org.apache.hadoop.fs.Path(path)
        fs = hadoop_path.getFileSystem(self._conf)
        fs.setWriteChecksum(False)  # no .crc files beside ours on a local file system
        return hadoop_path, fs

    def is_local(self, path: str) -> bool:
        """Whether `path` is on the local file system (Hadoop's `file` scheme), which every
        task can then read and write with pyarrow as the driver sees it."""
        return str(self._path(path)[1].getScheme()) == "file"

    def local(self, path: str) -> Path:
        """A local path's absolute file system path (without `file:`; a relative path is
        taken from the driver's working folder, as Spark takes it)."""
        where, fs = self._path(path)
        return Path(str(fs.makeQualified(where).toUri().getPath()))

    def exists(self, path: str) -> bool:
        where, fs = self._path(path)
        return bool(fs.exists(where))

    def delete(self, path: str) -> None:
        where, fs = self._path(path)
        fs.delete(where, True)

    def rename(self, source: str, target: str) -> None:
        where, fs = self._path(source)
        if not fs.rename(where, self._path(target)[0]):
            raise JobFailed(f"could not rename '{source}' to '{target}'")

    def write(self, path: str, text: str) -> None:
        where, fs = self._path(path)
        stream = fs.create(where, True)
        try:
            stream.write(bytearray(text.encode()))
        finally:
            stream.close()

    def name(self, path: str) -> str:
        return str(self._path(path)[0].getName())

    def sibling(self, path: str, name: str) -> str:
        where = self._path(path)[0]
        parent = where.getParent()
        return str(self._jvm.org.apache.hadoop.fs.Path(parent, name)) if parent is not None else name

    def format_of(self, path: str) -> str:
        """csv or parquet, by the suffix of the path or of the first data file in it."""
        where, fs = self._path(path)
        names = [str(where.getName())]
        if fs.getFileStatus(where).isDirectory():
            found = fs.listFiles(where, True)
            names = []
            while found.hasNext() and len(names) < FORMAT_PROBE:
                name = str(found.next().getPath().getName())
                if not name.startswith(("_", ".")):
                    names.append(name)
        kind = _format_by_names(names)
        if kind is None:
            raise JobError(f"input '{path}' holds no .csv or .parquet file; name its format with --input-format")
        return kind

    def partition_bytes(self, path: str, context: Any) -> int:
        """Split size that gives every core of the session PARTITIONS_PER_CORE partitions at least."""
        where, fs = self._path(path)
        size = int(fs.getContentSummary(where).getLength())
        cores = max(1, context.defaultParallelism)
        return max(MIN_PARTITION_BYTES, min(128 << 20, size // (cores * PARTITIONS_PER_CORE) + 1))


def _code_zip() -> str:
    """This project's packages as one zip for the executors (Python files only)."""
    root = Path(__file__).resolve().parent.parent
    target = Path(tempfile.mkdtemp(prefix="scoring-code-")) / "model_server_scoring.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in PROJECT_PACKAGES:
            for source in sorted((root / package).rglob("*.py")):
                archive.write(source, source.relative_to(root).as_posix())
    return str(target)


def _quiet_pandas_warning() -> None:
    """Scoring hands Spark Arrow batches, never pandas frames: pyspark's warning about
    pandas 3 does not concern it."""
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)


def _loopback(master: str) -> bool:
    if master.startswith("local"):
        return True
    host = urlparse(master).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def _cause(exc: BaseException) -> str:
    """What made a Spark call fail, in one line: the root cause the JVM holds (a task's
    error is a Python traceback, whose last line names it); else the error's first line."""
    root = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)
    try:
        while root is not None and root.getCause() is not None:
            root = root.getCause()
        text = str(root.getMessage() or "") if root is not None else ""
    except Exception:  # the JVM is gone (often why the call failed)
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("SQLSTATE")]
    if not lines:
        return _first_line(exc)
    return (lines[-1] if "Traceback (most recent call last)" in text else lines[0])[:500]


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        line = line.strip()
        if line and not line.startswith(("at ", "Traceback")):
            return line[:500]
    return type(exc).__name__
