"""Where a test run's time went: the seconds of each test file, from the JUnit report that
`make test` writes (test-output/junit.xml), longest first.

    .venv/bin/python -m tests.durations [REPORT] [--top 25]

A file's seconds are its tests' setup, call and teardown (its shared servers start in its
first test's setup); `make test` runs each file in one process, so the longest file bounds
the run and the sum over files divided by the processes is the least the run can take.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def seconds_per_file(report: Path) -> dict[str, tuple[float, int]]:
    """Each test file's total seconds and its number of tests."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")
        name = next((part for part in module if part.startswith("test_")), module[-1]) + ".py"
        totals[name][0] += float(case.get("time", 0))
        totals[name][1] += 1
    return {name: (seconds, int(count)) for name, (seconds, count) in totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", default=str(ROOT / "test-output" / "junit.xml"))
    parser.add_argument("--top", type=int, default=25, help="files listed")
    parser.add_argument("--processes", type=int, default=3, help="test processes of the run")
    args = parser.parse_args(argv)
    files = seconds_per_file(Path(args.report))
    total = sum(seconds for seconds, _ in files.values())
    print(f"{len(files)} files, {sum(n for _, n in files.values())} tests, {total:,.0f} s in all")
    print(f"at least {total / args.processes:,.0f} s over {args.processes} processes")
    for name, (seconds, count) in sorted(files.items(), key=lambda item: -item[1][0])[: args.top]:
        print(f"{seconds:8.1f} s  {100 * seconds / total:5.1f} %  {count:4d} tests  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
