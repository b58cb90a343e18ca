"""How scoring starts a Spark session on this machine (scoring/spark.py's launch_settings):
the JVM's class archive (scoring/spark_classes.py) and the Python workers' daemon
(scoring/spark_daemon.py), and how the user's own settings and environment win. No Spark
session runs here (one test starts the archive's writer with a java that fails);
tests/test_scoring_spark.py checks that a real session uses both."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import pytest

from scoring import spark_classes
from scoring.spark import C1_ONLY, DAEMON_MODULE_KEY, JVM_OPTIONS_KEY, SUBMIT_OPTIONS, launch_settings, read_by_tasks
from scoring.spark_daemon import installed_first, zip_version

ROOT = Path(__file__).resolve().parent.parent
SPARK = "/venv/lib/python3.11/site-packages/pyspark"


def test_the_daemon_puts_sparks_zips_and_jars_after_every_other_path() -> None:
    shipped = [f"{SPARK}/python/lib/pyspark.zip", f"{SPARK}/python/lib/py4j-0.10.9.9-src.zip", f"{SPARK}/jars/core.jar"]
    others = ["/job", "/usr/lib/python311.zip", "/home/me/pyspark-jobs/deps.zip", "/venv/lib/python3.11/site-packages"]
    assert installed_first([others[0], *shipped, *others[1:]]) == others + shipped
    assert installed_first(others) == others


def test_the_daemon_reads_the_version_of_sparks_zip(tmp_path: Path) -> None:
    shipped = tmp_path / "pyspark.zip"
    with zipfile.ZipFile(shipped, "w") as archive:
        archive.writestr("pyspark/version.py", '__version__: str = "4.3.0"\n')
    assert zip_version(["/job", str(shipped)]) == "4.3.0"
    assert zip_version(["/job"]) is None
    shipped.write_bytes(b"not a zip")
    assert zip_version([str(shipped)]) is None  # then the path stays as Spark made it


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "spark-7132c1b6-4.3.0-0123456789abcdef.jsa"
    monkeypatch.setattr(spark_classes, "archive", lambda: path)
    return path


def whole(archive: Path, size: int = 10) -> str:
    archive.write_bytes(b"x" * size)
    archive.with_suffix(".json").write_text(json.dumps({"bytes": size}))
    return f"-XX:SharedArchiveFile={archive} {spark_classes.QUIET}"


def test_a_local_session_gets_the_daemon_and_the_archive_through_its_jvms_environment(archive: Path) -> None:
    sharing = whole(archive)
    conf, environment = launch_settings("local[2]", {"spark.executor.memory": "1g"}, {})
    assert conf == {"spark.executor.memory": "1g", DAEMON_MODULE_KEY: "scoring.spark_daemon"}
    assert environment == {SUBMIT_OPTIONS: sharing, "PYTHONPATH": str(ROOT)}
    # The user's environment is kept, and their JVM options (of --conf or spark-defaults.conf)
    # are not touched: spark-submit adds SPARK_SUBMIT_OPTS beside them.
    own = {SUBMIT_OPTIONS: "-Xmx2g", "PYTHONPATH": "/mine"}
    conf, environment = launch_settings("local[*]", {JVM_OPTIONS_KEY: "-Dlog4j.configurationFile=x"}, own)
    assert conf[JVM_OPTIONS_KEY] == "-Dlog4j.configurationFile=x"
    assert environment == {SUBMIT_OPTIONS: f"-Xmx2g {sharing}", "PYTHONPATH": os.pathsep.join(["/mine", str(ROOT)])}


def test_a_standalone_cluster_on_this_machine_gets_the_archive_only(archive: Path) -> None:
    sharing = whole(archive)
    conf, environment = launch_settings("spark://127.0.0.1:7077", {}, {})
    assert conf == {} and environment == {SUBMIT_OPTIONS: sharing}  # its executors start their own workers


def test_the_users_daemon_other_python_and_own_class_sharing_win(archive: Path) -> None:
    whole(archive)
    assert DAEMON_MODULE_KEY not in launch_settings("local[2]", {}, {"PYSPARK_PYTHON": "/other/venv/bin/python"})[0]
    assert DAEMON_MODULE_KEY not in launch_settings("local[2]", {"spark.pyspark.python": "/other/python"}, {})[0]
    assert launch_settings("local[2]", {}, {"PYSPARK_PYTHON": sys.executable})[0][DAEMON_MODULE_KEY]
    conf, _ = launch_settings("local[2]", {DAEMON_MODULE_KEY: "pyspark.daemon"}, {})
    assert conf == {DAEMON_MODULE_KEY: "pyspark.daemon"}
    for own in ({JVM_OPTIONS_KEY: "-Xshare:off"}, {JVM_OPTIONS_KEY: "-XX:SharedArchiveFile=/mine.jsa"}):
        assert SUBMIT_OPTIONS not in launch_settings("local[2]", own, {})[1]
    assert SUBMIT_OPTIONS not in launch_settings("local[2]", {}, {SUBMIT_OPTIONS: "-XX:ArchiveClassesAtExit=/a"})[1]


def test_a_local_jvm_whose_tasks_read_the_rows_compiles_with_c1_alone(archive: Path) -> None:
    sharing = whole(archive)
    assert launch_settings("local[2]", {}, {}, tasks_read=True)[1][SUBMIT_OPTIONS] == f"{sharing} {C1_ONLY}"
    assert launch_settings("local[2]", {}, {})[1][SUBMIT_OPTIONS] == sharing  # Spark's reader: C2's code pays
    assert launch_settings("spark://127.0.0.1:7077", {}, {}, tasks_read=True)[1][SUBMIT_OPTIONS] == sharing
    archive.unlink()
    assert launch_settings("local[2]", {}, {SUBMIT_OPTIONS: "-Xmx2g"}, True)[1][SUBMIT_OPTIONS] == f"-Xmx2g {C1_ONLY}"
    # The user's own choice of compilers wins.
    for own in ({JVM_OPTIONS_KEY: "-XX:TieredStopAtLevel=4"}, {JVM_OPTIONS_KEY: "-XX:-TieredCompilation"}):
        assert SUBMIT_OPTIONS not in launch_settings("local[2]", own, {}, tasks_read=True)[1]
    assert SUBMIT_OPTIONS not in launch_settings("local[2]", {}, {SUBMIT_OPTIONS: "-Xint"}, tasks_read=True)[1]


def test_whether_the_tasks_will_read_the_rows_is_judged_from_the_local_file_system(tmp_path: Path) -> None:
    scored = str(tmp_path / "scored")
    table = tmp_path / "passengers.parquet"
    table.write_bytes(b"PAR1")
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "_SUCCESS").write_bytes(b"")
    (parts / "part-0.snappy.parquet").write_bytes(b"PAR1")
    hive = tmp_path / "hive" / "year=2026"
    hive.mkdir(parents=True)
    (hive / "part-0.parquet").write_bytes(b"PAR1")
    text = tmp_path / "passengers.csv"
    text.write_text("a\n1\n")
    assert read_by_tasks(str(table), scored) and read_by_tasks(f"file:{table}", scored)
    assert read_by_tasks(str(parts), scored)  # a folder: its first data file's suffix
    assert read_by_tasks(str(text), scored, "parquet")  # the format named wins over the suffix
    assert not read_by_tasks(str(text), scored)  # Spark's reader reads CSV
    assert not read_by_tasks(str(tmp_path / "hive"), scored)  # its keys become columns
    assert not read_by_tasks(str(tmp_path / "absent.parquet"), scored)
    assert not read_by_tasks("s3a://bucket/passengers.parquet", scored)
    assert not read_by_tasks(str(table), "hdfs:///scored")


def test_an_archive_is_used_only_whole_as_recorded_when_written(archive: Path) -> None:
    assert spark_classes.java_options() == ""  # none written
    archive.write_bytes(b"x" * 1000)
    assert spark_classes.java_options() == ""  # no record of its size: not known whole
    archive.with_suffix(".json").write_text(json.dumps({"bytes": 1000}))
    assert spark_classes.java_options() == f"-XX:SharedArchiveFile={archive} {spark_classes.QUIET}"
    archive.write_bytes(b"x" * 600)  # cut short (a full disk): mapping it could crash the JVM
    assert spark_classes.java_options() == ""
    archive.with_suffix(".json").write_text("{")
    assert spark_classes.java_options() == ""
    conf, environment = launch_settings("local[2]", {}, {})
    assert SUBMIT_OPTIONS not in environment  # no archive: the JVM starts as Spark starts it


def test_no_archive_where_its_path_has_a_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "my cache" / "spark-7132c1b6-4.3.0-0123456789abcdef.jsa"
    path.parent.mkdir()
    monkeypatch.setattr(spark_classes, "archive", lambda: path)
    whole(path)
    assert spark_classes.java_options() == ""  # Spark would split the option at the space


def test_a_new_archive_removes_its_installations_stale_ones_and_those_of_installations_gone(
    tmp_path: Path,
) -> None:
    present = tmp_path / "other-venv" / "pyspark"
    (present / "jars").mkdir(parents=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    records = {
        "spark-aaaa1111-4.3.0-0000000000000001": "x",  # this installation, older jars
        "spark-aaaa1111-4.2.0-0000000000000002": "x",  # this installation, older pyspark
        "spark-bbbb2222-4.3.0-0000000000000003": json.dumps({"bytes": 1, "spark_home": str(present)}),
        "spark-cccc3333-4.3.0-0000000000000005": json.dumps({"bytes": 1, "spark_home": str(tmp_path / "deleted")}),
        "spark-dddd4444-4.3.0-0000000000000006": json.dumps({"bytes": 1}),  # written before records said where
        "spark-eeee5555-4.3.0-0000000000000007": "not a record",
        "spark-aaaa1111-4.3.0-0000000000000004": "x",  # the new one
    }
    for name, record in records.items():
        (cache / f"{name}.jsa").write_text("x")
        (cache / f"{name}.json").write_text(record)
    spark_classes.remove_stale(cache / "spark-aaaa1111-4.3.0-0000000000000004.jsa")
    kept = ["0000000000000003", "0000000000000006", "0000000000000007", "0000000000000004"]
    left = sorted(p.name for p in cache.iterdir())
    assert left == sorted(f"{n}{suffix}" for n in records if n.endswith(tuple(kept)) for suffix in (".jsa", ".json"))


@pytest.mark.integration  # the writer's own process starts pyspark (requirements-batch.lock)
def test_a_jvm_that_cannot_start_leaves_no_archive_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real writer in its own process, with a `java` that fails as a broken JVM does."""
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text("#!/bin/sh\necho 'Error: could not create the Java Virtual Machine.' >&2\nexit 1\n")
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(home))
    monkeypatch.setattr(spark_classes, "CACHE", tmp_path / "cache")
    said: list[str] = []
    assert spark_classes.create(said.append) is None
    assert len(said) == 1 and said[0].startswith("spark classes: no archive written")
    assert "could not create the Java Virtual Machine" in said[0]  # the JVM's own words
    assert list((tmp_path / "cache").iterdir()) == []  # nor a half-written one
