"""Generated tables for batch scoring's tests and benchmark: titanic-like passengers (with
gaps, unseen categories, out-of-range and wrong-type values when asked) and
breast_cancer-like measurements (training rows with noise), written in pieces so that a
table of millions of rows never sits in memory whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ID = "row_id"
PIECE_ROWS = 250_000


def passengers(rows: int, seed: int = 0, flawed: bool = True, start: int = 0) -> pd.DataFrame:
    """Passengers with the titanic tags' features. `flawed` adds, each in a few rows: gaps
    (valid: the pipeline imputes them), categories training never saw, values beyond the
    plausible range, and text where a number is expected (a table whose age column is then
    text, as in a CSV file)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            ID: np.arange(start, start + rows, dtype=np.int64),
            "pclass": rng.choice(np.array(["1st", "2nd", "3rd"], dtype=object), rows, p=[0.25, 0.2, 0.55]),
            "sex": rng.choice(np.array(["female", "male"], dtype=object), rows, p=[0.36, 0.64]),
            "age": np.clip(np.round(rng.gamma(4.0, 7.5, rows), 1), 0.4, 80.0),
            "sibsp": rng.poisson(0.5, rows).astype(np.float64),
            "parch": rng.poisson(0.4, rows).astype(np.float64),
        }
    )
    if not flawed:
        return frame

    def some(share: float) -> np.ndarray:
        return rng.random(rows) < share

    frame["age"] = frame["age"].astype(object)
    frame["sibsp"] = frame["sibsp"].astype(object)
    frame.loc[some(0.15), "age"] = None  # gaps: imputed, valid
    frame.loc[some(0.01), "pclass"] = None
    frame.loc[some(0.005), "sex"] = None
    frame.loc[some(0.004), "pclass"] = "4th"  # unseen categories
    frame.loc[some(0.002), "sex"] = "unknown"
    frame.loc[some(0.003), "age"] = 1e12  # beyond the plausible range
    frame.loc[some(0.001), "sibsp"] = -5e9
    frame.loc[some(0.003), "age"] = "abc"  # text where a number is expected
    frame.loc[some(0.001), "sibsp"] = "two"
    return frame


def measurements(rows: int, seed: int = 0, start: int = 0) -> pd.DataFrame:
    """breast_cancer-like rows: training rows drawn at random, with 5 % noise per feature."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    rng = np.random.default_rng(seed)
    picked = data.to_numpy()[rng.integers(0, len(data), rows)]
    noisy = picked * (1 + 0.05 * rng.standard_normal(picked.shape))
    frame = pd.DataFrame(noisy, columns=[str(c) for c in data.columns])
    frame.insert(0, ID, np.arange(start, start + rows, dtype=np.int64))
    return frame


def write_parquet(path: Path, kind: str, rows: int, seed: int = 0, row_group: int = 131_072) -> Path:
    """A Parquet file of `rows` generated rows ("passengers" without flaws, or
    "measurements"), written piece by piece in row groups of `row_group` rows."""
    writer: pq.ParquetWriter | None = None
    try:
        for start in range(0, rows, PIECE_ROWS):
            count = min(PIECE_ROWS, rows - start)
            piece = (
                passengers(count, seed + start, flawed=False, start=start)
                if kind == "passengers"
                else measurements(count, seed + start, start=start)
            )
            table = pa.Table.from_pandas(piece, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="snappy")
            writer.write_table(table, row_group_size=row_group)
    finally:
        if writer is not None:
            writer.close()
    return path
