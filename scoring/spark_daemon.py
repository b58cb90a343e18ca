"""The Python worker daemon of the Spark sessions that scoring starts on this machine
(`local[N]`, or a standalone cluster on the loopback address): Spark's own daemon, started
from pyspark's installed package instead of the copy of its sources in `pyspark.zip`.

Spark puts `pyspark.zip` first on its Python workers' path. Python cannot keep compiled
code for what it imports from a zip, so every new daemon compiled pyspark's worker code from
source (about 0.6 s of a session's first job, docs/batch.md). The workers run the
interpreter of the driver (PYSPARK_PYTHON), whose pyspark is the same version as the zip's.

Run as `python -m scoring.spark_daemon pyspark.worker` by Spark when a session sets
`spark.python.daemon.module` (scoring.spark.session); it imports nothing of the project.
"""

import sys


def installed_first(path: list[str]) -> list[str]:
    """`path` with pyspark's zips and jars (SPARK_HOME/python/lib, SPARK_HOME/jars) moved
    after every other entry, so that pyspark is imported from the installed package."""
    shipped = [entry for entry in path if entry.endswith((".zip", ".jar")) and "pyspark" in entry]
    return [entry for entry in path if entry not in shipped] + shipped


if __name__ == "__main__":
    sys.path[:] = installed_first(sys.path)
    # Imported before the daemon forks its workers, so each starts with it: it starts no
    # thread (pyspark's daemon imports numpy, pandas or pyarrow only after a fork).
    import pyspark.worker  # noqa: F401
    from pyspark.daemon import manager

    manager()
