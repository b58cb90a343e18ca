"""What signing prediction ids costs, in process: µs per request and per row for 1, 64
and 1,000 rows of a binary classifier (Titanic), a three-class one (iris) and a
regressor, and what verifying one id costs.

    .venv/bin/python -m bench.prediction_ids [--repeat 2000]

One HMAC-SHA256 per row over the compact binary encoding (prediction_ids.py); the
request's part is hashed once and its state copied for each row.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from model_server.monitoring.prediction_ids import PredictionIds


def measure(ids: PredictionIds, output: np.ndarray, classifier: bool, repeat: int) -> float:
    """The best of five runs of `repeat` signings, in µs per call."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            ids.sign("titanic", "titanic:v1", 7, 1_700_000_000_000, output, classifier)
        best = min(best, (time.perf_counter() - started) / repeat * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    ids = PredictionIds([b"a secret of thirty-two bytes...."])
    rng = np.random.default_rng(0)
    print("| model | rows | µs per request | µs per row |")
    print("| --- | ---: | ---: | ---: |")
    for label, width, classifier in (("binary", 2, True), ("3 classes", 3, True), ("regressor", 0, False)):
        for rows in (1, 64, 1000):
            output = rng.dirichlet(np.ones(width), rows) if classifier else rng.normal(size=rows)
            repeat = max(5, args.repeat // rows)
            per_call = measure(ids, output, classifier, repeat)
            print(f"| {label} | {rows} | {per_call:.1f} | {per_call / rows:.2f} |")
    [one] = ids.sign("titanic", "titanic:v1", 7, 0, np.array([[0.3, 0.7]]), True)
    started = time.perf_counter()
    for _ in range(args.repeat):
        ids.verify(one)
    print(f"\nverifying one id: {(time.perf_counter() - started) / args.repeat * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
