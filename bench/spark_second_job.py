"""Two Spark jobs of `python -m scoring` in one session, for bench/batch.py.

    .venv/bin/python -m bench.spark_second_job --model TAG --input PATH --output PATH \
        --engine spark --master 'local[2]' [other options of python -m scoring]

The first job writes beside the output (and is removed); the second writes the output,
whose summary is what the benchmark reads. A session's first job also starts its Python
workers, which import the scoring code: the second job shows what a job costs without
that fixed cost (docs/batch.md, "The fixed cost of a Spark job").
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from scoring import spark as spark_engine
from scoring.cli import main as score
from scoring.job import DRIFT_SUFFIX

FIRST_JOB_SUFFIX = ".first-job"


def main(argv: list[str]) -> int:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # as scoring.spark.run sets it
    output = argv[argv.index("--output") + 1]
    master = argv[argv.index("--master") + 1]
    first = [*argv]
    first[first.index("--output") + 1] = output + FIRST_JOB_SUFFIX
    session = spark_engine.session(master, {}, "scoring: a session's second job")
    try:
        for arguments in (first, argv):  # the scoring command uses the active session
            code = score(arguments)
            if code:
                return code
    finally:
        session.stop()
        shutil.rmtree(output + FIRST_JOB_SUFFIX, ignore_errors=True)
        Path(output + FIRST_JOB_SUFFIX + DRIFT_SUFFIX).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
