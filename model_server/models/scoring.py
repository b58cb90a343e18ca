"""Scoring of table batches with one tag: the server's checks and runtime, without the server.

A `ScoringArtifact` is what a batch job needs of a tag: the input schema (rules, categories,
missing marker), the runtime's model (the checked ONNX export, or the pickled pipeline),
the labels and the drift reference. The driver builds it from the model store
(registry.scoring_artifact) and ships its bytes to every executor (a Spark broadcast);
executors need numpy, pandas, pyarrow and onnxruntime (or scikit-learn), not BentoML.

`Scorer.score` takes an Arrow record batch and answers one with the kept columns, the
prediction, one probability column per class, the tag and, for each row the checks refuse,
its problems (`loc`/`msg`/`type`, as the API's 400 answer). Rows are checked by
`InputSchema.check_columns`, the rules the server applies to a request of that one row;
valid rows are predicted by the same runtime classes the server uses.

How table cells are read (tables have types, JSON values have theirs): a number column
gives numbers, NaN and null being a missing value; a text column of a numeric feature
gives a number for a cell that is a decimal number (CSV has no types), and any other text
is refused as the server refuses a string; an empty text cell of a categorical feature is
a missing value, as in the API. Cells of another kind (a boolean, a number where a
category is expected) meet the same converter as a JSON value.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model_server.models.drift_reference import REFERENCE_METADATA, DriftReference
from model_server.models.onnx_runtime import ONNX, OnnxModel
from model_server.models.pipeline_runtime import pipeline_frame, pipeline_output
from model_server.models.schema import REJECT, InputSchema, TableColumn

# Output columns (docs/batch.md).
PREDICTION = "prediction"
PROBABILITY_PREFIX = "probability_"
TAG = "tag"
ERROR = "error"
CONTRIBUTION_PREFIX = "contribution_"
# A text cell of a numeric feature that is this is a number; any other text is refused.
NUMBER_TEXT = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"
ERROR_TYPE = pa.list_(
    pa.struct([pa.field("loc", pa.list_(pa.string())), pa.field("msg", pa.string()), pa.field("type", pa.string())])
)
FORMAT = 1

if TYPE_CHECKING:  # explanations import scikit-learn and scipy: only a job that explains loads them
    from model_server.models.explain import Explainer, Explanation


@dataclass(frozen=True)
class ScoringArtifact:
    """What scoring needs of one tag; plain data, so that it pickles anywhere."""

    tag: str
    schema: InputSchema
    runtime: str  # onnx or sklearn
    onnx: bytes | None = None  # the checked export (runtime onnx)
    onnx_inputs: dict[str, str] = field(default_factory=dict)  # column -> the graph's input name
    pipeline: bytes | None = None  # the pickled pipeline (runtime sklearn, or explanations)
    labels: dict[str, str] = field(default_factory=dict)
    drift: dict[str, Any] | None = None  # the training reference, as the metadata stores it
    unknown_categories: str = REJECT

    def to_bytes(self) -> bytes:
        data = {
            "format": FORMAT,
            "tag": self.tag,
            "schema": self.schema.to_dict(),
            "runtime": self.runtime,
            "onnx": self.onnx,
            "onnx_inputs": self.onnx_inputs,
            "pipeline": self.pipeline,
            "labels": self.labels,
            "drift": self.drift,
            "unknown_categories": self.unknown_categories,
        }
        return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes) -> ScoringArtifact:
        fields = pickle.loads(data)
        if fields.pop("format", None) != FORMAT:
            raise ValueError("this scoring artifact was made by another version of the code")
        return cls(**{**fields, "schema": InputSchema.from_dict(fields["schema"])})

    def digest(self) -> str:
        """Identifies the artifact's bytes (executors build one scorer per digest)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]


@dataclass
class ScoredBatch:
    """One scored batch, with its counts: rows, invalid rows, and the drift bins' counts."""

    batch: pa.RecordBatch
    rows: int
    invalid: int
    drift_counts: np.ndarray | None


@dataclass
class Totals:
    """Counts summed over batches (one partition, or the whole job)."""

    rows: int = 0
    invalid: int = 0
    drift_counts: np.ndarray | None = None

    def add(self, scored: ScoredBatch | Totals) -> None:
        self.rows += scored.rows
        self.invalid += scored.invalid
        if scored.drift_counts is not None:
            counts = scored.drift_counts
            self.drift_counts = counts.copy() if self.drift_counts is None else self.drift_counts + counts

    def to_tuple(self) -> tuple[int, int, list[int] | None]:
        counts = None if self.drift_counts is None else self.drift_counts.tolist()
        return self.rows, self.invalid, counts

    @classmethod
    def from_tuple(cls, value: tuple[int, int, list[int] | None]) -> Totals:
        rows, invalid, counts = value
        return cls(rows, invalid, None if counts is None else np.asarray(counts, dtype=np.int64))


class Scorer:
    """Scores record batches with one artifact: checks, the runtime, and the output columns."""

    def __init__(self, artifact: ScoringArtifact, explain: bool = False, threads: int = 1) -> None:
        self.artifact = artifact
        schema = self.schema = artifact.schema
        self.explain = explain
        self._pipeline = pickle.loads(artifact.pipeline) if artifact.pipeline is not None else None
        if artifact.runtime == ONNX:
            if artifact.onnx is None:
                raise ValueError(f"'{artifact.tag}' has no ONNX export")
            self._run = OnnxModel(artifact.onnx, schema, threads, artifact.onnx_inputs).infer
        else:
            if self._pipeline is None:
                raise ValueError(f"the artifact of '{artifact.tag}' holds no pipeline")
            pipeline = self._pipeline
            self._run = lambda matrix: pipeline_output(pipeline, schema, matrix)
        self.explainer: Explainer | None = None
        self.explained_sample: Explanation | None = None  # how the contributions read
        if explain:
            from model_server.models.explain import build

            self.explainer = build(artifact.tag, self._pipeline, schema, lambda m: pipeline_frame(schema, m))
            self.explained_sample = self.explainer.explain(schema.sample_matrix())
        self.reference = (
            DriftReference.from_metadata({REFERENCE_METADATA: artifact.drift}, schema) if artifact.drift else None
        )
        self._tag = pa.array([artifact.tag], pa.string())

    _shared: dict[tuple[str, bool], Scorer] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, data: bytes, digest: str, explain: bool = False) -> Scorer:
        """One scorer per artifact in this process (a Spark executor's Python worker is
        reused across tasks: the ONNX session is built once)."""
        with cls._shared_lock:
            scorer = cls._shared.get((digest, explain))
            if scorer is None:
                scorer = cls._shared[(digest, explain)] = cls(ScoringArtifact.from_bytes(data), explain)
            return scorer

    def output_fields(self) -> list[pa.Field]:
        """The columns scoring adds after the kept ones."""
        schema = self.schema
        fields = [pa.field(PREDICTION, pa.string() if schema.is_classifier else pa.float64())]
        fields += [pa.field(PROBABILITY_PREFIX + c, pa.float64()) for c in schema.classes if schema.is_classifier]
        fields += [pa.field(TAG, pa.string()), pa.field(ERROR, ERROR_TYPE)]
        fields += [pa.field(name, pa.float64()) for name in self.contribution_names()]
        return fields

    def contribution_names(self) -> list[str]:
        """One column per feature (per class and feature for a multi-class explanation)."""
        if self.explained_sample is None:
            return []
        names = self.schema.names
        classes = self.explanation_classes()
        if len(classes) > 1:
            return [f"{CONTRIBUTION_PREFIX}{c}_{n}" for c in classes for n in names]
        return [CONTRIBUTION_PREFIX + n for n in names]

    def explanation_classes(self) -> tuple[str, ...]:
        return self.explained_sample.classes if self.explained_sample is not None else ()

    def explanation_facts(self) -> dict[str, Any] | None:
        """How the contributions read (method, space, base value), for the output's metadata."""
        sample = self.explained_sample
        if sample is None:
            return None
        return {
            "method": sample.method,
            "space": sample.space,
            "reference": sample.reference,
            "classes": list(sample.classes),
            "base_value": sample.base_value.tolist(),
        }

    def score(self, batch: pa.RecordBatch, keep: Iterable[str] = ()) -> ScoredBatch:
        """Check every row, predict the valid ones, and answer the output batch."""
        schema = self.schema
        rows = batch.num_rows
        columns = [table_column(f.is_categorical, batch.column(f.name)) for f in schema.features]
        matrix, problems = schema.check_columns(columns, self.artifact.unknown_categories)
        invalid = np.zeros(rows, dtype=bool)
        invalid[list(problems)] = True
        valid_rows = np.flatnonzero(~invalid)
        valid = matrix if not problems else matrix[valid_rows]
        output = self._run(valid) if valid_rows.size else None
        arrays: list[pa.Array] = [batch.column(name) for name in keep]
        names = list(keep)
        arrays += self._predictions(rows, valid_rows, invalid, output)
        arrays.append(self._tag.take(np.zeros(rows, dtype=np.int32)))
        arrays.append(_errors(rows, problems))
        if self.explainer is not None:
            arrays += self._contributions(rows, valid_rows, invalid, valid)
        names += [f.name for f in self.output_fields()]
        counts = None
        if self.reference is not None and output is not None:
            counts = self.reference.count(valid, output)
        elif self.reference is not None:
            counts = np.zeros(self.reference.size, dtype=np.int64)
        return ScoredBatch(pa.RecordBatch.from_arrays(arrays, names=names), rows, len(problems), counts)

    def _predictions(
        self, rows: int, valid_rows: np.ndarray, invalid: np.ndarray, output: np.ndarray | None
    ) -> list[pa.Array]:
        schema = self.schema
        if not schema.is_classifier:
            values = np.full(rows, math.nan)
            if output is not None:
                values[valid_rows] = output
            return [pa.array(values, pa.float64(), mask=invalid)]
        probabilities = np.full((rows, len(schema.classes)), math.nan)
        chosen = np.zeros(rows, dtype=np.intp)
        if output is not None:
            probabilities[valid_rows] = output
            chosen[valid_rows] = np.argmax(output, axis=1)  # as the API's answer names the class
        labels = pa.array(list(schema.classes), pa.string()).take(chosen)
        predictions = pc.if_else(pa.array(invalid), pa.scalar(None, pa.string()), labels)
        return [predictions] + [
            pa.array(np.ascontiguousarray(probabilities[:, i]), pa.float64(), mask=invalid)
            for i in range(len(schema.classes))
        ]

    def _contributions(
        self, rows: int, valid_rows: np.ndarray, invalid: np.ndarray, valid: np.ndarray
    ) -> list[pa.Array]:
        assert self.explainer is not None
        width = len(self.contribution_names())
        values = np.full((rows, width), math.nan)
        if valid_rows.size:
            explained = self.explainer.explain(valid).contributions  # rows x outputs x features
            values[valid_rows] = explained.reshape(valid_rows.size, -1)
        return [pa.array(np.ascontiguousarray(values[:, i]), pa.float64(), mask=invalid) for i in range(width)]


def table_column(categorical: bool, array: pa.Array | pa.ChunkedArray) -> TableColumn:
    """One feature's cells as InputSchema.check_columns takes them (the module's docstring
    says how a table's cells are read)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_string_view(array.type):  # Arrow's text functions take plain strings
        array = array.cast(pa.large_string())
    kind = array.type
    rows = len(array)
    if categorical:
        if _is_text(kind):
            return TableColumn(array.to_numpy(zero_copy_only=False))
        values = np.full(rows, None, dtype=object)
        return TableColumn(values, _others(array))
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return TableColumn(_float64(pc.cast(array, pa.float64(), safe=False)))
    if _is_text(kind):
        looks = pc.fill_null(pc.match_substring_regex(array, NUMBER_TEXT), False)
        numbers = _float64(pc.cast(pc.if_else(looks, array, pa.scalar(None, kind)), pa.float64()))
        refused = np.flatnonzero(pc.and_(array.is_valid(), pc.invert(looks)).to_numpy(zero_copy_only=False))
        texts = array.take(pa.array(refused, pa.int64())).to_pylist() if refused.size else []
        return TableColumn(numbers, dict(zip(refused.tolist(), texts, strict=True)))
    return TableColumn(np.full(rows, math.nan), _others(array))


def _float64(array: pa.Array) -> np.ndarray:
    """A float64 Arrow array as numpy, null as NaN (always a writable copy)."""
    return np.array(array.to_numpy(zero_copy_only=False), dtype=np.float64)


def _others(array: pa.Array) -> dict[int, Any]:
    """Cells of another kind than the feature's, by row: every present value (a NaN is a gap)."""
    if pa.types.is_null(array.type):
        return {}
    return {
        row: value
        for row, value in enumerate(array.to_pylist())
        if value is not None and not (type(value) is float and math.isnan(value))
    }


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind))


def _errors(rows: int, problems: dict[int, list[dict[str, Any]]]) -> pa.Array:
    if not problems:
        return pa.nulls(rows, ERROR_TYPE)
    entries: list[Any] = [None] * rows
    for row, found in problems.items():
        entries[row] = [{"loc": [str(part) for part in p["loc"]], "msg": p["msg"], "type": p["type"]} for p in found]
    return pa.array(entries, ERROR_TYPE)
