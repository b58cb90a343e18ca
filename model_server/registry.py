"""Loaded models by tag: the fitted pipeline, its input schema and stored metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import bentoml
import numpy as np
import pandas as pd

from .constants import SCHEMA_METADATA_KEY
from .schema import InputSchema
from .settings import ServerSettings, SettingsError


class MissingModel(Exception):
    """A configured tag is not in the model store; the message says how to train it."""


@dataclass
class LoadedModel:
    """One stored model tag, ready to predict."""

    tag: str
    pipeline: Any
    schema: InputSchema
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.tag.partition(":")[0]

    @property
    def version(self) -> str:
        return self.tag.partition(":")[2]

    def infer(self, matrix: np.ndarray) -> np.ndarray:
        """Class probabilities (rows x classes) for classifiers, values (rows,) for regressors."""
        inputs = self.frame(matrix) if self.schema.frame_input else matrix
        if self.schema.is_classifier:
            return np.asarray(self.pipeline.predict_proba(inputs), dtype=np.float64)
        return np.asarray(self.pipeline.predict(inputs), dtype=np.float64)

    def frame(self, matrix: np.ndarray) -> pd.DataFrame:
        """The batch as the DataFrame the pipeline was fitted on: one column per feature,
        numbers as float64 and categories as Python strings; built column by column."""
        columns = {
            f.name: pd.Series(matrix[:, i], dtype=object) if f.is_categorical else matrix[:, i].astype(np.float64)
            for i, f in enumerate(self.schema.features)
        }
        return pd.DataFrame(columns)


def check_configured(settings: ServerSettings) -> None:
    """Fail before serving when a configured tag is absent, has no schema, or takes other
    features than the other tags of its model name (MissingModel, SettingsError)."""
    schemas = {tag: _schema(tag, dict(_stored(tag).info.metadata)) for tag in settings.tags()}
    for name, served in settings.models.items():
        tags = [v.tag for v in served.variants] + ([served.shadow] if served.shadow else [])
        first = schemas[tags[0]]
        for tag in tags[1:]:
            if schemas[tag].names != first.names or schemas[tag].task != first.task:
                raise SettingsError(
                    f"Configuration 'models.{name}': '{tag}' takes other features or another task than "
                    f"'{tags[0]}'; every tag of one model name must share its input schema."
                )


def load(tag: str) -> LoadedModel:
    """Load a tag from the BentoML model store, or raise MissingModel with the fix."""
    stored = _stored(tag)
    metadata: dict[str, Any] = dict(stored.info.metadata)
    schema = _schema(tag, metadata)
    pipeline = bentoml.sklearn.load_model(stored)
    return LoadedModel(tag=tag, pipeline=pipeline, schema=schema, labels=dict(stored.info.labels), metadata=metadata)


def _schema(tag: str, metadata: dict[str, Any]) -> InputSchema:
    if SCHEMA_METADATA_KEY not in metadata:
        raise MissingModel(f"Model '{tag}' has no input schema in its metadata; retrain it with `python -m training`.")
    return InputSchema.from_dict(metadata[SCHEMA_METADATA_KEY])


def _stored(tag: str) -> bentoml.Model:
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        name, _, version = tag.partition(":")
        raise MissingModel(
            f"Model '{tag}' is configured but not in the model store; train it with "
            f"`python -m training {name} --version {version}` (or `make train` for the defaults)."
        ) from None
