"""Estimators that misbehave on purpose, registered next to iris:v1 for fault tests.

They live in an importable module so the server process can unpickle them.
"""

from __future__ import annotations

import time
from typing import Any

import bentoml
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

SLOW_SECONDS = 2.0


class SlowClassifier(ClassifierMixin, BaseEstimator):
    """Answers like the wrapped model, SLOW_SECONDS later."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        time.sleep(SLOW_SECONDS)
        return self.inner.predict_proba(X)

    @property
    def classes_(self) -> np.ndarray:
        return self.inner.classes_


class FailingClassifier(ClassifierMixin, BaseEstimator):
    """Raises on every prediction."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise RuntimeError("this model always fails")


def register(base_tag: str = "iris:v1") -> dict[str, str]:
    """Save `iris:slow` and `iris:broken` with the input schema and metadata of `base_tag`."""
    base = bentoml.models.get(base_tag)
    pipeline = bentoml.sklearn.load_model(base)
    metadata = dict(base.info.metadata)
    tags = {"slow": "iris:slow", "broken": "iris:broken"}
    for kind, model in (("slow", SlowClassifier(pipeline)), ("broken", FailingClassifier())):
        try:
            bentoml.models.get(tags[kind])
        except bentoml.exceptions.NotFound:
            bentoml.sklearn.save_model(tags[kind], model, labels={"purpose": f"fault test: {kind}"}, metadata=metadata)
    return tags
