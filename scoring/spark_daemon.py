"""The Python worker daemon of the `local[N]` Spark sessions that scoring starts: Spark's own
daemon, started from pyspark's installed package instead of the copy of its sources in
`pyspark.zip`.

Spark puts `pyspark.zip` first on its Python workers' path. Python cannot keep compiled
code for what it imports from a zip, so every new daemon compiled pyspark's worker code from
source (about 0.6 s of a session's first job, docs/batch.md). The installed package goes
first only when it is the version of the zip, which is the JVM's; otherwise the path stays
as Spark made it.

Run as `python -m scoring.spark_daemon pyspark.worker` by Spark when a session sets
`spark.python.daemon.module` (scoring.spark.launch_settings); it imports nothing of the
project.
"""

import re
import sys
import zipfile
from importlib import metadata
from pathlib import PurePath


def shipped_by_spark(entry: str) -> bool:
    """Whether a path entry is one Spark adds for its workers: SPARK_HOME/python/lib's
    `pyspark.zip` and `py4j-*-src.zip`, or a jar of SPARK_HOME/jars."""
    path = PurePath(entry)
    name = path.name
    return (
        name == "pyspark.zip"
        or (name.startswith("py4j-") and name.endswith("-src.zip"))
        or (name.endswith(".jar") and path.parent.name == "jars")
    )


def installed_first(path: list[str]) -> list[str]:
    """`path` with Spark's zips and jars moved after every other entry, in their order."""
    shipped = [entry for entry in path if shipped_by_spark(entry)]
    return [entry for entry in path if entry not in shipped] + shipped


def zip_version(path: list[str]) -> str | None:
    """The version of pyspark in the `pyspark.zip` on `path` (the JVM's Spark), if any."""
    for entry in path:
        if PurePath(entry).name == "pyspark.zip":
            try:
                with zipfile.ZipFile(entry) as archive:
                    source = archive.read("pyspark/version.py").decode()
            except (OSError, KeyError, zipfile.BadZipFile):
                return None
            found = re.search(r"__version__[^=]*=\s*[\"']([^\"']+)[\"']", source)
            return found.group(1) if found else None
    return None


def installed_version() -> str | None:
    try:
        return metadata.version("pyspark")
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    shipped = zip_version(sys.path)
    if shipped is not None and shipped == installed_version():
        sys.path[:] = installed_first(sys.path)
    # Imported before the daemon forks its workers, so each starts with it: it starts no
    # thread (pyspark's daemon imports numpy, pandas or pyarrow only after a fork).
    import pyspark.worker  # noqa: F401
    from pyspark.daemon import manager

    manager()
