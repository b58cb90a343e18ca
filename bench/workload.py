"""The benchmark's model and rows, shared by the load generators."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer

BENCH_MODEL = "breast_cancer"
BENCH_VERSION = "v2"  # gradient boosting
BENCH_TAG = f"{BENCH_MODEL}:{BENCH_VERSION}"


def bench_rows(count: int = 64) -> np.ndarray:
    """Real rows of the data set, one per request in turn."""
    return np.asarray(load_breast_cancer().data[:count], dtype=np.float64)
