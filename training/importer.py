"""Register a scikit-learn estimator or Pipeline fitted elsewhere (a notebook, another
project): `python -m training import`.

A skops file loads without running arbitrary code, and only with the types named in
TRUSTED_SKOPS_TYPES below (beyond skops' own defaults); that list lives here, never in
the model file, so a crafted file cannot widen it. Any other type is named and refused.
A joblib or pickle file runs code when loaded, so it is read only with `--trust-pickle`.

A sample of rows (CSV or Parquet, named columns) gives the input schema; the model must
predict on it, and when the sample has the target column its metrics are recorded.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_server.models.schema import CLASSIFICATION, REGRESSION

from . import tables

# Types a skops file may hold beyond skops' defaults: numpy dtypes, the trees of decision
# trees and forests, the tree nodes of HistGradientBoosting, and this project's step that
# fills missing categories (model_server/missing.py). Each is plain data that
# skops rebuilds from arrays; none runs code when loaded.
TRUSTED_SKOPS_TYPES = (
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss.link.Interval",
    # The first step of pipelines this project trains (two plain parameters, no code).
    "model_server.missing.MissingCategories",
)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


class ImportRefused(ValueError):
    """The file is not loaded: untrusted types, or a pickle without --trust-pickle."""


@dataclass(frozen=True)
class Imported:
    """A loaded estimator and the sample it was checked on, as a table."""

    estimator: Any
    table: tables.Table
    labels: np.ndarray | None  # the sample's target as given, when it has one


def load_estimator(path: Path, trust_pickle: bool = False) -> Any:
    """The estimator in `path`: skops with the trusted types, or pickle/joblib when trusted.
    Anything that is not an estimator (it has no `predict`) is refused."""
    if path.suffix.lower() == ".skops":
        loaded = _load_skops(path)
    elif path.suffix.lower() in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise ImportRefused(
                f"'{path}' is a pickle: loading it runs any code it holds. Save it with skops "
                "(skops.io.dump), or pass --trust-pickle if you trust where it came from"
            )
        warnings.warn(f"unpickling '{path}' runs the code it holds; trusted by --trust-pickle", stacklevel=2)
        import joblib

        try:
            loaded = joblib.load(path)
        except Exception as exc:  # whatever the bytes make the unpickler raise
            raise ImportRefused(f"'{path}' cannot be unpickled: {type(exc).__name__}: {exc}"[:300]) from None
    else:
        raise ImportRefused(f"'{path}' is neither a .skops file nor a pickle ({', '.join(PICKLE_SUFFIXES)})")
    if not callable(getattr(loaded, "predict", None)):
        kind = type(loaded)
        raise ImportRefused(
            f"'{path}' holds a {kind.__module__}.{kind.__qualname__}, not a scikit-learn estimator or Pipeline "
            "(it has no predict method)"
        )
    return loaded


def _load_skops(path: Path) -> Any:
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # not a zip, or a zip without skops' schema
        with path.open("rb") as file:
            pickled = file.read(1) == b"\x80"  # the opcode every pickle of protocol 2 or newer starts with
        hint = (
            f"; it looks like a pickle: name it {PICKLE_SUFFIXES[0]} and pass --trust-pickle if you trust where "
            "it came from"
            if pickled
            else ""
        )
        raise ImportRefused(f"'{path}' is not a skops file ({type(exc).__name__}: {str(exc)[:150]}){hint}") from None
    unknown = [t for t in untrusted if t not in TRUSTED_SKOPS_TYPES]
    if unknown:
        raise ImportRefused(
            f"'{path}' holds types this server does not trust: {', '.join(sorted(unknown))}; "
            "they could run code when loaded"
        )
    return sio.load(path, trusted=list(TRUSTED_SKOPS_TYPES))


def check_on_sample(
    estimator: Any,
    sample: pd.DataFrame,
    name: str,
    target: str | None,
    categorical: list[str] | None = None,
    numeric: list[str] | None = None,
    task: str | None = None,
) -> Imported:
    """The sample as the model's input table; the model must predict on it."""
    if target and target not in sample.columns:
        raise ValueError(
            f"the target column '{target}' is not in the sample (columns: {', '.join(map(str, sample.columns))})"
        )
    known = getattr(estimator, "feature_names_in_", None)
    if known is not None:
        wanted = [str(c) for c in known]
        missing = [c for c in wanted if c not in sample.columns]
        if missing:
            raise ValueError(f"the sample lacks the model's input columns {missing}")
        extra = [c for c in sample.columns if c not in wanted and c != target]
        sample = sample[[*wanted, *([target] if target and target in sample.columns else [])]]
        if extra:
            print(f"ignoring sample columns the model does not take: {extra}", file=sys.stderr)
    has_target = bool(target) and target in sample.columns
    if not has_target:
        placeholder = "__target__"
        sample = sample.assign(**{placeholder: 0})
    from sklearn.base import is_classifier

    if task is None and is_classifier(estimator) and not hasattr(estimator, "predict_proba"):
        raise ValueError(
            f"{type(estimator).__name__} classifies without probabilities (no predict_proba), which the server "
            "answers with: wrap it in sklearn.calibration.CalibratedClassifierCV, or pass --task regression "
            "if its predictions are numbers"
        )
    chosen_task = task or (CLASSIFICATION if hasattr(estimator, "predict_proba") else REGRESSION)
    forced = set(categorical or [])
    _check_encoders(estimator, forced)
    coded = numeric_encoded(estimator)
    numeric = [*(numeric or []), *(c for c in coded if c not in forced and c in sample)]
    # A column whose encoder learned text is categorical, whatever the sample holds (a CSV
    # column with no value in the sample reads as numbers).
    text = [c for c in encoder_categories(estimator) if c in sample and c not in coded]
    categorical = [*(categorical or []), *(c for c in text if c not in forced and c not in numeric)]
    table = tables.from_frame(
        name,
        sample,
        target if has_target and target else "__target__",
        "imported",
        categorical=categorical,
        numeric=numeric,
        task=chosen_task,
        missing_category=None,  # a pipeline fitted elsewhere sees a missing category as NaN
        require_values=False,
    )
    try:
        if chosen_task == CLASSIFICATION:
            np.asarray(estimator.predict_proba(table.frame))
        else:
            np.asarray(estimator.predict(table.frame))
    except Exception as exc:
        raise ValueError(f"the model fails to predict on the sample: {type(exc).__name__}: {exc}") from None
    labels = sample[target].to_numpy() if has_target and target else None
    return Imported(estimator, table, labels)


def encoder_categories(estimator: Any) -> dict[str, tuple[str, ...]]:
    """The categories a fitted pipeline's encoders know, by input column: found in the
    OneHotEncoder or OrdinalEncoder of each ColumnTransformer branch that names its
    columns. These, not the sample's, are what the model was trained on."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    found: dict[str, tuple[str, ...]] = {}
    steps = [step for _, step in estimator.steps] if isinstance(estimator, Pipeline) else [estimator]
    for step in steps:
        if not isinstance(step, ColumnTransformer) or not hasattr(step, "transformers_"):
            continue
        for _, branch, columns in step.transformers_:
            if not isinstance(columns, list | tuple) or not all(isinstance(c, str) for c in columns):
                continue
            parts = [part for _, part in branch.steps] if isinstance(branch, Pipeline) else [branch]
            encoder = next((part for part in parts if hasattr(part, "categories_")), None)
            if encoder is None or len(encoder.categories_) != len(columns):
                continue
            for column, categories in zip(columns, encoder.categories_, strict=True):
                found[column] = tuple(c for c in categories.tolist() if isinstance(c, str) or c == c)
    return found


def _check_encoders(estimator: Any, forced: set[str]) -> None:
    """ValueError for an encoder the served model could not be fed: the server sends a
    category as text, and a number-coded column as a number. An encoder that learned
    true/false knows neither, and a number-coded column named --categorical would reach it
    as text it does not know (with handle_unknown="ignore", silently)."""
    coded = numeric_encoded(estimator)
    for column, categories in encoder_categories(estimator).items():
        if any(isinstance(c, bool | np.bool_) for c in categories):
            raise ValueError(
                f"the pipeline's encoder of '{column}' learned true/false values, which the server cannot send "
                "(it sends categories as text): fit it on the column as text or as 0/1 numbers"
            )
        if column in forced and column in coded:
            raise ValueError(
                f"'{column}' is named categorical, but the pipeline's encoder learned numbers for it "
                f"({', '.join(map(str, categories[:5]))}): as text they would be unknown to it; leave it numeric"
            )


def numeric_encoded(estimator: Any) -> list[str]:
    """Columns whose encoder learned numbers (codes such as a class 1, 2, 3): they are
    sent as numbers, as the encoder compares them, not as strings it would not know."""
    return [
        column
        for column, categories in encoder_categories(estimator).items()
        if categories and all(isinstance(c, int | float) and not isinstance(c, bool) for c in categories)
    ]
