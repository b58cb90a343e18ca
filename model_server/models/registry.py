"""Loaded models by tag: the fitted pipeline, its input schema and stored metadata."""

from __future__ import annotations

import contextlib
import pickle
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bentoml
import numpy as np
import pandas as pd

from model_server.config.settings import ServedModel, SettingsError
from model_server.constants import BUILT_IN_DATA_SETS, ONNX_METADATA, ONNX_OBJECT, SCHEMA_METADATA_KEY
from model_server.json_codec import finite_number
from model_server.models.drift_reference import REFERENCE_METADATA, DriftReference
from model_server.models.onnx_runtime import ONNX, SKLEARN, OnnxModel
from model_server.models.pipeline_runtime import pipeline_frame, pipeline_output
from model_server.models.schema import InputSchema

if TYPE_CHECKING:  # batch scoring needs pyarrow, which the serving image lacks: imported where used
    from model_server.models.scoring import ScoringArtifact


class MissingModel(Exception):
    """A configured tag is not in the model store; the message says how to train it."""


class StoredPipeline:
    """A tag's fitted pipeline, read from the model store on its first use (once, whichever
    thread asks first). A tag served with its ONNX export needs the pipeline only to explain,
    to switch runtime or for the page's form, and unpickling it imports scikit-learn: about
    two seconds of CPU and a hundred megabytes per worker that most workers never need."""

    def __init__(self, stored: bentoml.Model) -> None:
        self._stored: bentoml.Model | None = stored
        self._pipeline: Any = None
        self._lock = threading.Lock()

    def load(self) -> Any:
        with self._lock:
            if self._stored is not None:
                self._pipeline = bentoml.sklearn.load_model(self._stored)
                self._stored = None
            return self._pipeline


@dataclass
class LoadedModel:
    """One stored model tag, ready to predict."""

    tag: str
    pipeline: Any  # the fitted pipeline, or the StoredPipeline it is read from (fitted())
    schema: InputSchema
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    onnx: OnnxModel | None = None  # the export registration checked, when there is one
    # Built on the first explanation of this tag (explain.explainer_for), then kept.
    explainer: Any = field(default=None, repr=False, compare=False)
    drift: DriftReference | None = None  # training distributions (model_server/models/drift_reference.py), when stored

    @property
    def metrics(self) -> dict[str, float]:
        """The evaluation metrics registration stored, those that are finite numbers (a tag
        registered before NaN was stored as null may hold NaN, which JSON cannot)."""
        found = self.metadata.get("metrics")
        numbers = {k: finite_number(v) for k, v in found.items()} if isinstance(found, dict) else {}
        return {k: v for k, v in numbers.items() if v is not None}

    @property
    def runtimes(self) -> tuple[str, ...]:
        """What this tag can serve with: sklearn, and onnx when its export was loaded."""
        return (SKLEARN, ONNX) if self.onnx is not None else (SKLEARN,)

    def runner(self, runtime: str) -> Callable[[np.ndarray], np.ndarray]:
        """The call that predicts a batch with `runtime` (sklearn, or onnx when exported)."""
        if runtime == ONNX:
            if self.onnx is None:
                raise ValueError(f"'{self.tag}' has no ONNX export")
            return self.onnx.infer
        self.fitted()  # read now, where the runner is made, not on its first batch
        return self.infer

    @property
    def name(self) -> str:
        return self.tag.partition(":")[0]

    @property
    def version(self) -> str:
        return self.tag.partition(":")[2]

    def fitted(self) -> Any:
        """The fitted pipeline, read from the store on the first call."""
        pipeline = self.pipeline
        if isinstance(pipeline, StoredPipeline):
            pipeline = self.pipeline = pipeline.load()
        return pipeline

    def infer(self, matrix: np.ndarray) -> np.ndarray:
        """Class probabilities (rows x classes) for classifiers, values (rows,) for regressors."""
        return pipeline_output(self.fitted(), self.schema, matrix)

    def frame(self, matrix: np.ndarray) -> pd.DataFrame:
        """The batch as the DataFrame the pipeline was fitted on (pipeline_runtime.py)."""
        return pipeline_frame(self.schema, matrix)


def check_configured(models: dict[str, ServedModel]) -> None:
    """Fail before serving when a tag of `models` is absent, has no schema, or takes other
    features than the other tags of its model name (MissingModel, SettingsError)."""
    tags = {tag for served in models.values() for tag in served.tags()}
    metadata = {tag: dict(_stored(tag).info.metadata) for tag in tags}  # read once per tag
    schemas = {tag: _schema(tag, metadata[tag]) for tag in tags}
    try:
        check_schemas(models, schemas)
    except ValueError as exc:
        raise SettingsError(f"{exc}; every tag of one model name must share its input schema.") from None
    for name, served in models.items():
        for variant in served.variants:
            if variant.runtime is not None and variant.runtime not in _runtimes(metadata[variant.tag]):
                raise SettingsError(f"'{name}' asks for runtime {variant.runtime}: {no_onnx_export(variant.tag)}.")


def check_schemas(models: dict[str, ServedModel], schemas: dict[str, InputSchema]) -> None:
    """Every tag of one name takes the same features (in any order) for the same task
    (ValueError naming them)."""
    for name, served in models.items():
        tags = served.tags()
        for tag in tags[1:]:
            if problem := mismatch(name, tags[0], tag, schemas):
                raise ValueError(problem)


def mismatch(name: str, reference: str, tag: str, schemas: dict[str, InputSchema]) -> str | None:
    """Why `tag` cannot serve `name` beside `reference` (another task, other features), or
    None when it can: the one rule for start-up, a routing change and the admin API."""
    if same_inputs(schemas[tag], schemas[reference]):
        return None
    return schema_mismatch(name, reference, schemas[reference], tag, schemas[tag])


def no_onnx_export(tag: str) -> str:
    """What is said of a tag asked to serve with runtime onnx that has no checked export."""
    return (
        f"'{tag}' has no ONNX export that matched scikit-learn at registration "
        "(see its metadata's 'onnx'); serve it with runtime sklearn"
    )


def same_inputs(schema: InputSchema, other: InputSchema) -> bool:
    """Whether two tags can serve one name: the same task and the same set of features.
    The order may differ: records map by name, and the core puts positional rows and
    tensors (in the order of the name's first variant) into each tag's own order."""
    return schema.task == other.task and set(schema.names) == set(other.names)


def schema_mismatch(name: str, tag: str, schema: InputSchema, other_tag: str, other: InputSchema) -> str:
    """A sentence naming the features (or the task) in which two tags of one name differ."""
    if other.task != schema.task:
        return f"'{other_tag}' is a {other.task} model but '{tag}' of '{name}' is a {schema.task} model"
    missing = [n for n in schema.names if n not in other.names]
    extra = [n for n in other.names if n not in schema.names]
    parts = []
    if missing:
        parts.append(f"lacks {', '.join(repr(n) for n in missing[:10])}")
    if extra:
        parts.append(f"adds {', '.join(repr(n) for n in extra[:10])}")
    return f"'{other_tag}' takes other features than '{tag}' of '{name}': it {' and '.join(parts)}"


@dataclass(frozen=True)
class StoredFacts:
    """What the store says of a tag without loading it: its metadata, labels and time of
    registration. Read once per change of the tag's model.yaml (`stored_facts`)."""

    tag: str
    metadata: dict[str, Any]
    labels: dict[str, str]
    created: datetime


# tag -> (model.yaml's modification time and size, its facts; not to be changed).
# BentoML parses model.yaml with PyYAML on every `bentoml.models.get`, about 25 ms a tag:
# the admin view, the OIP repository index and routing checks read every tag of a name, often.
_FACTS: dict[str, tuple[tuple[int, int], StoredFacts]] = {}
_STORE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def stored_facts(tag: str) -> StoredFacts:
    """A stored tag's facts (MissingModel when absent)."""
    name, _, version = tag.partition(":")
    found = _yaml_stat(name, version)
    if found is not None:
        cached = _FACTS.get(tag)
        if cached is not None and cached[0] == found:
            return cached[1]
    stored = _stored(tag)
    facts = StoredFacts(
        str(stored.tag), dict(stored.info.metadata), dict(stored.info.labels), stored.info.creation_time
    )
    if found is not None and str(stored.tag) == tag:
        _FACTS[tag] = (found, facts)
    return facts


def stored_schema(tag: str) -> InputSchema:
    """The input schema a stored tag was trained with (MissingModel when absent)."""
    return _schema(tag, stored_facts(tag).metadata)


def stored_names() -> list[str]:
    """Every model name in the store, sorted."""
    store = _store_path()
    if not store.is_dir():
        return []
    return sorted(
        entry.name
        for entry in store.iterdir()
        if _STORE_PART.match(entry.name) and entry.is_dir() and any(entry.glob("*/model.yaml"))
    )


def stored_versions(name: str) -> list[str]:
    """Every tag of `name` in the model store, oldest first."""
    if not _STORE_PART.match(name):  # not a name BentoML would store ('a/b', '..')
        return []
    folder = _store_path() / name
    if not folder.is_dir():
        return []
    facts = []
    for entry in folder.iterdir():
        if (entry / "model.yaml").is_file():
            with contextlib.suppress(MissingModel):
                facts.append(stored_facts(f"{name}:{entry.name}"))
    return [f.tag for f in sorted(facts, key=lambda f: f.created)]


def registration_time(tag: str) -> str | None:
    """When BentoML stored the tag (ISO 8601), or None when the store no longer has it."""
    try:
        return stored_facts(tag).created.isoformat()
    except MissingModel:
        return None


def _store_path() -> Path:
    """The folder of the model store this process uses: BentoML's store object keeps it
    as `_path` (hook 9 of model_server/bentoml_hooks.py, which lists every such hook)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.model_store.get()._path)


def _yaml_stat(name: str, version: str) -> tuple[int, int] | None:
    """(modification time in ns, size) of a tag's model.yaml; None when it has none there."""
    if not (_STORE_PART.match(name) and _STORE_PART.match(version)):
        return None
    try:
        found = (_store_path() / name / version / "model.yaml").stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size


def load(tag: str, threads: int = 1) -> LoadedModel:
    """Load a tag from the BentoML model store, with its ONNX export when registration
    kept one (onnxruntime with `threads` intra-op threads), or raise MissingModel. A tag
    with an export reads its pipeline on first use; one without, now."""
    stored = _stored(tag)
    metadata: dict[str, Any] = dict(stored.info.metadata)
    schema = _schema(tag, metadata)
    pipeline: Any = StoredPipeline(stored)
    exported = stored.custom_objects.get(ONNX_OBJECT) if ONNX in _runtimes(metadata) else None
    # The graph's input name per column, recorded at export (absent from older tags: the column's own).
    inputs = metadata.get(ONNX_METADATA, {}).get("inputs")
    onnx = OnnxModel(exported, schema, threads, inputs) if isinstance(exported, bytes) else None
    if onnx is None:
        pipeline = pipeline.load()
    return LoadedModel(
        tag=tag,
        pipeline=pipeline,
        schema=schema,
        labels=dict(stored.info.labels),
        metadata=metadata,
        onnx=onnx,
        drift=DriftReference.from_metadata(metadata, schema),
    )


def scoring_artifact(
    tag: str, runtime: str | None = None, unknown_categories: str = "reject", with_pipeline: bool = False
) -> ScoringArtifact:
    """What batch scoring ships to its executors for a stored tag (scoring.py): the schema,
    the runtime's model (the checked ONNX export, or the pipeline; `runtime` None: the
    server's default for the tag), the labels and the drift reference. `with_pipeline`
    adds the pipeline to an ONNX artifact (explanations). MissingModel when the tag is
    not stored; ValueError when it has no export for runtime onnx."""
    from model_server.models.scoring import ScoringArtifact

    stored = _stored(tag)
    metadata: dict[str, Any] = dict(stored.info.metadata)
    schema = _schema(tag, metadata)
    runtimes = _runtimes(metadata)
    runtime = runtime or default_runtime(runtimes)
    if runtime not in runtimes:
        raise ValueError(no_onnx_export(tag))
    exported = stored.custom_objects.get(ONNX_OBJECT) if runtime == ONNX else None
    pipeline = None
    if runtime == SKLEARN or with_pipeline:
        pipeline = pickle.dumps(bentoml.sklearn.load_model(stored), protocol=pickle.HIGHEST_PROTOCOL)
    return ScoringArtifact(
        tag=tag,
        schema=schema,
        runtime=runtime,
        onnx=exported if isinstance(exported, bytes) else None,
        onnx_inputs=dict(metadata.get(ONNX_METADATA, {}).get("inputs") or {}),
        pipeline=pipeline,
        labels=dict(stored.info.labels),
        drift=metadata.get(REFERENCE_METADATA) or None,
        unknown_categories=unknown_categories,
    )


def stored_runtimes(tag: str) -> tuple[str, ...]:
    """The runtimes a stored tag can serve with: sklearn, and onnx when it has a checked export."""
    return _runtimes(stored_facts(tag).metadata)


def default_runtime(runtimes: tuple[str, ...]) -> str:
    """What a tag serves with when its routing names no runtime: its ONNX export where
    registration kept one (it answers a small batch many times faster), else the pipeline."""
    return ONNX if ONNX in runtimes else SKLEARN


def _runtimes(metadata: dict[str, Any]) -> tuple[str, ...]:
    """sklearn always; onnx when registration kept a checked export (training/onnx_export.py)."""
    return (SKLEARN, ONNX) if metadata.get(ONNX_METADATA, {}).get("exported") else (SKLEARN,)


def _schema(tag: str, metadata: dict[str, Any]) -> InputSchema:
    if SCHEMA_METADATA_KEY not in metadata:
        raise MissingModel(f"Model '{tag}' has no input schema in its metadata; retrain it with `python -m training`.")
    return InputSchema.from_dict(metadata[SCHEMA_METADATA_KEY])


def _stored(tag: str) -> bentoml.Model:
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise MissingModel(f"Model '{tag}' is not in the model store; {how_to_register(tag)}.") from None


def how_to_register(tag: str) -> str:
    """What puts a missing tag into the store: the training command for a built-in data
    set's name; any other name came from a user's own table or an import."""
    name, _, version = tag.partition(":")
    if name in BUILT_IN_DATA_SETS:
        return f"train it with `python -m training {name} --version {version}`"
    return "train or import it (docs/training.md)"
