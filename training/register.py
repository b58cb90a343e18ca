"""Fit, evaluate and save one model into the BentoML model store under an explicit tag."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import bentoml
import numpy as np
import sklearn
from sklearn.model_selection import train_test_split

from model_server.constants import SCHEMA_METADATA_KEY
from model_server.schema import CLASSIFICATION, Feature, InputSchema

from . import datasets, evaluate, pipelines

TEST_SIZE = 0.25


class TagExists(Exception):
    """The tag is already in the store and --force was not given."""


@dataclass(frozen=True)
class TrainingResult:
    tag: str
    metrics: dict[str, float]


def train_and_register(
    name: str, version: str, algorithm: str, seed: int, force: bool = False, command: str | None = None
) -> TrainingResult:
    """Train `name` with `algorithm`, evaluate it on held-out data, save it as `name:version`."""
    tag = f"{name}:{version}"
    if _exists(tag):
        if not force:
            raise TagExists(f"Model '{tag}' is already in the store; pass --force to replace it.")
        bentoml.models.delete(tag)

    data = datasets.load(name)
    stratify = data.y if data.task == CLASSIFICATION else None
    X_train, X_test, y_train, y_test = train_test_split(
        data.X, data.y, test_size=TEST_SIZE, random_state=seed, stratify=stratify
    )
    pipeline = pipelines.build(data.task, algorithm, seed)
    pipeline.fit(X_train, y_train)

    metrics = {f"holdout_{k}": v for k, v in evaluate.holdout_metrics(data.task, pipeline, X_test, y_test).items()}
    metrics.update(
        {
            f"cv_{k}": v
            for k, v in evaluate.cross_validation_metrics(data.task, pipeline, X_train, y_train, seed).items()
        }
    )

    schema = build_schema(data, pipeline, X_train)
    bentoml.sklearn.save_model(
        tag,
        pipeline,
        signatures={"predict": {"batchable": True}, "predict_proba": {"batchable": True}},
        labels={"task": data.task, "dataset": data.name, "algorithm": algorithm},
        metadata={
            "metrics": metrics,
            "sklearn_version": sklearn.__version__,
            "training_rows": int(X_train.shape[0]),
            "test_rows": int(X_test.shape[0]),
            "seed": seed,
            "data_sha256": data.fingerprint(),
            "command": command or " ".join(sys.argv),
            SCHEMA_METADATA_KEY: schema.to_dict(),
        },
    )
    return TrainingResult(tag=tag, metrics=metrics)


def build_schema(data: datasets.Dataset, pipeline: object, X_train: np.ndarray) -> InputSchema:
    """The schema the model saw: feature order, dtypes, observed ranges, class names."""
    features = tuple(
        Feature(name=n, dtype="float64", min=float(np.nanmin(X_train[:, i])), max=float(np.nanmax(X_train[:, i])))
        for i, n in enumerate(data.feature_names)
    )
    classes: tuple[str, ...] = ()
    if data.task == CLASSIFICATION:
        # Class names in the order of the model's probability columns.
        classes = tuple(data.class_names[int(c)] for c in pipeline.classes_)  # type: ignore[attr-defined]
    return InputSchema(task=data.task, features=features, classes=classes, target=data.target_name)


def _exists(tag: str) -> bool:
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return False
    return True
