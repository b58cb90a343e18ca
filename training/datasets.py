"""Data sets shipped inside scikit-learn (nothing is downloaded), one per default model."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sklearn import datasets

from model_server.models.schema import CLASSIFICATION, REGRESSION


@dataclass(frozen=True)
class Dataset:
    """Features, target and what they mean."""

    name: str
    task: str
    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    class_names: list[str]
    target_name: str

    def fingerprint(self) -> str:
        """SHA-256 of the exact training data, stored with the model."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.X, dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(self.y).tobytes())
        return digest.hexdigest()


def load(name: str) -> Dataset:
    """Load a data set by model name."""
    if name not in LOADERS:
        raise KeyError(name)
    loader, task = LOADERS[name]
    bunch = loader()
    classes = [str(c) for c in bunch.target_names] if task == CLASSIFICATION else []
    return Dataset(
        name=name,
        task=task,
        X=np.asarray(bunch.data, dtype=np.float64),
        y=np.asarray(bunch.target),
        feature_names=[str(f) for f in bunch.feature_names],
        class_names=classes,
        target_name="class" if task == CLASSIFICATION else "disease_progression",
    )


LOADERS = {
    "iris": (datasets.load_iris, CLASSIFICATION),
    "breast_cancer": (datasets.load_breast_cancer, CLASSIFICATION),
    "diabetes": (datasets.load_diabetes, REGRESSION),
}
