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
pyspark (scoring/spark_daemon.py) and import the project from its folder: together about a
second of a session's first job and two of its start (docs/batch.md, "The fixed cost of a
Spark job").
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from model_server.models.scoring import Scorer, Totals
from scoring import spark_classes
from scoring.job import DRIFT_SUFFIX, SUMMARY_FILE, Job, JobError, Outcome, now, summary_text
from scoring.local import columns_of
from scoring.sources import open_source, parquet_batches

ENGINE = "spark"
# How the rows reached the scorer (the summary's `read_by`): the tasks themselves, or Spark.
READ_BY_TASKS, READ_BY_SPARK = "tasks (pyarrow)", "Spark's reader (mapInArrow)"
# Aim for at least this many input partitions per core of the session (small inputs are
# split finer than Spark's 128 MiB default so that every core scores).
PARTITIONS_PER_CORE = 2
MIN_PARTITION_BYTES = 1 << 20
PROJECT_PACKAGES = ("model_server", "scoring")
DAEMON_MODULE_KEY, JVM_OPTIONS_KEY = "spark.python.daemon.module", "spark.driver.extraJavaOptions"
SUBMIT_OPTIONS = "SPARK_SUBMIT_OPTS"  # the driver JVM's options, read by spark-submit


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
    """Score the job's input into its output folder with Spark. Uses the active session
    (spark-submit, a notebook, tests) or starts one for `master` and stops it after."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # else workers may lack numpy and pyarrow
    _quiet_pandas_warning()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    spark = active or session(master, conf or {}, f"scoring {job.artifact.tag}")
    try:
        return _run(spark, job, report)
    finally:
        if active is None:
            spark.stop()


def session(master: str | None, conf: dict[str, str], name: str) -> Any:
    """A Spark session for `master` (Spark's default when None: local[*], or what
    spark-submit says); on a local or loopback master the driver listens on 127.0.0.1."""
    _quiet_pandas_warning()
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(name).config("spark.ui.enabled", "false")
    # Spark's own progress bar on a terminal; none in a log.
    builder = builder.config("spark.ui.showConsoleProgress", "true" if sys.stderr.isatty() else "false")
    if master:
        builder = builder.master(master)
    # A local or loopback master keeps the driver on 127.0.0.1, whatever the host name resolves
    # to. Under spark-submit (whose JVM is already up) the master is its --master.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    on_this_machine = _loopback(master or (SparkConf().get("spark.master", "local[*]") if submitted else "local[*]"))
    if on_this_machine:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
    launch: dict[str, str] = {}
    # Only a JVM that starts now gets them: pyspark keeps one JVM per process, and a session
    # started after an earlier one's stop (a notebook) runs in that JVM, as it was started.
    if on_this_machine and not submitted and SparkContext._gateway is None:
        conf, launch = launch_settings(master or "local[*]", conf, os.environ)
    for key, value in conf.items():
        builder = builder.config(key, value)
    with _environment(launch):  # what the JVM that pyspark starts inherits
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def launch_settings(
    master: str, conf: dict[str, str], environ: Mapping[str, str]
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
    """
    conf, environment = dict(conf), {}
    sharing = spark_classes.java_options()
    own = f"{conf.get(JVM_OPTIONS_KEY, '')} {environ.get(SUBMIT_OPTIONS, '')}"
    if sharing and not any(word in own for word in ("SharedArchiveFile", "ArchiveClassesAtExit", "Xshare")):
        environment[SUBMIT_OPTIONS] = f"{environ.get(SUBMIT_OPTIONS, '')} {sharing}".strip()
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


def _run(spark: Any, job: Job, report: Callable[[str], None]) -> Outcome:
    from pyspark import TaskContext
    from pyspark.sql.pandas.types import from_arrow_schema
    from pyspark.sql.types import StructType
    from pyspark.sql.utils import AnalysisException

    files = _Files(spark)
    output = job.output
    if files.exists(output) and not job.overwrite:
        raise JobError(f"output '{output}' exists; pass --overwrite to replace it")
    if not files.exists(job.input):
        raise JobError(f"input '{job.input}' does not exist")
    kind = job.input_format or files.format_of(job.input)
    if kind == "parquet" and files.is_local(job.input) and files.is_local(output):
        if not _partitioned(files.local(job.input)):
            return _finish(spark, job, files, report, *_score_row_groups(spark, job, files), READ_BY_TASKS)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(job.batch_rows))
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(files.partition_bytes(job.input, spark)))
    try:
        reader = spark.read.format(kind)
        if kind == "csv":
            reader = reader.option("header", "true")  # every column as text, as the local engine reads CSV
        frame = reader.load(job.input)
        columns = tuple(frame.columns)
    except AnalysisException as exc:
        raise JobError(f"cannot read '{job.input}' as {kind}: {_first_line(exc)}") from None
    except Exception as exc:  # a file Spark cannot open (py4j's or Spark's own error)
        raise JobError(f"cannot read '{job.input}' as {kind}: {_first_line(exc)}") from None
    needed, keep = columns_of(job, columns)
    # Quoted: a column named like `yrs.since.phd` is a column, not a field of a struct.
    frame = frame.select(*["`" + name.replace("`", "``") + "`" for name in needed])

    scorer = Scorer(job.artifact, job.explain)  # on the driver: the output's columns, drift, facts
    scoring_fields = from_arrow_schema(pa.schema(scorer.output_fields()))
    kept_fields = [frame.schema[name] for name in keep]
    schema = StructType([*kept_fields, *scoring_fields.fields])

    context = spark.sparkContext
    context.addPyFile(_code_zip())
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
    started, clock = now(), time.perf_counter()

    def score() -> Totals:
        frame.mapInArrow(score_partition, schema).write.parquet(temporary)
        totals = Totals()
        for value in counted.value.values():
            totals.add(Totals.from_tuple(value))
        return totals

    return _finish(spark, job, files, report, scorer, temporary, (started, clock), score, shipped, READ_BY_SPARK)


Scored = tuple[Scorer, str, tuple[float, float], Callable[[], Totals], Any]


def _score_row_groups(spark: Any, job: Job, files: _Files) -> Scored:
    """The Parquet input's row groups, split among tasks that read, score and write them
    with pyarrow (what `_finish` runs): the scorer, the temporary folder, the start, the
    scoring, the broadcast."""
    # Absolute paths: the tasks run in other working folders (and on other hosts).
    source = open_source(str(files.local(job.input)), "parquet")
    needed, keep = columns_of(job, source.columns)
    scorer = Scorer(job.artifact, job.explain)
    schema = pa.schema([*(pq.read_schema(source.files[0]).field(name) for name in keep), *scorer.output_fields()])
    context = spark.sparkContext
    units = _units(source.files, max(1, context.defaultParallelism) * PARTITIONS_PER_CORE)
    output = files.local(job.output)
    temporary = output.with_name(f".{output.name}.tmp-{uuid.uuid4().hex[:12]}")
    context.addPyFile(_code_zip())
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

    # Hadoop's form of the path (not a URI: Hadoop would not decode `%20`).
    return scorer, "file:" + str(temporary), (now(), time.perf_counter()), score, shipped


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
    spark: Any,
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
            raise JobFailed(f"the Spark job failed: {_first_line(exc)}") from None
        outcome = Outcome(job, ENGINE, totals, started, time.perf_counter() - clock, scorer.explanation_facts())
        outcome.extra["master"] = spark.sparkContext.master
        outcome.extra["read_by"] = read_by
        outcome.check_invalid()
        files.write(temporary + "/" + SUMMARY_FILE, summary_text(outcome.summary()) + "\n")
        drift = outcome.drift_report(scorer)
        if drift is not None:
            files.write(output + DRIFT_SUFFIX, summary_text(drift) + "\n")
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

    def __init__(self, spark: Any) -> None:
        self._jvm = spark._jvm
        self._conf = spark._jsc.hadoopConfiguration()

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
            while found.hasNext() and len(names) < 1000:
                name = str(found.next().getPath().getName())
                if not name.startswith(("_", ".")):
                    names.append(name)
        for name in names:
            suffix = Path(name.removesuffix(".gz")).suffix.lower()
            if suffix in (".parquet", ".pq"):
                return "parquet"
            if suffix == ".csv":
                return "csv"
        raise JobError(f"input '{path}' holds no .csv or .parquet file; name its format with --input-format")

    def partition_bytes(self, path: str, spark: Any) -> int:
        """Split size that gives every core of the session PARTITIONS_PER_CORE partitions at least."""
        where, fs = self._path(path)
        size = int(fs.getContentSummary(where).getLength())
        cores = max(1, spark.sparkContext.defaultParallelism)
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


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        line = line.strip()
        if line and not line.startswith(("at ", "Traceback")):
            return line[:500]
    return type(exc).__name__
