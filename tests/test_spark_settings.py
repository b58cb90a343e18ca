"""The settings of the Spark sessions that scoring starts on this machine (scoring/spark.py):
the Python workers' daemon and the JVM's class archive, and how a user's own settings win.
No JVM runs here; tests/test_scoring_spark.py checks a real session uses both."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scoring import spark_classes
from scoring.spark import DAEMON_MODULE_KEY, JVM_OPTIONS_KEY, WORKER_PATH_KEY, _class_archive, _worker_daemon
from scoring.spark_daemon import installed_first

ROOT = Path(__file__).resolve().parent.parent


def test_the_daemon_puts_pysparks_zips_and_jars_after_every_other_path() -> None:
    home = "/venv/lib/python3.11/site-packages/pyspark"
    shipped = [f"{home}/python/lib/pyspark.zip", f"{home}/python/lib/py4j-0.10.9.9-src.zip", f"{home}/jars/core.jar"]
    others = ["/job", "/usr/lib/python311.zip", "/venv/lib/python3.11/site-packages"]
    assert installed_first([others[0], *shipped, *others[1:]]) == others + shipped
    assert installed_first(others) == others


def test_the_daemon_settings_keep_the_users_worker_path_and_give_way_to_the_users_daemon() -> None:
    settings = _worker_daemon({WORKER_PATH_KEY: "/users/own"})
    assert settings == {
        DAEMON_MODULE_KEY: "scoring.spark_daemon",
        WORKER_PATH_KEY: os.pathsep.join(["/users/own", str(ROOT)]),  # where `-m scoring.spark_daemon` is found
    }
    assert _worker_daemon({})[WORKER_PATH_KEY] == str(ROOT)
    assert _worker_daemon({DAEMON_MODULE_KEY: "pyspark.daemon"}) == {}


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "spark-4.3.0-0123456789abcdef.jsa"
    monkeypatch.setattr(spark_classes, "archive", lambda: path)
    return path


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


def test_the_archive_joins_the_users_jvm_options_unless_they_say_how_to_share_classes(archive: Path) -> None:
    assert _class_archive({}) == {}  # no archive: the JVM starts as Spark starts it
    archive.write_bytes(b"x" * 10)
    archive.with_suffix(".json").write_text(json.dumps({"bytes": 10}))
    sharing = f"-XX:SharedArchiveFile={archive} {spark_classes.QUIET}"
    assert _class_archive({}) == {JVM_OPTIONS_KEY: sharing}
    assert _class_archive({JVM_OPTIONS_KEY: "-Xmx2g"}) == {JVM_OPTIONS_KEY: f"-Xmx2g {sharing}"}
    for own in ("-Xshare:off", "-XX:SharedArchiveFile=/mine.jsa", "-XX:ArchiveClassesAtExit=/new.jsa"):
        assert _class_archive({JVM_OPTIONS_KEY: own}) == {}


def test_a_new_archive_removes_its_installations_former_ones_only(tmp_path: Path) -> None:
    names = [
        "spark-aaaa1111-4.3.0-0000000000000001",  # this installation, former jars
        "spark-aaaa1111-4.2.0-0000000000000002",  # this installation, former pyspark
        "spark-bbbb2222-4.3.0-0000000000000003",  # another virtual environment's
        "spark-aaaa1111-4.3.0-0000000000000004",  # the new one
    ]
    for name in names:
        for suffix in (".jsa", ".json"):
            (tmp_path / f"{name}{suffix}").write_text("x")
    spark_classes.remove_former(tmp_path / f"{names[3]}.jsa")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(f"{name}{suffix}" for name in names[2:] for suffix in (".jsa", ".json"))
