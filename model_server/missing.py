"""The first step of a pipeline that training fits on named columns: a missing category
(NaN, None or pandas' NA) becomes the marker the rest of the pipeline was fitted with.

The server maps a missing value to that marker before the pipeline runs; keeping the
same step inside the stored pipeline makes the tag answer alike anywhere it is loaded
(`bentoml.sklearn.load_model(tag).predict(frame)` on a frame with NaN). The class lives
in this package because stored pipelines name it: the server, the Bento and any user of
the store can import it. It holds two plain parameters and runs no code when skops
loads it (training/importer.py trusts it by name).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from model_server.constants import MISSING_TEXT


class MissingCategories(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Replace missing values in the categorical `columns` of a DataFrame with `marker`;
    any other input passes unchanged. Fitting learns only the input's column names."""

    def __init__(self, columns: list[str] | None = None, marker: str = MISSING_TEXT) -> None:
        self.columns = columns
        self.marker = marker

    def fit(self, X: Any, y: Any = None) -> MissingCategories:
        if isinstance(X, pd.DataFrame):
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)
            self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: Any) -> Any:
        if not isinstance(X, pd.DataFrame):
            return X
        changed: dict[str, pd.Series] = {}
        for column in self.columns or []:
            if column not in X.columns:
                continue
            values = X[column]
            missing = values.isna()
            if missing.any():
                changed[column] = values.astype(object).where(~missing, self.marker)
        return X.assign(**changed) if changed else X

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """The input columns, unchanged (the step only fills values)."""
        if input_features is None:
            input_features = getattr(self, "feature_names_in_", self.columns or [])
        return np.asarray(input_features, dtype=object)

    def __sklearn_is_fitted__(self) -> bool:
        return True
