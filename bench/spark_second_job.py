"""Two Spark jobs of `python -m scoring` in one session, for bench/batch.py.

    .venv/bin/python -m bench.spark_second_job --model TAG --input PATH --output PATH \
        --engine spark --master 'local[2]' [other options of python -m scoring]

The context is started here as the scoring command starts its own, with the same JVM
options (`--conf` settings are not applied). The first job writes beside the output (and is removed); the second
writes the output, whose summary is what the benchmark reads: a job in a JVM that has run
one before and compiled its code (docs/batch.md, "The fixed cost of a Spark job").
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from scoring import spark as spark_engine
from scoring.cli import main as score
from scoring.cli import parser
from scoring.job import DRIFT_SUFFIX

FIRST_JOB_SUFFIX = ".first-job"


def main(argv: list[str]) -> int:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # as scoring.spark.run sets it
    args = parser().parse_args(argv)  # the scoring command's own options
    first_output = args.output + FIRST_JOB_SUFFIX
    tasks_read = spark_engine.read_by_tasks(args.input, args.output, args.input_format)
    context = spark_engine.start_context(args.master, {}, "scoring: a session's second job", tasks_read)
    try:
        # The scoring command uses the active session; of two --output, argparse keeps the last.
        for arguments in ([*argv, "--output", first_output], argv):
            code = score(arguments)
            if code:
                return code
    finally:
        context.stop()
        shutil.rmtree(first_output, ignore_errors=True)
        Path(first_output + DRIFT_SUFFIX).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
