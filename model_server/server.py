"""The transport-agnostic core: every front calls `ModelServer` and only converts.

It holds the loaded models, picks the tag for each request (router), validates input
against the tag's training schema, and runs the model through one batcher per tag.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import registry
from .batching import Batcher, ModelCallFailed
from .errors import InvalidInput, ModelNotFound, PredictionFailed
from .metrics import Metrics
from .registry import LoadedModel
from .router import Router
from .schema import ACCEPT, InputSchema
from .settings import ServerSettings

log = logging.getLogger(__name__)

# Shadow comparisons waiting at once, per worker; beyond this they are dropped (and
# counted), so a slow shadow model can never hold unbounded memory.
MAX_PENDING_SHADOWS = 1000


@dataclass(frozen=True)
class Target:
    """A served model name and the loaded tag chosen to answer a request for it."""

    name: str
    model: LoadedModel


@dataclass(frozen=True)
class Prediction:
    """The output of one request and the model tag that produced it."""

    name: str
    model: LoadedModel
    output: np.ndarray
    warnings: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        return self.model.tag


@dataclass(frozen=True)
class Variant:
    """One tag that serves a model name, as the APIs describe it."""

    tag: str
    version: str
    weight: float
    labels: dict[str, str]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class ServedModel:
    """What the APIs say about one served model name."""

    name: str
    schema: InputSchema
    variants: list[Variant]
    shadow: str | None
    versions: list[str]  # every version a request may pin, the shadow's included
    unknown_categories: str  # "reject" or "accept" (settings)


class ModelServer:
    """Loaded models, routing, validation and batching for every front."""

    def __init__(
        self, settings: ServerSettings, models: dict[str, LoadedModel], metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics or Metrics()
        self.routers = {name: Router(served.variants, served.shadow) for name, served in settings.models.items()}
        self.shadows = {name: served.shadow for name, served in settings.models.items() if served.shadow}
        # One model thread per worker process: models run one at a time, off the event
        # loop, and each worker process is one core's worth of compute. Shadows have
        # their own thread and batchers, so live requests never queue behind them.
        threads = (settings.numeric_threads,)
        self._executor = ThreadPoolExecutor(1, "model", initializer=limit_numeric_threads, initargs=threads)
        self._shadow_executor = ThreadPoolExecutor(1, "shadow", initializer=limit_numeric_threads, initargs=threads)
        self._batchers = {tag: self._batcher(model, self._executor, live=True) for tag, model in models.items()}
        self._shadow_batchers = {
            tag: self._batcher(models[tag], self._shadow_executor, live=False) for tag in set(self.shadows.values())
        }
        self._pending_shadows: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: ServerSettings, metrics: Metrics | None = None) -> ModelServer:
        """Load every configured tag from the model store (MissingModel names the one absent)."""
        models = {tag: registry.load(tag) for tag in settings.tags()}
        return cls(settings, models, metrics)

    def model_names(self) -> list[str]:
        return list(self.routers)

    def describe(self, name: str) -> ServedModel:
        """The variants, shadow, versions and input schema of a served name (ModelNotFound)."""
        router = self.routers.get(name)
        if router is None:
            raise ModelNotFound(name)
        variants = [
            Variant(
                tag=v.tag,
                version=v.version,
                weight=v.weight,
                labels=self.models[v.tag].labels,
                metrics=self.models[v.tag].metadata.get("metrics", {}),
            )
            for v in self.settings.models[name].variants
        ]
        schema = self.models[router.tags[0]].schema
        policy = self.settings.models[name].unknown_categories
        return ServedModel(name, schema, variants, self.shadows.get(name), list(router.versions), policy)

    def resolve(self, name: str, version: str | None = None, key: str | None = None) -> Target:
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
        return Target(name, self.models[tag])

    async def predict_instances(self, target: Target, instances: Any) -> Prediction:
        """Predict JSON `instances` (records keyed by feature name, or rows in training order)."""
        policy = self.settings.models[target.name].unknown_categories
        try:
            matrix = target.model.schema.rows_to_matrix(instances, self.settings.max_rows_per_request, policy)
        except InvalidInput:
            self.reject(target)
            raise
        return await self._run(target, matrix, policy)

    async def predict_matrix(self, target: Target, matrix: np.ndarray) -> Prediction:
        """Predict an already numeric matrix (from a tensor), checked against the schema."""
        policy = self.settings.models[target.name].unknown_categories
        try:
            matrix = target.model.schema.check_matrix(matrix, self.settings.max_rows_per_request, policy)
        except InvalidInput:
            self.reject(target)
            raise
        return await self._run(target, matrix, policy)

    def reject(self, target: Target) -> None:
        """Count a request refused before it reached the model (its input was invalid)."""
        self.metrics.observe_request(target.name, target.model.tag, "invalid", None)

    async def drain_shadows(self) -> None:
        """Wait for the shadow comparisons still running (used at shutdown and in tests)."""
        if self._pending_shadows:
            await asyncio.gather(*self._pending_shadows, return_exceptions=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._shadow_executor.shutdown(wait=True)

    async def _run(self, target: Target, matrix: np.ndarray, unknown_categories: str) -> Prediction:
        name, model = target.name, target.model
        started = time.perf_counter()
        try:
            output = await self._batchers[model.tag].submit(matrix)
        except ModelCallFailed as exc:
            self.metrics.observe_request(name, model.tag, "error", None)
            raise PredictionFailed(str(exc)) from None
        self.metrics.observe_request(name, model.tag, "ok", time.perf_counter() - started)
        # Unknown categories reach the model only when the settings accept them; say which.
        warnings = model.schema.unknown_categories(matrix) if unknown_categories == ACCEPT else []
        prediction = Prediction(name, model, output, tuple(warnings))
        shadow = self.shadows.get(name)
        if shadow is not None and shadow != model.tag:
            self._start_shadow(name, model.tag, shadow, matrix, prediction)
        return prediction

    def _start_shadow(self, name: str, tag: str, shadow: str, matrix: np.ndarray, live: Prediction) -> None:
        if len(self._pending_shadows) >= MAX_PENDING_SHADOWS:
            self.metrics.observe_shadow(name, tag, shadow, "dropped")
            return
        task = asyncio.get_running_loop().create_task(self._compare(name, tag, shadow, matrix, live))
        self._pending_shadows.add(task)
        task.add_done_callback(self._pending_shadows.discard)

    async def _compare(self, name: str, tag: str, shadow: str, matrix: np.ndarray, live: Prediction) -> None:
        """Run the shadow on the caller's input once the caller has its answer; record agreement."""
        await asyncio.sleep(0)  # let the caller's response go out first
        try:
            output = await self._shadow_batchers[shadow].submit(matrix)
        except Exception:
            self.metrics.observe_shadow(name, tag, shadow, "error")
            return
        if live.model.schema.is_classifier:
            same = np.argmax(output, axis=1) == np.argmax(live.output, axis=1)
            for agrees in same.tolist():
                self.metrics.observe_shadow(name, tag, shadow, "agree" if agrees else "disagree")
        else:
            for difference in np.abs(output - live.output).tolist():
                self.metrics.observe_shadow(name, tag, shadow, "compared", difference)

    def _batcher(self, model: LoadedModel, executor: ThreadPoolExecutor, live: bool) -> Batcher:
        """A batcher for `model`; a live one also counts the classes it predicts, per batch."""
        classes = model.schema.classes if live and model.schema.is_classifier else None

        def observe(output: np.ndarray, requests: int) -> None:
            self.metrics.observe_batch(model.name, model.tag, int(output.shape[0]), requests)
            if classes is not None:
                counts = np.bincount(np.argmax(output, axis=1), minlength=len(classes))
                self.metrics.observe_classes(
                    model.name, model.tag, {classes[i]: int(c) for i, c in enumerate(counts) if c}
                )

        wait = self.settings.max_batch_wait_ms / 1000
        return Batcher(model.infer, self.settings.max_batch_rows, executor, observe, max_wait=wait)


def limit_numeric_threads(threads: int) -> None:
    """Limit OpenMP and BLAS to `threads` threads in the calling thread.

    OpenMP's thread count is a per-thread setting, so this runs in each model thread:
    a limit set in the main thread does not reach them, and gradient boosting then
    spins one OpenMP thread per core in every worker, which starves them all
    (docs/performance.md).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
