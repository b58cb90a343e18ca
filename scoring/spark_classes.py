"""A class data sharing archive for the JVM of the Spark sessions that scoring starts on
this machine (docs/batch.md, "The fixed cost of a Spark job").

A new Spark driver reads, checks and links thousands of classes from Spark's jars before
its first job can run. The JVM can instead map them from an archive it wrote when an
earlier session of the same JVM and the same Spark exited (HotSpot's dynamic class data
sharing). `python -m scoring.spark_classes` (run by `make batch-setup`) starts one session,
runs the kinds of jobs scoring runs, and keeps the archive in the user's cache folder;
the sessions scoring starts on this machine then start their JVM with it
(`scoring.spark.launch_settings`).

A damaged archive can crash the JVM that maps it, so the archive is written under a
temporary name, kept only when the JVM that wrote it exited cleanly, and used only when its
size is still the one recorded beside it. Without an archive (another JVM, another Spark,
no setup), sessions start as Spark starts them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Where archives live: one per pair of JVM and Spark.
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "model-server" / "spark"
# The JVM's own messages about sharing (an archive it cannot use) stay off the job's output.
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"
JVM_EXIT_TIMEOUT = 300


def archive() -> Path | None:
    """This machine's archive for the JVM that Spark would start and this pyspark, named
    `spark-<Spark's folder>-<pyspark's version>-<the JVM and the jars>.jsa` (the folder,
    the JVM and the jars as digests); None without a JVM or pyspark."""
    java = _java()
    if java is None:
        return None
    try:
        import pyspark
    except ImportError:
        return None
    # The JVM refuses an archive whose JVM or jars changed (a reinstalled pyspark's jars have
    # new times): their names, sizes and times name the archive, so a change asks for a new one.
    home = java.parent.parent  # JAVA_HOME/bin/java
    server = [home / "lib" / "server" / name for name in ("libjvm.so", "libjvm.dylib", "classes.jsa")]
    spark_home = _spark_home(pyspark)
    files = [*(f for f in server if f.exists()), *sorted((spark_home / "jars").glob("*.jar"))]
    identity = [str(java)] + [f"{f}|{f.stat().st_size}|{f.stat().st_mtime_ns}" for f in files]
    key = hashlib.sha256("\n".join(identity).encode()).hexdigest()[:16]
    return CACHE / f"spark-{_digest(str(spark_home))}-{pyspark.__version__}-{key}.jsa"


def _spark_home(pyspark: Any) -> Path:
    return Path(os.environ.get("SPARK_HOME") or Path(pyspark.__file__).parent)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def java_options() -> str:
    """The JVM options that map this machine's archive, or "" when there is none that is
    whole (its size as recorded when it was written)."""
    path = archive()
    if path is None or any(c.isspace() for c in str(path)):  # JVM options are split on spaces
        return ""
    try:
        recorded = json.loads(path.with_suffix(".json").read_text())["bytes"]
        whole = path.stat().st_size == recorded
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"-XX:SharedArchiveFile={path} {QUIET}" if whole else ""


def create(report: Callable[[str], None] = print) -> Path | None:
    """Write this machine's archive (a Spark session running scoring's kinds of jobs, then
    its JVM's clean exit); returns its path, or None when it could not be written."""
    path = archive()
    if path is None:
        report("spark classes: no java or no pyspark found; Spark sessions start without an archive")
        return None
    if any(c.isspace() for c in str(path)):
        report(f"spark classes: the cache folder's path has a space, which JVM options cannot hold: {path.parent}")
        return None
    if java_options():
        recorded = json.loads(path.with_suffix(".json").read_text())
        if "spark_home" not in recorded:  # written before records said it
            _record(path, recorded["bytes"])
        report(f"spark classes: {path} is there")
        return path
    writing = path.with_name(f".{path.name}.{os.getpid()}")
    started = time.perf_counter()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # In a process of its own: the archive is written when the session's JVM exits, and a
        # JVM that pyspark started exits with the Python process that started it.
        done = subprocess.run(
            [sys.executable, "-m", "scoring.spark_classes", "--write", str(writing)],
            capture_output=True,
            text=True,
            timeout=JVM_EXIT_TIMEOUT + 300,
            cwd=Path(__file__).resolve().parent.parent,  # where `-m scoring.spark_classes` is found
        )
        size = writing.stat().st_size if done.returncode == 0 and writing.exists() else 0
        if not size:
            report(f"spark classes: no archive written:\n{(done.stderr or done.stdout)[-2000:]}")
            return None
        _record(path, size)
        os.replace(writing, path)
        remove_stale(path)
    except (OSError, subprocess.TimeoutExpired) as exc:
        report(f"spark classes: no archive written: {exc}")
        return None
    finally:
        writing.unlink(missing_ok=True)
    report(f"spark classes: {path} ({size / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s")
    return path


def _record(path: Path, size: int) -> None:
    """Write beside the archive its size (checked before each use) and where its Spark is
    installed (so that `remove_stale` can tell when that installation is gone)."""
    import pyspark

    record = {"bytes": size, "written_at": time.time(), "spark_home": str(_spark_home(pyspark).resolve())}
    path.with_suffix(".json").write_text(json.dumps(record) + "\n")


def remove_stale(path: Path) -> None:
    """Delete, with their records, the other archives of `path`'s Spark installation
    (written for an older JVM or older jars) and those of installations that are gone (a
    deleted clone's .venv; each archive is about 180 MB). The archives of other
    installations still there are kept, as are those whose record does not say where
    their installation is (written before records said it)."""
    home = path.name.split("-")[1]
    for stem in {found.stem for found in path.parent.glob("spark-*")} - {path.stem}:
        if stem.split("-")[1] != home and not _installation_gone(path.parent / f"{stem}.json"):
            continue
        for stale in path.parent.glob(f"{glob.escape(stem)}.*"):
            stale.unlink(missing_ok=True)


def _installation_gone(record: Path) -> bool:
    try:
        installed = json.loads(record.read_text()).get("spark_home")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(installed, str) and not Path(installed, "jars").is_dir()


def _write(target: str) -> None:
    """Run in its own process by `create`: a session whose JVM writes `target` at its exit."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # The JVM checks the archive against its class path and itself, not against settings:
    # any local session of this Spark writes one that scoring's sessions can map.
    builder = SparkSession.builder.master("local[2]").appName("class archive").config("spark.ui.enabled", "false")
    builder = builder.config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
    spark = builder.config("spark.driver.extraJavaOptions", f"-XX:ArchiveClassesAtExit={target} {QUIET}").getOrCreate()
    folder = Path(tempfile.mkdtemp(prefix="spark-classes-"))
    try:
        # What a scoring job loads: a job of Python tasks (Parquet read by the tasks), and
        # Spark's CSV and Parquet readers and Parquet writer around Arrow batches.
        context = spark.sparkContext
        if context.parallelize(range(4), 2).map(lambda x: x * 2).sum() != 12:
            raise SystemExit("the session's Python tasks answered wrongly")
        table = pa.table({"x": [1.0, 2.0], "y": ["a", "b"]})
        pq.write_table(table, folder / "in.parquet")
        (folder / "in.csv").write_text("x,y\n1.0,a\n2.0,b\n")
        for kind in ("parquet", "csv"):
            frame = spark.read.format(kind).option("header", "true").load(str(folder / f"in.{kind}"))
            frame.mapInArrow(lambda batches: batches, frame.schema).write.parquet(str(folder / f"out-{kind}"))
        spark.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # The JVM exits (and writes the archive) when its standard input closes.
    jvm = SparkContext._gateway.proc  # type: ignore[union-attr]
    jvm.stdin.close()
    try:
        jvm.wait(timeout=JVM_EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        jvm.kill()  # else it might write the archive after `create` has given up on it
        raise SystemExit(f"the JVM did not exit in {JVM_EXIT_TIMEOUT} s") from None
    if jvm.returncode != 0:
        raise SystemExit(f"the JVM exited with {jvm.returncode}")


def _java() -> Path | None:
    """The java that Spark starts: JAVA_HOME's, else the first on PATH (resolved)."""
    home = os.environ.get("JAVA_HOME")
    found = Path(home) / "bin" / "java" if home else None
    if found is None or not found.exists():
        which = shutil.which("java")
        found = Path(which) if which else None
    return found.resolve() if found else None


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        _write(sys.argv[2])
    else:  # `make batch-setup`: without Java there is nothing to do (Spark needs it to run at all)
        sys.exit(0 if create() or _java() is None else 1)
