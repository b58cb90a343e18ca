"""`python -m scoring --engine spark`: on Spark `local[2]` and on a real standalone cluster
(a master and a worker started from pyspark's own launcher on 127.0.0.1), 200,000 generated
passengers get the same output, counts and drift report as the local engine; a job that
cannot run or meets too many invalid rows writes nothing.

Needs Java (Debian's default-jre-headless, tests/system_tools.sh) and pyspark
(requirements-batch.lock). One Spark session serves the module; the cluster runs one job."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from bench.batch_tables import ID, passengers
from scoring.cli import main
from scoring.job import DRIFT_SUFFIX, METADATA_KEY, SUMMARY_FILE
from scoring.spark import C1_ONLY, READ_BY_SPARK, READ_BY_TASKS

# Failing, not skipping: a silent skip would pass CI without Spark ever run.
try:
    import pyspark  # noqa: F401  (installed by `make test` from requirements-batch.lock)
except ImportError:
    pytest.fail("pyspark is missing: `make batch-setup` installs requirements-batch.lock", pytrace=False)
if shutil.which("java") is None:
    pytest.fail("Java is missing: tests/system_tools.sh installs default-jre-headless", pytrace=False)

# Real servers: Spark's driver, and a standalone master and worker on free ports.
pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
ROWS = 200_000


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("table") / "passengers.csv"
    passengers(ROWS, seed=11).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def parquet_table(table: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same passengers as Parquet, every column text as the CSV's: a folder of two part
    files in row groups of 25,000 rows, which the Spark engine's tasks read themselves."""
    names = pacsv.read_csv(table, read_options=pacsv.ReadOptions(block_size=1 << 16)).schema.names
    convert = pacsv.ConvertOptions(
        column_types=dict.fromkeys(names, pa.string()),
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    whole = pacsv.read_csv(table, convert_options=convert)
    folder = tmp_path_factory.mktemp("parquet") / "passengers"
    folder.mkdir()
    half = whole.num_rows // 2
    pq.write_table(whole.slice(0, half), folder / "part-0.parquet", row_group_size=25_000)
    pq.write_table(whole.slice(half), folder / "part-1.parquet", row_group_size=25_000)
    return folder


@pytest.fixture(scope="module")
def local_output(table: Path, trained_default_models: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("local") / "scored.parquet"
    assert (
        main(
            [
                "--model",
                "titanic",
                "--input",
                str(table),
                "--output",
                str(output),
                "--keep",
                ID,
                "--max-invalid",
                "0.05",
            ]
        )
        == 0
    )
    return output


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One Spark local[2] session for the module; the engine uses the active session."""
    from scoring import spark_classes
    from scoring.spark import session

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark_classes.create()  # at once when `make batch-setup` wrote it; checked by its own test
    started = session("local[2]", {}, "scoring tests")
    try:
        yield started
    finally:
        started.stop()


def read_scored(path: Path) -> pa.Table:
    """A scored file or folder, ordered by row id, without the writer's schema metadata."""
    table = ds.dataset(path, format="parquet").to_table() if path.is_dir() else pq.read_table(path)
    return table.sort_by(ID).replace_schema_metadata(None)


def counts(summary: dict[str, Any]) -> tuple[Any, ...]:
    return summary["tag"], summary["runtime"], summary["rows"], summary["valid_rows"], summary["invalid_rows"]


def printed_by(script: str) -> Any:
    """What a Python script run in a process of its own (its own JVM and workers) prints as
    JSON on its last line; it runs in the project's folder, where configuration.yaml says
    which tag serves titanic."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_drift(one: Path, other: Path) -> None:
    first, second = (json.loads(Path(str(p) + DRIFT_SUFFIX).read_text()) for p in (one, other))
    assert first["features"] == second["features"] and first["psi"] == second["psi"]
    assert first["predictions"] == second["predictions"]


def test_spark_local_gives_the_local_engines_output(
    spark: Any, table: Path, local_output: Path, tmp_path: Path
) -> None:
    output = tmp_path / "scored"
    args = ["--model", "titanic", "--input", str(table), "--output", str(output), "--keep", ID, "--max-invalid", "0.05"]
    assert main([*args, "--engine", "spark"]) == 0
    assert read_scored(output).equals(read_scored(local_output))
    parts = [p for p in output.iterdir() if p.name.startswith("part-")]
    assert len(parts) >= 2  # the input was split so that both cores scored
    summary = json.loads((output / SUMMARY_FILE).read_text())
    local = json.loads(pq.ParquetFile(local_output).metadata.metadata[METADATA_KEY.encode()])
    assert summary["engine"] == "spark" and summary["master"] == "local[2]"
    assert summary["read_by"] == READ_BY_SPARK  # CSV: Spark's reader
    assert counts(summary) == counts(local) and local["invalid_rows"] > 0
    same_drift(output, local_output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scored", "scored" + DRIFT_SUFFIX]


def test_spark_tasks_read_parquet_row_groups_themselves_and_give_the_local_engines_output(
    spark: Any, parquet_table: Path, local_output: Path, tmp_path: Path
) -> None:
    name = "scored é 1"  # a name that a URI would quote: Hadoop and pyarrow must agree on it
    output = tmp_path / name
    args = ["--model", "titanic", "--input", str(parquet_table), "--output", str(output), "--keep", ID]
    assert main([*args, "--max-invalid", "0.05", "--engine", "spark"]) == 0
    # The same rows as the CSV's, scored alike; in input order, part by part.
    assert read_scored(output).equals(read_scored(local_output))
    in_order = ds.dataset(output, format="parquet").to_table().replace_schema_metadata(None)
    assert in_order.equals(pq.read_table(local_output).replace_schema_metadata(None))
    parts = sorted(p.name for p in output.iterdir() if p.name.startswith("part-"))
    assert parts == [f"part-0000{i}.parquet" for i in range(4)]  # 8 row groups, 2 cores x 2 tasks
    summary = json.loads((output / SUMMARY_FILE).read_text())
    local = json.loads(pq.ParquetFile(local_output).metadata.metadata[METADATA_KEY.encode()])
    assert summary["read_by"] == READ_BY_TASKS and summary["engine"] == "spark"
    assert counts(summary) == counts(local)
    same_drift(output, local_output)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, name + DRIFT_SUFFIX]
    # Too many invalid rows: exit 3, and nothing written (not even the parts the tasks wrote).
    again = tmp_path / "again"
    assert main([*args[:4], "--output", str(again), "--max-invalid", "0.001", "--engine", "spark"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, name + DRIFT_SUFFIX]


def test_the_session_maps_the_class_archive_and_its_workers_import_pyspark_installed(spark: Any) -> None:
    """What cuts a new session's fixed cost (docs/batch.md): its JVM maps the class archive
    of `make batch-setup` (scoring/spark_classes.py); and its Python workers come from its own
    daemon (scoring/spark_daemon.py), which imports the installed, compiled pyspark, where
    Spark's own would compile the sources in `pyspark.zip` that Spark puts first on the path."""
    from scoring import spark_classes

    assert spark_classes.java_options(), "no whole class archive: see `make batch-setup`'s output"
    record = json.loads(spark_classes.archive().with_suffix(".json").read_text())
    assert record["spark_home"] == str(spark_classes._spark_home(pyspark).resolve())  # so a gone one's is removed
    jvm = spark._jvm.java.lang
    arguments = list(jvm.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert f"-XX:SharedArchiveFile={spark_classes.archive()}" in arguments
    # ... and this JVM accepts it for this class path: with -Xshare:on, one it refused (other
    # jars, another JVM) would stop the JVM, where the session's JVM goes on without it.
    strict = [str(spark_classes._java()), "-Xshare:on", f"-XX:SharedArchiveFile={spark_classes.archive()}"]
    checked = subprocess.run(
        [*strict, "-cp", jvm.System.getProperty("java.class.path"), "-version"], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    assert "SharedArchiveFile" not in os.environ.get("SPARK_SUBMIT_OPTS", "")  # set for the JVM's start only

    def where(_: int) -> tuple[str, str, bool]:
        import sys

        import pyspark
        import pyspark.worker

        return sys.argv[0], pyspark.worker.__file__, any(path.endswith("pyspark.zip") for path in sys.path)

    daemon, worker_code, zip_on_path = spark.sparkContext.parallelize([0, 1], 2).map(where).collect()[0]
    assert Path(daemon).name == "spark_daemon.py"
    assert Path(worker_code) == Path(pyspark.__file__).parent / "worker.py"  # the driver's, not the zip's
    assert zip_on_path  # still there, after the installed package: pyspark as Spark ships it


def test_a_session_after_an_earlier_ones_stop_keeps_sparks_own_workers(tmp_path: Path) -> None:
    """A notebook: a session of the user's own, stopped, then scoring's. pyspark runs both
    in one JVM, started without scoring's environment, so scoring's session must not name
    its daemon there (its workers could not find it outside the project's folder)."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})  # the driver finds the project; the JVM's environment does not
from pyspark.sql import SparkSession
first = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
first.stop()
from scoring.spark import session
second = session("local[2]", {{}}, "after a stop")
print(second.sparkContext.parallelize([1, 2], 2).map(lambda x: x * 2).sum())
print(second.sparkContext.getConf().get("spark.python.daemon.module", "pyspark.daemon"))
second.stop()
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the project's folder, as a notebook's
        timeout=300,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYSPARK_PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["6", "pyspark.daemon"]


def test_a_jobs_tasks_run_in_workers_already_up_and_only_spark_reader_makes_a_sql_session(
    parquet_table: Path, table: Path, trained_default_models: list[str], tmp_path: Path
) -> None:
    """In a process of its own (its own JVM and workers): on local[2] both engines' paths
    start every core's Python worker, with the scoring code imported, before the job's
    clock; the job's tasks then run in those workers. Plain tasks and Arrow functions get
    workers of their own kinds. Reading Parquet with the tasks makes no SQL session (about a
    second of a session's start); reading CSV with Spark's reader makes one."""
    script = f"""
import json, os, sys
sys.path.insert(0, {str(ROOT)!r})
from pyspark.sql import SparkSession
from scoring import spark as engine
from scoring.cli import main

seen = []
finish = engine._finish
def observed(context, job, files, report, scorer, temporary, start, score, shipped, read_by):
    seen.append({{"read_by": read_by, "sql_session": SparkSession.getActiveSession() is not None}})
    return finish(context, job, files, report, scorer, temporary, start, score, shipped, read_by)
engine._finish = observed

started = []
class Workers(engine._Workers):
    def wait(self):  # once before the clock, again (at once) when the job is done
        joining = self._thread is not None
        super().wait()
        if joining:
            started.append(list(self.started))
engine._Workers = Workers

def loaded(_):
    scoring_code = ("onnxruntime", "scoring.spark", "model_server.models.scoring")
    return os.getpid(), all(name in sys.modules for name in scoring_code)

context = engine.start_context("local[2]", {{}}, "workers")
common = ["--model", "titanic", "--keep", "row_id", "--max-invalid", "0.05", "--engine", "spark"]
assert main([*common, "--input", {str(parquet_table)!r}, "--output", {str(tmp_path / "from-parquet")!r}]) == 0
tasks = context.parallelize(range(2), 2).map(loaded).collect()
assert main([*common, "--input", {str(table)!r}, "--output", {str(tmp_path / "from-csv")!r}]) == 0
arrow = [tuple(row) for row in SparkSession.getActiveSession().range(2, numPartitions=2).mapInArrow(
    lambda batches: iter([__import__("pyarrow").RecordBatch.from_pylist([dict(zip(("pid", "loaded"), loaded(0)))])]),
    "pid long, loaded boolean").collect()]
context.stop()
print(json.dumps({{"seen": seen, "started": started, "tasks": tasks, "arrow": arrow}}))
"""
    found = printed_by(script)
    assert found["seen"] == [
        {"read_by": READ_BY_TASKS, "sql_session": False},
        {"read_by": READ_BY_SPARK, "sql_session": True},
    ]
    for_tasks, for_arrow = found["started"]  # each job's workers, up before its clock started
    assert len(set(for_tasks)) == 2 and len(set(for_arrow)) == 2 and not set(for_tasks) & set(for_arrow)
    # Later tasks of each kind run in those workers, where the scoring code is imported.
    assert {pid for pid, _ in found["tasks"]} <= set(for_tasks) and all(ok for _, ok in found["tasks"])
    assert {pid for pid, _ in found["arrow"]} <= set(for_arrow) and all(ok for _, ok in found["arrow"])


def test_commands_that_start_and_stop_their_own_context_one_after_another(
    parquet_table: Path, table: Path, trained_default_models: list[str], tmp_path: Path
) -> None:
    """Two Spark jobs in one process with no active session (a notebook calling the command
    twice): each starts its own context and stops it without waiting for pyspark's
    accumulator server, whose shutdown ends in a thread of its own. The first reads
    Parquet with its tasks, so the JVM it starts compiles with C1 alone; the second runs in
    that JVM (pyspark keeps one per process) and reads CSV with Spark's reader, whose
    counts travel through accumulators: still exact."""
    script = f"""
import json, sys, time
sys.path.insert(0, {str(ROOT)!r})
from pyspark import SparkContext
from scoring import spark as engine
from scoring.cli import main

servers = []  # each command's accumulator server, as its context is stopped
stop = engine._stop
def observed(started):
    servers.append(getattr(started, "sparkContext", started)._accumulatorServer)
    return stop(started)
engine._stop = observed

common = ["--model", "titanic", "--max-invalid", "0.05", "--engine", "spark", "--master", "local[2]"]
summaries, arguments = [], []
for name, source in (("first", {str(parquet_table)!r}), ("second", {str(table)!r})):
    output = {str(tmp_path)!r} + "/" + name
    assert main([*common, "--input", source, "--output", output]) == 0
    assert SparkContext._active_spark_context is None
    summaries.append(json.load(open(output + "/_scoring.json")))
    management = SparkContext._jvm.java.lang.management.ManagementFactory
    arguments.append(list(management.getRuntimeMXBean().getInputArguments()))
deadline = time.monotonic() + 10
while any(server.socket.fileno() != -1 for server in servers) and time.monotonic() < deadline:
    time.sleep(0.05)
closed = [server.socket.fileno() == -1 for server in servers]
print(json.dumps({{"summaries": summaries, "arguments": arguments, "closed": closed}}))
"""
    found = printed_by(script)
    first, second = found["summaries"]
    assert (first["read_by"], second["read_by"]) == (READ_BY_TASKS, READ_BY_SPARK)
    assert counts(first) == counts(second) and first["rows"] == ROWS and first["invalid_rows"] > 0
    assert C1_ONLY in found["arguments"][0] and found["arguments"][1] == found["arguments"][0]  # one JVM
    assert found["closed"] == [True, True]  # each command's accumulator server ends, in its own thread


def test_under_spark_submit_the_driver_sees_its_master(tmp_path: Path) -> None:
    """`spark-submit --master URL scoring/__main__.py ...` without scoring's own --master:
    the master is spark-submit's (its JVM holds it), so a remote one does not put the driver
    on 127.0.0.1 where its executors could not reach it. Nothing connects to the master."""
    script = tmp_path / "master.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from scoring.spark import _loopback, master_of\n"
        "print(master_of(None), _loopback(master_of(None)), master_of('local[3]'))\n"
    )
    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    done = subprocess.run(
        [str(submit), "--master", "spark://192.0.2.10:7077", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-3:] == ["spark://192.0.2.10:7077", "False", "local[3]"]


def test_spark_jobs_that_cannot_run_or_meet_too_many_invalid_rows_write_nothing(
    spark: Any, table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = tmp_path / "in"
    small.mkdir()
    passengers(5_000, seed=3).drop(columns=["sex"]).to_csv(small / "no_sex.csv", index=False)
    passengers(5_000, seed=3).to_csv(small / "flawed.csv", index=False)
    out = tmp_path / "out"
    base = ["--model", "titanic", "--engine", "spark", "--output", str(out)]
    assert main([*base, "--input", str(small / "no_sex.csv")]) == 2
    assert "lacks the column 'sex'" in capsys.readouterr().err
    assert main([*base, "--input", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "--input", str(small / "flawed.csv"), "--max-invalid", "0.001"]) == 3
    assert "are invalid, more than --max-invalid 0.001 allows (5)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_spark_reads_csv_and_parquet_folders_as_the_local_engine_or_fails_saying_why(
    spark: Any, trained_default_models: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spark's CSV reader with the local engine's dialect (doubled quotes, rows of one
    width, each part's header checked), a Parquet folder's other files skipped as the
    local engine skips them, and a failed job's line naming what failed."""
    rows = passengers(2_000, seed=5, flawed=False)
    rows.insert(1, "name", [f'Smith, "Jack {i}"' for i in range(len(rows))])  # written with doubled quotes
    quoted = tmp_path / "quoted"
    quoted.mkdir()
    rows.to_csv(quoted / "part-0.csv", index=False)
    out_local, out_spark = tmp_path / "local.parquet", tmp_path / "spark"
    common = ["--model", "titanic", "--keep", ID, "name", "--input", str(quoted)]
    assert main([*common, "--output", str(out_local)]) == 0
    assert main([*common, "--output", str(out_spark), "--engine", "spark"]) == 0
    local, scored = read_scored(out_local), read_scored(out_spark)
    assert sorted(scored.column("name").to_pylist()) == sorted(rows["name"])
    assert scored.equals(local)
    capsys.readouterr()

    # Columns in another order in one part: Spark would read them by position, so the job fails.
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    rows.iloc[:1_000].to_csv(swapped / "part-0.csv", index=False)
    order = [c for c in rows.columns if c not in ("sibsp", "parch")] + ["parch", "sibsp"]
    rows.iloc[1_000:][order].to_csv(swapped / "part-1.csv", index=False)
    assert (
        main(["--model", "titanic", "--input", str(swapped), "--output", str(tmp_path / "s"), "--engine", "spark"]) == 1
    )
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert "the Spark job failed" in line and "header" in line.lower() and "collectAndServe" not in line, line
    # A Parquet folder with a note beside its parts: the tasks read the parts only.
    noted = tmp_path / "noted"
    noted.mkdir()
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), noted / "part-0.parquet")
    (noted / "README.txt").write_text("scored nightly\n")
    assert (
        main(["--model", "titanic", "--input", str(noted), "--output", str(tmp_path / "n"), "--engine", "spark"]) == 0
    )
    summary = json.loads((tmp_path / "n" / SUMMARY_FILE).read_text())
    assert summary["rows"] == len(rows) and summary["read_by"] == READ_BY_TASKS
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            "quoted",
            "local.parquet",
            "local.parquet.drift.json",
            "spark",
            "spark.drift.json",
            "swapped",
            "noted",
            "n",
            "n.drift.json",
        ]
    )


@dataclass
class LaunchedCluster:
    """A master and a worker being started, their logs in `work`; `starter` starts the
    worker once the master says its URL, or records why it could not."""

    work: Path
    worker_started: threading.Event
    processes: list[subprocess.Popen[bytes]]
    starter: threading.Thread | None = None
    failure: BaseException | None = None


@pytest.fixture(scope="module", autouse=True)
def launched_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaunchedCluster]:
    """A standalone Spark cluster on 127.0.0.1: a master and one worker (2 cores), started
    with pyspark's own bin/spark-class when the module starts (they boot while the other
    tests run) and stopped afterwards. Every port is 0, which the kernel chooses as it
    binds it, so none can be taken meanwhile: the master says its URL in its log, and the
    worker is started with it as soon as it does."""
    home = Path(pyspark.__file__).parent
    work = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_WORKER_DIR": str(work)}
    env["SPARK_MASTER_OPTS"] = "-Dspark.master.rest.enabled=false"  # its own fixed port (6066), unused here
    launched = LaunchedCluster(work, threading.Event(), [])

    def start(name: str, main_class: str, *arguments: str) -> subprocess.Popen[bytes]:
        with open(work / f"{name}.log", "wb") as log:  # the child keeps its own descriptor
            command = [str(home / "bin" / "spark-class"), main_class, "--host", "127.0.0.1", *arguments]
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        launched.processes.append(process)
        return process

    stopping = threading.Event()

    def start_worker_once_the_master_listens(master: subprocess.Popen[bytes]) -> None:
        try:
            while master.poll() is None and not stopping.is_set():
                url = _master_url(work / "master.log")
                if url is not None:
                    arguments = ["--port", "0", "--webui-port", "0", "--cores", "2", "--memory", "2g", url]
                    start("worker", "org.apache.spark.deploy.worker.Worker", *arguments)
                    launched.worker_started.set()
                    return
                stopping.wait(0.2)
        except Exception as exc:  # said by the `cluster` fixture
            launched.failure = exc

    master = start("master", "org.apache.spark.deploy.master.Master", "--port", "0", "--webui-port", "0")
    launched.starter = threading.Thread(target=start_worker_once_the_master_listens, args=(master,), daemon=True)
    launched.starter.start()
    try:
        yield launched
    finally:
        stopping.set()
        launched.starter.join(timeout=30)
        for process in reversed(launched.processes):
            process.terminate()
        for process in launched.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def cluster(launched_cluster: LaunchedCluster) -> str:
    """The cluster's master URL, once its worker is registered."""
    work, starter = launched_cluster.work, launched_cluster.starter
    assert starter is not None
    _wait(lambda: not starter.is_alive(), "the master", work)  # it ends once the worker is started, or cannot be
    if not launched_cluster.worker_started.is_set():
        master_log = (work / "master.log").read_text()[-2000:]
        raise AssertionError(f"no worker started ({launched_cluster.failure!r}); master.log: {master_log}")
    _wait(lambda: (_workers(work / "master.log") or 0) >= 1, "the cluster", work)
    url = _master_url(work / "master.log")
    assert url is not None
    return url


def _master_url(master_log: Path) -> str | None:
    found = re.search(r"Starting Spark master at (spark://\S+)", master_log.read_text())
    return found.group(1) if found else None


def _workers(master_log: Path) -> int | None:
    """How many workers the master counts as alive (None: the master does not answer yet),
    from its web UI, whose port its log says."""
    bound = re.search(r"Bound MasterWebUI to \S+, and started at http://[^:/]+:(\d+)", master_log.read_text())
    if bound is None:
        return None
    try:
        state = httpx.get(f"http://127.0.0.1:{bound.group(1)}/json/", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
    return sum(1 for worker in state.get("workers", []) if worker.get("state") == "ALIVE")


def _wait(ready: Any, what: str, logs: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    tails = "\n".join(f"{log.name}: {log.read_text()[-2000:]}" for log in sorted(logs.glob("*.log")))
    raise AssertionError(f"{what} did not start in {timeout} s:\n{tails}")


@pytest.mark.parametrize("form", ["csv", "parquet"])
def test_a_standalone_cluster_gives_the_same_output(
    cluster: str, table: Path, parquet_table: Path, local_output: Path, tmp_path: Path, form: str
) -> None:
    """The real command against the cluster's master URL, in its own process: CSV through
    Spark's reader, Parquet read by the executors' tasks themselves. The output is named
    relative to the command's working folder, as a user types it; the executors, which run
    elsewhere, get its absolute path."""
    output = tmp_path / "scored"
    source = table if form == "csv" else parquet_table
    done = subprocess.run(
        [sys.executable, "-m", "scoring", "--model", "titanic", "--input", str(source), "--output", "scored"]
        + ["--keep", ID, "--max-invalid", "0.05", "--engine", "spark", "--master", cluster],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        # Outside the project's folder the routing is found through BENTOML_CONFIG.
        env={
            **os.environ,
            "PYSPARK_PYTHON": sys.executable,
            "PYTHONPATH": str(ROOT),
            "BENTOML_CONFIG": str(ROOT / "configuration.yaml"),
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "scored 200,000 rows with titanic:v1 (onnx, spark)" in done.stdout
    assert read_scored(output).equals(read_scored(local_output))
    summary = json.loads((output / SUMMARY_FILE).read_text())
    assert summary["master"] == cluster
    assert summary["read_by"] == (READ_BY_SPARK if form == "csv" else READ_BY_TASKS)
    same_drift(output, local_output)
