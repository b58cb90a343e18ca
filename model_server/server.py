"""The transport-agnostic core: every front calls `ModelServer` and only converts.

It holds the loaded models, picks the tag for each request (router), validates input
against the tag's training schema, and runs the model through one batcher per tag.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import registry
from .batching import ModelCallFailed, NoWaitBatcher
from .errors import InvalidInput, ModelNotFound, PredictionFailed
from .metrics import Metrics
from .registry import LoadedModel
from .router import Router
from .settings import ServerSettings


@dataclass(frozen=True)
class Prediction:
    """The output of one request and the model tag that produced it."""

    model: LoadedModel
    output: np.ndarray

    def to_json(self) -> dict[str, Any]:
        schema = self.model.schema
        body: dict[str, Any] = {"model": self.model.name, "tag": self.model.tag}
        if schema.is_classifier:
            body["predictions"] = [schema.classes[i] for i in np.argmax(self.output, axis=1)]
            body["probabilities"] = self.output.tolist()
            body["classes"] = list(schema.classes)
        else:
            body["predictions"] = self.output.tolist()
        return body


class ModelServer:
    """Loaded models, routing, validation and batching for every front."""

    def __init__(
        self, settings: ServerSettings, models: dict[str, LoadedModel], metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics or Metrics()
        self.routers = {name: Router(served.variants) for name, served in settings.models.items()}
        # One model thread per worker process: models run one at a time, off the event
        # loop, and each worker process is one core's worth of compute.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._batchers = {tag: self._batcher(model) for tag, model in models.items()}

    @classmethod
    def from_settings(cls, settings: ServerSettings, metrics: Metrics | None = None) -> ModelServer:
        """Load every configured tag from the model store (MissingModel names the one absent)."""
        models = {tag: registry.load(tag) for tag in settings.tags()}
        return cls(settings, models, metrics)

    def model_names(self) -> list[str]:
        return list(self.routers)

    def resolve(self, name: str, version: str | None = None, key: str | None = None) -> LoadedModel:
        """The loaded model that answers: the explicit version, else the router's choice."""
        router = self.routers.get(name)
        if router is None:
            raise ModelNotFound(name)
        if version:
            tag = router.tag_for_version(version)
            if tag is None:
                raise ModelNotFound(name, version)
        else:
            tag = router.choose(key)
        return self.models[tag]

    async def predict_instances(
        self, name: str, instances: Any, version: str | None = None, key: str | None = None
    ) -> Prediction:
        """Predict JSON `instances` (records keyed by feature name, or rows in training order)."""
        model = self.resolve(name, version, key)
        try:
            matrix = model.schema.rows_to_matrix(instances, self.settings.max_rows_per_request)
        except InvalidInput:
            self.metrics.observe_request(model.name, model.tag, "invalid", None)
            raise
        return await self._run(model, matrix)

    async def predict_matrix(
        self, name: str, matrix: np.ndarray, version: str | None = None, key: str | None = None
    ) -> Prediction:
        """Predict an already numeric matrix (from a tensor), checked against the schema."""
        model = self.resolve(name, version, key)
        try:
            matrix = model.schema.check_matrix(matrix, self.settings.max_rows_per_request)
        except InvalidInput:
            self.metrics.observe_request(model.name, model.tag, "invalid", None)
            raise
        return await self._run(model, matrix)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def _run(self, model: LoadedModel, matrix: np.ndarray) -> Prediction:
        started = time.perf_counter()
        try:
            output = await self._batchers[model.tag].submit(matrix)
        except ModelCallFailed as exc:
            self.metrics.observe_request(model.name, model.tag, "error", None)
            raise PredictionFailed(str(exc)) from None
        self.metrics.observe_request(model.name, model.tag, "ok", time.perf_counter() - started)
        return Prediction(model=model, output=output)

    def _batcher(self, model: LoadedModel) -> NoWaitBatcher:
        def observe(rows: int, requests: int) -> None:
            self.metrics.observe_batch(model.name, model.tag, rows, requests)

        return NoWaitBatcher(model.infer, self.settings.max_batch_rows, self._executor, observe)
