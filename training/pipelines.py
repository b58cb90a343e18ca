"""Model pipelines: each carries its own preprocessing, so serving applies exactly
the transformations used in training."""

from __future__ import annotations

from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from model_server.schema import CLASSIFICATION

# Algorithms per task; the first one is the default.
ALGORITHMS = {
    "classification": ("logistic_regression", "gradient_boosting"),
    "regression": ("ridge", "gradient_boosting"),
}


def build(task: str, algorithm: str, seed: int) -> Pipeline:
    """A fresh, unfitted pipeline: median imputation, scaling where needed, the estimator."""
    if algorithm not in ALGORITHMS[task]:
        choices = ", ".join(ALGORITHMS[task])
        raise ValueError(f"algorithm '{algorithm}' does not fit a {task} task; choose one of {choices}")
    impute = ("impute", SimpleImputer(strategy="median"))
    if task == CLASSIFICATION:
        if algorithm == "logistic_regression":
            return Pipeline([impute, ("scale", StandardScaler()), ("model", LogisticRegression(max_iter=2000))])
        return Pipeline([impute, ("model", HistGradientBoostingClassifier(max_iter=100, random_state=seed))])
    if algorithm == "ridge":
        return Pipeline([impute, ("scale", StandardScaler()), ("model", Ridge(alpha=1.0))])
    return Pipeline([impute, ("model", HistGradientBoostingRegressor(max_iter=100, random_state=seed))])
