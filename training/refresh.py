"""Bring a stored tag up to what registration stores today: the ONNX export, checked
against the pipeline on held-out rows, and the drift reference of its training rows.

    python -m training refresh TAG [--rows FILE] [--force]

A tag trained on a built-in data set gets both from the data set: the split is made
again with the tag's seed, once the data set's hash matches the one recorded at training.
Any other tag (the user's own file, an imported pipeline) needs `--rows FILE`, a CSV or
Parquet table with the schema's columns: the export is checked on those rows and the
drift reference is built from them. The pipeline itself is not changed; the tag is saved
again with the same labels and metadata, plus what the checks found, and the time it was
first registered. If saving fails, the tag is restored as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd

from model_server.constants import ONNX_METADATA, SCHEMA_METADATA_KEY
from model_server.models.drift_reference import REFERENCE_METADATA
from model_server.models.schema import InputSchema

from . import datasets, tables
from .register import load_builtin, replacing, save, split

# Written by `save` itself; everything else in the metadata is kept as it was.
SAVED_BY_REGISTRATION = ("sklearn_version", SCHEMA_METADATA_KEY, ONNX_METADATA, REFERENCE_METADATA)


class RefreshError(ValueError):
    """The tag cannot be refreshed as asked; the message says what to pass."""


@dataclass
class Refreshed:
    tag: str
    onnx: dict[str, Any]
    drift_reference: bool
    rows_from: str


def refresh(tag: str, rows_file: Path | None = None, force: bool = False) -> Refreshed | None:
    """Refresh `tag` (see the module's docstring); None when it already has both an ONNX
    verdict and a drift reference and `force` is not given."""
    stored = bentoml.models.get(tag)
    metadata: dict[str, Any] = dict(stored.info.metadata)
    labels = dict(stored.info.labels)
    if not force and ONNX_METADATA in metadata and REFERENCE_METADATA in metadata:
        return None
    schema = InputSchema.from_dict(metadata[SCHEMA_METADATA_KEY])
    pipeline = bentoml.sklearn.load_model(stored)
    if rows_file is not None:
        training_rows = held_out = _rows_of_file(rows_file, schema)
        rows_from = rows_file.name
    else:
        training_rows, held_out = _built_in_split(tag, labels, metadata)
        rows_from = f"the {labels['dataset']} data set, split again with seed {metadata['seed']}"
    kept = {key: value for key, value in metadata.items() if key not in SAVED_BY_REGISTRATION}
    kept.setdefault("first_registered", stored.info.creation_time.isoformat())
    with replacing(tag):
        onnx = save(tag, pipeline, labels, schema, kept, held_out=held_out, training_rows=training_rows)
    drift = REFERENCE_METADATA in bentoml.models.get(tag).info.metadata
    return Refreshed(tag=tag, onnx=onnx, drift_reference=drift, rows_from=rows_from)


def _built_in_split(tag: str, labels: dict[str, str], metadata: dict[str, Any]) -> tuple[Any, Any]:
    """The tag's training and held-out rows, split again from its built-in data set."""
    name = labels.get("dataset", "")
    source = labels.get("source", "")
    built_in = name in datasets.LOADERS or name == "titanic"
    if not built_in or source == "imported" or source.startswith("file:") or "seed" not in metadata:
        raise RefreshError(
            f"'{tag}' was not trained on a built-in data set; pass --rows FILE, a CSV or Parquet table "
            "with its schema's columns (held-out rows, for instance)"
        )
    data: datasets.Dataset | tables.Table = load_builtin(name)
    if data.fingerprint() != metadata.get("data_sha256"):
        raise RefreshError(
            f"the {name} data set installed now differs from the one '{tag}' was trained on (its hash changed); "
            "pass --rows FILE"
        )
    X_train, X_test, _, _ = split(data, int(metadata["seed"]))
    return X_train, X_test


def _rows_of_file(path: Path, schema: InputSchema) -> Any:
    """The file's rows with the schema's columns, as training prepared them: categories as
    text with the tag's missing marker (a code 1.0 read from a CSV is the category "1"),
    numbers as float64; a DataFrame for a model fitted on named columns, else a matrix."""
    frame = tables.read_file(path)
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise RefreshError(f"{path.name} lacks the columns {', '.join(missing)} of the model's schema")
    columns = {}
    for feature in schema.features:
        values = frame[feature.name]
        if feature.is_categorical:
            columns[feature.name] = tables.categorical_values(values, feature.missing)
            continue
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.isna().sum() > values.isna().sum():
            raise RefreshError(f"{path.name}: column '{feature.name}' holds values that are not numbers")
        columns[feature.name] = numbers.astype(np.float64)
    rows = pd.DataFrame(columns)
    return rows if schema.frame_input else rows.to_numpy(dtype=np.float64)
