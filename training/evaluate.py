"""Held-out evaluation and k-fold cross-validation with a fixed seed."""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold, cross_validate
from sklearn.pipeline import Pipeline

from model_server.schema import CLASSIFICATION

FOLDS = 5


def holdout_metrics(task: str, model: Pipeline, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Metrics of a fitted model on data it did not see."""
    if task == CLASSIFICATION:
        proba = model.predict_proba(X)
        predicted = model.classes_[np.argmax(proba, axis=1)]
        if proba.shape[1] == 2:
            auc = roc_auc_score(y, proba[:, 1])
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


def cross_validation_metrics(task: str, model: Pipeline, X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, float]:
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
    scores = cross_validate(clone(model), X, y, cv=folds, scoring=scoring)
    out: dict[str, float] = {}
    for name, sign in signs.items():
        values = sign * scores[f"test_{name}"]
        out[f"{name}_mean"] = float(np.mean(values))
        out[f"{name}_std"] = float(np.std(values))
    return out
