"""Training rows from the inference log: what production saw, with the truth fed back.

`python -m training --from-log DIR --name NAME --version V` reads every predictions
file of NAME under DIR (every tag, every worker) and every feedback file, keeps the
feedback that counted or came after its window (`accepted`, `outside_window`; one per id),
and joins the two on the prediction id: one row per prediction with feedback, its inputs
as the features and the truth as the target. The table then goes through the same checks
as `--data` (model_server/monitoring/inference_log.py describes the files).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from model_server.models.schema import CLASSIFICATION, REGRESSION

INPUT = "input."
USABLE = ("accepted", "outside_window")
TARGET = "truth"


def joined(directory: Path, name: str, target: str = TARGET) -> tuple[pd.DataFrame, str]:
    """The logged rows of `name` joined with their feedback: one column per feature and
    `target`; and the task (a classifier's log has probability columns). ValueError when
    the log holds no prediction or no usable feedback of `name`."""
    predictions = _read(sorted((directory / "predictions" / name).glob("*/*.parquet")))
    if predictions.empty:
        raise ValueError(f"'{directory}' holds no logged predictions of '{name}' (predictions/{name}/*/*.parquet)")
    feedback = _read(sorted((directory / "feedback" / name).glob("*.parquet")))
    if feedback.empty:
        raise ValueError(f"'{directory}' holds no feedback on '{name}' (feedback/{name}/*.parquet)")
    task = CLASSIFICATION if any(c.startswith("output.probability.") for c in predictions.columns) else REGRESSION
    usable = feedback[feedback["status"].isin(USABLE)].sort_values("time", kind="stable")
    usable = usable.drop_duplicates("id", keep="first")[["id", "truth"]]
    inputs = [c for c in predictions.columns if c.startswith(INPUT)]
    rows = predictions.drop_duplicates("id", keep="first")[["id", "time", *inputs]]
    table = rows.merge(usable, on="id", how="inner").sort_values(["time", "id"], kind="stable")
    if table.empty:
        raise ValueError(f"no logged prediction of '{name}' has usable feedback ({' or '.join(USABLE)})")
    frame = table[inputs].rename(columns=lambda c: c.removeprefix(INPUT)).reset_index(drop=True)
    truth = table["truth"].reset_index(drop=True)
    frame[target] = truth if task == CLASSIFICATION else pd.to_numeric(truth)
    return frame, task


def _read(paths: list[Path]) -> pd.DataFrame:
    """The files as one frame (columns of tags that differ are joined by name)."""
    frames = [pd.read_parquet(path) for path in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
