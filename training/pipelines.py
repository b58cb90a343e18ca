"""Model pipelines: each carries its own preprocessing, so serving applies exactly
the transformations used in training."""

from __future__ import annotations

from typing import Any

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from model_server.missing import MissingCategories
from model_server.models.schema import CLASSIFICATION

from .tables import MISSING_CATEGORY

# Algorithms per task; the first one is the default.
ALGORITHMS = {
    "classification": ("logistic_regression", "gradient_boosting"),
    "regression": ("ridge", "gradient_boosting"),
}


def build(task: str, algorithm: str, seed: int) -> Pipeline:
    """A fresh, unfitted pipeline for an all-numeric array: median imputation, scaling
    where needed, the estimator."""
    _check(task, algorithm)
    impute = ("impute", SimpleImputer(strategy="median"))
    if task == CLASSIFICATION:
        if algorithm == "logistic_regression":
            return Pipeline([impute, ("scale", StandardScaler()), ("model", LogisticRegression(max_iter=2000))])
        return Pipeline([impute, ("model", HistGradientBoostingClassifier(max_iter=100, random_state=seed))])
    if algorithm == "ridge":
        return Pipeline([impute, ("scale", StandardScaler()), ("model", Ridge(alpha=1.0))])
    return Pipeline([impute, ("model", HistGradientBoostingRegressor(max_iter=100, random_state=seed))])


def build_for_table(
    task: str, algorithm: str, seed: int, numeric: tuple[str, ...], categorical: tuple[str, ...]
) -> Pipeline:
    """A fresh pipeline for named columns: a missing category (NaN or None) becomes the
    marker MISSING_CATEGORY (model_server/missing.py, so the stored pipeline takes a frame
    with NaN anywhere it is loaded); numeric columns median-imputed (and scaled for
    linear models), categorical ones imputed with the most frequent value and one-hot
    encoded (unknown categories ignored), then the estimator.

    One-hot encoding serves trees too: HistGradientBoosting's native categorical splits
    and a scaler in front of it both convert to ONNX with wrong answers, one-hot does not.
    """
    _check(task, algorithm)
    linear = algorithm in ("logistic_regression", "ridge")
    numeric_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if linear:
        numeric_steps.append(("scale", StandardScaler()))
    categorical_steps = [
        ("impute", SimpleImputer(missing_values=MISSING_CATEGORY, strategy="most_frequent")),
        ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
    ]
    columns = ColumnTransformer(
        [
            ("numeric", Pipeline(numeric_steps), list(numeric)),
            ("categorical", Pipeline(categorical_steps), list(categorical)),
        ],
        verbose_feature_names_out=False,
    )
    missing = MissingCategories(list(categorical), MISSING_CATEGORY)
    return Pipeline([("missing", missing), ("columns", columns), ("model", _estimator(task, algorithm, seed))])


def _check(task: str, algorithm: str) -> None:
    if algorithm not in ALGORITHMS[task]:
        choices = ", ".join(ALGORITHMS[task])
        raise ValueError(f"algorithm '{algorithm}' does not fit a {task} task; choose one of {choices}")


def _estimator(task: str, algorithm: str, seed: int) -> Any:
    if task == CLASSIFICATION:
        if algorithm == "logistic_regression":
            return LogisticRegression(max_iter=2000)
        return HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    if algorithm == "ridge":
        return Ridge(alpha=1.0)
    return HistGradientBoostingRegressor(max_iter=100, random_state=seed)
