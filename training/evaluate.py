"""Held-out evaluation and k-fold cross-validation with a fixed seed."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.metrics import accuracy_score, f1_score, get_scorer, mean_absolute_error, r2_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline

from model_server.models.schema import CLASSIFICATION

FOLDS = 5


def holdout_metrics(task: str, model: Pipeline, X: Any, y: np.ndarray) -> dict[str, float]:
    """Metrics of a fitted model on data it did not see."""
    if task == CLASSIFICATION:
        proba = model.predict_proba(X)
        predicted = model.classes_[np.argmax(proba, axis=1)]
        if proba.shape[1] == 2:
            auc = roc_auc_score(y == model.classes_[1], proba[:, 1])
        else:
            auc = roc_auc_score(y, proba, multi_class="ovr", average="macro")
        return {
            "accuracy": float(accuracy_score(y, predicted)),
            "f1_macro": float(f1_score(y, predicted, average="macro")),
            "roc_auc": float(auc),
        }
    predicted = model.predict(X)
    return {
        "mae": float(mean_absolute_error(y, predicted)),
        "rmse": float(np.sqrt(np.mean((y - predicted) ** 2))),
        "r2": float(r2_score(y, predicted)),
    }


@contextmanager
def progress(description: str, steps: int = 1) -> Iterator[Callable[[], None]]:
    """A progress bar on a terminal (rich), advanced by calling what this yields; silent
    when stderr is not a terminal (CI, tests, logs)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with Progress(*columns, TimeElapsedColumn(), transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(description, total=steps)
        yield lambda: bar.advance(task)


def cross_validation_metrics(task: str, model: Pipeline, X: Any, y: np.ndarray, seed: int) -> dict[str, float]:
    """Mean and standard deviation of each metric over k folds of the training split."""
    if task == CLASSIFICATION:
        folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
        auc = "roc_auc" if len(np.unique(y)) == 2 else "roc_auc_ovr"
        scoring = {"accuracy": "accuracy", "f1_macro": "f1_macro", "roc_auc": auc}
        signs = {"accuracy": 1, "f1_macro": 1, "roc_auc": 1}
    else:
        folds = KFold(n_splits=FOLDS, shuffle=True, random_state=seed)
        scoring = {"mae": "neg_mean_absolute_error", "rmse": "neg_root_mean_squared_error", "r2": "r2"}
        signs = {"mae": -1, "rmse": -1, "r2": 1}
    scorers = {name: get_scorer(scorer) for name, scorer in scoring.items()}
    scores: dict[str, list[float]] = {name: [] for name in scoring}
    with progress(f"cross-validating ({FOLDS} folds)", FOLDS) as fold_done:
        for train, test in folds.split(X, y):
            fitted = clone(model).fit(_take(X, train), y[train])
            for name, scorer in scorers.items():
                scores[name].append(float(scorer(fitted, _take(X, test), y[test])))
            fold_done()
    out: dict[str, float] = {}
    for name, sign in signs.items():
        values = sign * np.array(scores[name])
        out[f"{name}_mean"] = float(np.mean(values))
        out[f"{name}_std"] = float(np.std(values))
    return out


def _take(X: Any, rows: np.ndarray) -> Any:
    """Rows of an array or a DataFrame."""
    return X.iloc[rows] if hasattr(X, "iloc") else X[rows]
