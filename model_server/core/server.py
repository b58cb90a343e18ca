"""The transport-agnostic core: every front calls `ModelServer` and only converts.

The objects made for every request (`Target`, `InferenceCall`, `InferenceResult`) are
plain slotted dataclasses, never changed after they are made: a frozen dataclass costs
about four times as much to make (each field set through object.__setattr__).

It holds the loaded models, picks the tag for each request (router), validates input
against the tag's training schema, and runs the model through one batcher per tag.
What serves each name is one immutable `ServingState` built from a `Routing`; a change
(`apply`) loads the new tags off the request path, then swaps the state in one
assignment. A request keeps the state it was resolved with until it is answered, so a
tag no longer served is unloaded once its in-flight requests are done.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model_server.config.auth import load_prediction_secrets
from model_server.config.routing import Routing
from model_server.config.settings import ServedModel as ServedSettings
from model_server.config.settings import ServerSettings
from model_server.constants import EXPLAIN_OUTPUT_NAMES, OUTPUT_PREDICT, OUTPUT_PREDICT_PROBA, OUTPUT_PREDICTION_ID
from model_server.core.ab_split import Router
from model_server.core.batching import Batcher, ModelCallFailed
from model_server.core.prediction_cache import CacheLimits, PredictionCache
from model_server.errors import ExplanationsBusy, InvalidInput, ModelNotFound, NotExplainable, PredictionFailed
from model_server.models import registry
from model_server.models.explain import Explanation, explainer_for
from model_server.models.onnx_runtime import SKLEARN
from model_server.models.registry import LoadedModel
from model_server.models.schema import ACCEPT, InputSchema
from model_server.monitoring import feedback as feedback_desk
from model_server.monitoring.drift_counts import DriftCounter
from model_server.monitoring.drift_report import DriftView, TagReference
from model_server.monitoring.inference_log import Answered, FedBack, InferenceLog
from model_server.monitoring.metrics import Metrics
from model_server.monitoring.outcome_report import OutcomeView, TagOutcomes
from model_server.monitoring.outcomes import OutcomeStore
from model_server.monitoring.prediction_ids import PredictionIds, window_digest
from model_server.monitoring.tracing import CURRENT, TRACING, RequestTrace

log = logging.getLogger(__name__)

# Shadow comparisons waiting at once, per worker; beyond this they are dropped (and
# counted), so a slow shadow model can never hold unbounded memory.
MAX_PENDING_SHADOWS = 1000


@dataclass(frozen=True)
class ServingState:
    """What serves each name at one routing revision: routers, models and their batchers."""

    routing: Routing
    routers: dict[str, Router]
    models: dict[str, LoadedModel]
    batchers: dict[str, Batcher]
    shadow_batchers: dict[str, Batcher]
    runtimes: dict[str, str]  # tag -> sklearn or onnx (model_server/models/onnx_runtime.py)
    # tag -> its prediction cache, when caching is on; a new state starts them empty.
    caches: dict[str, PredictionCache] = field(default_factory=dict)
    window: int = 0  # the routing window's digest, which prediction ids carry (prediction_ids.py)

    @property
    def revision(self) -> int:
        return self.routing.revision

    def served(self, name: str) -> ServedSettings:
        return self.routing.models[name]


@dataclass(slots=True)
class Target:
    """A served model name, the loaded tag chosen to answer, and the state it came from."""

    name: str
    model: LoadedModel
    state: ServingState

    @property
    def revision(self) -> int:
        return self.state.revision

    @property
    def published(self) -> InputSchema:
        """The name's schema, its first variant's: positional rows and tensors follow its
        order, whichever tag answers (the core reorders them into that tag's own)."""
        return self.state.models[self.state.routers[self.name].tags[0]].schema


class MatrixSource(Protocol):
    """Inputs that a door decodes into a matrix once the core knows the tag's schema
    (OIP tensors: one [rows, features] tensor, or one tensor per feature)."""

    def to_matrix(self, schema: InputSchema) -> np.ndarray: ...

    def located(self, error: InvalidInput, schema: InputSchema) -> InvalidInput:
        """`error`, found in the decoded matrix, named where the request holds each value."""
        ...


@dataclass(slots=True)
class InferenceCall:
    """One prediction request as every door hands it to the core (`ModelServer.infer`)."""

    name: str
    # JSON: records keyed by feature name, or rows in the order of the name's published schema.
    instances: Any = None
    tensors: MatrixSource | None = None  # OIP: decoded against the name's published schema
    version: str | None = None  # pins a version; else the A/B split chooses
    key: str | None = None  # the caller key that keeps a caller on one tag
    explain: bool = False  # each feature's contribution too (explain.py)
    outputs: tuple[str, ...] = ()  # named outputs (OIP); none means every output the model has
    request_id: str | None = None  # the edge's request id (the inference log records it)


@dataclass(slots=True)
class InferenceResult:
    """What the core answers: the tag that produced the output, at which routing revision,
    with the outputs to send (checked before the model ran)."""

    name: str
    model: LoadedModel
    output: np.ndarray
    revision: int
    warnings: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    explanation: Explanation | None = None  # asked for with `explain` (explain.py)
    ids: tuple[str, ...] = ()  # one signed prediction id per row (prediction_ids.py)

    @property
    def tag(self) -> str:
        return self.model.tag


@dataclass(frozen=True)
class VariantDescription:
    """One tag that serves a model name, as the APIs describe it (settings.Variant is what
    the configuration asks for)."""

    tag: str
    version: str
    weight: float
    labels: dict[str, str]
    metrics: dict[str, Any]
    runtime: str


@dataclass(frozen=True)
class ModelDescription:
    """What the APIs say about one served model name (settings.ServedModel is what the
    configuration asks for)."""

    name: str
    schema: InputSchema
    variants: list[VariantDescription]
    shadow: str | None
    versions: list[str]  # every version a request may pin, the shadow's included
    unknown_categories: str  # "reject" or "accept" (settings)
    revision: int  # the routing revision this description comes from


class ModelServer:
    """Loaded models, routing, validation and batching for every front."""

    def __init__(
        self,
        settings: ServerSettings,
        models: dict[str, LoadedModel],
        metrics: Metrics | None = None,
        routing: Routing | None = None,
        ids: PredictionIds | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        # Signs every answered row's id; a core built outside a server signs with a secret of its own.
        self.ids = ids or PredictionIds.ephemeral()
        # Outcomes fed back by id, per tag, over every worker (monitoring/outcomes.py).
        self.outcomes = OutcomeStore(
            Path(settings.outcomes_directory) if settings.outcomes_directory else None, settings.feedback_max_age_s
        )
        # Answered rows and feedback as Parquet files, when the settings turn it on (inference_log.py).
        self.inference_log: InferenceLog | None = None
        if settings.inference_log.enabled:
            self.inference_log = InferenceLog(
                settings.inference_log, settings.inference_log_path(), self.metrics, self.ids
            )
        # Live inputs and predictions counted per tag against the training data (monitoring/drift_counts.py).
        self.drift = DriftCounter(settings.drift_counting)
        # One model thread per worker process: models run one at a time, off the event
        # loop, and each worker process is one core's worth of compute. Shadows have
        # their own thread and batchers, so live requests never queue behind them.
        threads = (settings.numeric_threads,)
        # A short model call may run inline, on this (the event loop's) thread: the same limit.
        limit_numeric_threads(settings.numeric_threads)
        self._executor = ThreadPoolExecutor(1, "model", initializer=limit_numeric_threads, initargs=threads)
        self._shadow_executor = ThreadPoolExecutor(1, "shadow", initializer=limit_numeric_threads, initargs=threads)
        # Explanations cost far more than a prediction: their own thread, never the batcher.
        self._explain_executor = ThreadPoolExecutor(1, "explain", initializer=limit_numeric_threads, initargs=threads)
        self._explaining = 0  # explained requests running or queued in this worker
        self._in_flight = 0  # predictions between validation and their answer, in this worker
        self._pending_shadows: set[asyncio.Task[None]] = set()
        self._shadow_requests = 0  # requests whose shadow comparison is queued or running
        # Shadow work of this turn of the event loop, by (name, live tag, shadow, batcher):
        # each request's input and live output, started together at the turn's end.
        self._shadow_turn: dict[tuple[str, str, str, Batcher], list[tuple[np.ndarray, np.ndarray]]] = {}
        self._apply_lock: asyncio.Lock | None = None
        self._prepared: dict[str, LoadedModel] = {}  # loaded for a change not yet applied
        self._release_task: asyncio.Task[None] | None = None
        self.state = self._build_state(routing or Routing.initial(settings), models, None)

    @classmethod
    def from_settings(
        cls, settings: ServerSettings, metrics: Metrics | None = None, routing: Routing | None = None
    ) -> ModelServer:
        """Load every tag of the routing (configuration.yaml's when none is given) from the
        model store (MissingModel names the one absent)."""
        routing = routing or Routing.initial(settings)
        models = {tag: registry.load(tag, settings.numeric_threads) for tag in routing.tags()}
        return cls(settings, models, metrics, routing, PredictionIds(load_prediction_secrets(settings)))

    @property
    def models(self) -> dict[str, LoadedModel]:
        return self.state.models

    @property
    def routing(self) -> Routing:
        """The routing this worker serves now."""
        return self.state.routing

    def schema_of(self, tag: str) -> InputSchema:
        """The input schema of a tag this worker has loaded (KeyError otherwise)."""
        return self.state.models[tag].schema

    @property
    def revision(self) -> int:
        return self.state.revision

    def model_names(self) -> list[str]:
        return list(self.state.routers)

    def describe(self, name: str) -> ModelDescription:
        """The variants, shadow, versions and input schema of a served name (ModelNotFound)."""
        state = self.state
        router = state.routers.get(name)
        if router is None:
            raise ModelNotFound(name)
        served = state.served(name)
        variants = [
            VariantDescription(
                tag=v.tag,
                version=v.version,
                weight=v.weight,
                labels=state.models[v.tag].labels,
                metrics=state.models[v.tag].metrics,
                runtime=state.runtimes[v.tag],
            )
            for v in served.variants
        ]
        schema = state.models[router.tags[0]].schema
        return ModelDescription(
            name, schema, variants, served.shadow, list(router.versions), served.unknown_categories, state.revision
        )

    def drift_view(self, name: str | None = None, version: str | None = None) -> DriftView:
        """The tags a drift answer covers, with their references: every tag that serves
        `name` (the shadow included), or its pinned `version`; every served tag without a
        name. ModelNotFound for a name or version not served."""
        state = self.state
        if name is None:
            tags = [(model.name, tag) for tag, model in state.models.items()]
        else:
            router = state.routers.get(name)
            if router is None:
                raise ModelNotFound(name)
            versions = [version] if version is not None else list(router.versions)
            tags = [(name, self.resolve(name, v).model.tag) for v in versions]
        return DriftView([TagReference(n, tag, state.models[tag].drift) for n, tag in tags], self.drift)

    def resolve(self, name: str, version: str | None = None, key: str | None = None) -> Target:
        """The loaded model that answers: the explicit version, else the router's choice."""
        state = self.state
        router = state.routers.get(name)
        if router is None:
            raise ModelNotFound(name)
        if version:
            tag = router.tag_for_version(version)
            if tag is None:
                raise ModelNotFound(name, version)
        else:
            tag = router.choose(key)
        return Target(name, state.models[tag], state)

    async def apply(self, routing: Routing, forward_only: bool = False) -> bool:
        """Serve `routing`: load the tags it adds (off the event loop, each warmed up with a
        sample row), swap the state in one step, and drop the tags it no longer names.
        Whether anything changed. With `forward_only`, a routing older than the one served
        is ignored (the admin call's own change, when this worker already follows a newer
        one). Raises (and changes nothing) when a tag cannot be loaded or the tags of one
        name disagree on their input schema."""
        if self._apply_lock is None:
            self._apply_lock = asyncio.Lock()
        async with self._apply_lock:
            current = self.state
            if routing == current.routing or (forward_only and routing.revision < current.revision):
                return False
            models = dict(current.models)
            for tag in routing.tags():
                if tag not in models:
                    models[tag] = await self.prepare(tag)
            registry.check_schemas(routing.models, {tag: model.schema for tag, model in models.items()})
            # A tag that now serves with scikit-learn reads its pipeline off the event loop.
            for tag, runtime in runtimes_of(routing, models).items():
                if runtime == SKLEARN:
                    await asyncio.to_thread(models[tag].fitted)
            self.state = self._build_state(routing, models, current)
            for tag in self.state.models:
                self._prepared.pop(tag, None)
            dropped = sorted(set(current.models) - set(self.state.models))
            log.info(
                "routing revision %d serves %s%s",
                routing.revision,
                ", ".join(sorted(self.state.models)),
                f"; unloaded {', '.join(dropped)}" if dropped else "",
            )
        if dropped:
            self._release_task = asyncio.get_running_loop().create_task(self._release())
        return True

    async def _release(self) -> None:
        """Let the memory of dropped tags go. Models loaded at start-up sit in the garbage
        collector's permanent generation (gc.freeze, service.py); refreezing after a full
        collection frees any of them caught in a reference cycle. Done a second later, once
        the requests that hold the previous state are answered."""
        await asyncio.sleep(1)
        if gc.get_freeze_count():
            gc.unfreeze()
            gc.collect()
            gc.freeze()

    def discard_prepared(self, tags: list[str]) -> None:
        """Forget tags prepared for a change that was not made."""
        for tag in tags:
            self._prepared.pop(tag, None)

    async def prepare(self, tag: str) -> LoadedModel:
        """Load a tag from the store in a thread and warm it up with one sample row in the
        shadow thread, so that neither holds the event loop or the live model thread. The
        next `apply` that names the tag takes it from here instead of loading it again."""
        loaded = self.state.models.get(tag) or self._prepared.get(tag)
        if loaded is not None:
            return loaded
        model = await asyncio.to_thread(registry.load, tag, self.settings.numeric_threads)
        sample = model.schema.sample_matrix()
        for runner in [model.infer] + ([model.onnx.infer] if model.onnx else []):
            await asyncio.get_running_loop().run_in_executor(self._shadow_executor, runner, sample)
        self._prepared[tag] = model
        return model

    async def infer(self, call: InferenceCall) -> InferenceResult:
        """Answer one request: pick the tag, check the input against its training schema
        (and the outputs asked for), then predict, or predict and explain. Every door
        makes this one call and only converts around it; an invalid input is counted
        against the tag that would have answered, and costs no model call."""
        trace = CURRENT.get() if TRACING.on else None
        if trace is not None:
            trace.infer_started = time.perf_counter()
        target = self.resolve(call.name, call.version, call.key)
        schema = target.model.schema
        policy = target.state.served(target.name).unknown_categories
        limit = self.settings.max_rows_per_request
        try:
            outputs = check_outputs(schema, call.outputs, call.explain)
            if call.tensors is not None:
                # Tensors follow the name's published order; the tag may take another.
                matrix = call.tensors.to_matrix(target.published)
                try:
                    if call.explain:
                        self._check_explained_rows(["shape"], matrix.shape[0] if matrix.ndim else 0)
                    matrix, outside = schema.checked_matrix(reorder(matrix, target.published, schema), limit, policy)
                except InvalidInput as found:  # named where the request holds the value
                    raise call.tensors.located(found, target.published) from None
            else:
                if call.explain:
                    rows = len(call.instances) if isinstance(call.instances, list) else 0
                    self._check_explained_rows(["instances"], rows)
                matrix, outside = schema.checked_rows(call.instances, limit, policy, target.published.names)
        except InvalidInput:
            self.reject(target)
            raise
        if trace is not None:
            _traced(trace, target)
        if call.explain:
            result = await self._explain(target, matrix, policy, outputs, outside, call.key)
        else:
            result = await self._run(target, matrix, policy, outputs, outside, call.key)
        if self.inference_log is not None:
            runtime = target.state.runtimes[result.tag]
            answered = Answered(
                result.name,
                result.tag,
                runtime,
                schema,
                matrix,
                result.output,
                result.ids,
                call.key,
                call.request_id,
                time.time(),
            )
            self.inference_log.record(answered)
        return result

    def _check_explained_rows(self, where: list[Any], rows: int) -> None:
        limit = self.settings.max_explained_rows
        if rows > limit:
            message = f"holds {rows} rows; at most {limit} can be explained in one request (max_explained_rows)"
            raise InvalidInput.at(where, message, "too_long")

    async def _explain(
        self,
        target: Target,
        matrix: np.ndarray,
        unknown_categories: str,
        outputs: tuple[str, ...],
        outside: np.ndarray | None,
        key: str | None,
    ) -> InferenceResult:
        """The pipeline's prediction and its explanation, both in the explanation thread:
        off the batcher and the model thread, so plain predictions never wait for them."""
        name, model = target.name, target.model

        def run() -> tuple[np.ndarray, Explanation]:
            explainer = explainer_for(model)  # built on the tag's first explanation
            return model.infer(matrix), explainer.explain(matrix)

        if self._explaining >= self.settings.max_concurrent_explanations:
            self.metrics.observe_request(name, model.tag, "overloaded", None)
            raise ExplanationsBusy(self.settings.max_concurrent_explanations)
        self._explaining += 1
        started = time.perf_counter()
        try:
            output, explanation = await asyncio.get_running_loop().run_in_executor(self._explain_executor, run)
        except NotExplainable:
            self.reject(target)
            raise
        except Exception as exc:
            log.exception("explaining with %s failed", model.tag)
            self.metrics.observe_request(name, model.tag, "error", None)
            raise PredictionFailed(f"explaining with '{model.tag}' failed") from exc
        finally:
            self._explaining -= 1
        self.metrics.observe_request(name, model.tag, "ok", time.perf_counter() - started)
        warnings = answer_warnings(model.schema, matrix, unknown_categories, outside)
        ids = self._sign(target, output, key)
        return InferenceResult(name, model, output, target.state.revision, warnings, outputs, explanation, ids)

    def _sign(self, target: Target, output: np.ndarray, key: str | None) -> tuple[str, ...]:
        """The signed id of every answered row (prediction_ids.py)."""
        now_ms = int(time.time() * 1000)
        classifier = target.model.schema.is_classifier
        return self.ids.sign(target.name, target.model.tag, target.state.window, now_ms, output, classifier, key)

    def feedback(self, name: str, items: list[Any]) -> list[feedback_desk.Judged]:
        """Check each feedback item on its own and count the accepted ones into the current
        window (monitoring/feedback.py); ModelNotFound for a name not served."""
        state = self.state
        if name not in state.routers:
            raise ModelNotFound(name)
        judged = feedback_desk.judge(
            items, name, self.ids, self.outcomes, state.window, self._classes_of, self.settings.feedback_max_age_s
        )
        counts: dict[str, int] = {}
        for result in judged:
            counts[result.status] = counts.get(result.status, 0) + 1
        self.metrics.observe_feedback(name, counts)
        if self.inference_log is not None:
            logged = [
                (item["id"], result.prediction.tag, result.status, item.get("truth"))
                for item, result in zip(items, judged, strict=True)
                if result.prediction is not None
            ]
            self.inference_log.feedback(FedBack(name, logged, time.time()))
        return judged

    def _classes_of(self, tag: str) -> tuple[str, ...] | None:
        """A tag's classes (() for a regressor): the loaded tag's, else the stored one's; None when unknown."""
        model = self.state.models.get(tag)
        if model is not None:
            return model.schema.classes if model.schema.is_classifier else ()
        try:
            schema = registry.stored_schema(tag)
        except Exception:
            return None
        return schema.classes if schema.is_classifier else ()

    def outcome_view(self, name: str, version: str | None = None) -> OutcomeView:
        """The tags an outcomes answer covers: the name's variants (then its shadow), or
        its pinned `version`. ModelNotFound for a name or version not served."""
        state = self.state
        router = state.routers.get(name)
        if router is None:
            raise ModelNotFound(name)
        served = state.served(name)
        tags = [self.resolve(name, version).model.tag] if version is not None else served.tags()
        entries = []
        for tag in tags:
            model = state.models[tag]
            heldout = {k.removeprefix("holdout_"): v for k, v in model.metrics.items() if k.startswith("holdout_")}
            classes = model.schema.classes if model.schema.is_classifier else ()
            entries.append(TagOutcomes(name, tag, tuple(classes), heldout))
        variants = 1 if version is not None else len(served.variants)
        return OutcomeView(entries, self.outcomes, variants)

    def reject(self, target: Target) -> None:
        """Count a request refused before it reached the model (its input was invalid)."""
        self.metrics.observe_request(target.name, target.model.tag, "invalid", None)

    async def drain_shadows(self) -> None:
        """Wait for the shadow comparisons still running (used at shutdown and in tests)."""
        self._launch_shadows()
        if self._pending_shadows:
            await asyncio.gather(*self._pending_shadows, return_exceptions=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._shadow_executor.shutdown(wait=True)
        self._explain_executor.shutdown(wait=True)
        self.drift.close()
        self.outcomes.close()
        if self.inference_log is not None:
            self.inference_log.close()

    async def _run(
        self,
        target: Target,
        matrix: np.ndarray,
        unknown_categories: str,
        outputs: tuple[str, ...],
        outside: np.ndarray | None,
        key: str | None,
    ) -> InferenceResult:
        name, model, state = target.name, target.model, target.state
        started = time.perf_counter()
        self._in_flight += 1
        try:
            cache = state.caches.get(model.tag)
            submit = state.batchers[model.tag].submit
            if cache is not None:
                output = await cache.predict(matrix, submit)
            else:
                # The only prediction in flight: no other can join its model call.
                output = await submit(matrix, self._in_flight == 1)
        except ModelCallFailed as exc:
            self.metrics.observe_request(name, model.tag, "error", None)
            raise PredictionFailed(str(exc)) from None
        finally:
            self._in_flight -= 1
        if TRACING.on and (trace := CURRENT.get()) is not None:
            _traced_call(trace, state.batchers[model.tag].last_call)
        self.metrics.observe_request(name, model.tag, "ok", time.perf_counter() - started)
        warnings = answer_warnings(model.schema, matrix, unknown_categories, outside)
        ids = self._sign(target, output, key)
        prediction = InferenceResult(name, model, output, state.revision, warnings, outputs, None, ids)
        shadow = state.served(name).shadow
        if shadow is not None and shadow != model.tag:
            shadow_input = reorder(matrix, model.schema, state.models[shadow].schema)
            self._start_shadow(state.shadow_batchers[shadow], name, model.tag, shadow, shadow_input, prediction)
        return prediction

    def _start_shadow(
        self, batcher: Batcher, name: str, tag: str, shadow: str, matrix: np.ndarray, live: InferenceResult
    ) -> None:
        """Queue the shadow's comparison of this request; the requests of one turn of the
        event loop go to the shadow together, once their callers have their answers."""
        if self._shadow_requests >= MAX_PENDING_SHADOWS:
            self.metrics.observe_shadow(name, tag, shadow, "dropped")
            return
        self._shadow_requests += 1
        if not self._shadow_turn:
            asyncio.get_running_loop().call_soon(self._launch_shadows)
        self._shadow_turn.setdefault((name, tag, shadow, batcher), []).append((matrix, live.output))

    def _launch_shadows(self) -> None:
        turn, self._shadow_turn = self._shadow_turn, {}
        loop = asyncio.get_running_loop() if turn else None
        for (name, tag, shadow, batcher), requests in turn.items():
            assert loop is not None
            task = loop.create_task(self._compare(batcher, name, tag, shadow, requests))
            self._pending_shadows.add(task)
            task.add_done_callback(self._pending_shadows.discard)

    async def _compare(
        self, batcher: Batcher, name: str, tag: str, shadow: str, requests: list[tuple[np.ndarray, np.ndarray]]
    ) -> None:
        """Run the shadow on the callers' inputs; record its agreement with the live outputs, per row."""
        try:
            matrix = requests[0][0] if len(requests) == 1 else np.concatenate([m for m, _ in requests])
            live = requests[0][1] if len(requests) == 1 else np.concatenate([o for _, o in requests])
            try:
                output = await batcher.submit(matrix)
            except Exception:
                self.metrics.observe_shadow(name, tag, shadow, "error", len(requests))
                return
            if output.ndim == 2:  # class probabilities
                agree = int(np.count_nonzero(np.argmax(output, axis=1) == np.argmax(live, axis=1)))
                self.metrics.observe_shadow(name, tag, shadow, "agree", agree)
                self.metrics.observe_shadow(name, tag, shadow, "disagree", int(output.shape[0]) - agree)
            else:
                self.metrics.observe_shadow_differences(name, tag, shadow, np.abs(output - live).tolist())
        finally:
            self._shadow_requests -= len(requests)

    def _build_state(
        self, routing: Routing, loaded: dict[str, LoadedModel], previous: ServingState | None
    ) -> ServingState:
        """The state serving `routing`, keeping the batchers of tags it still serves with
        the same runtime. Raises ValueError when a tag is asked for with two runtimes, or
        for onnx without an export."""
        models = {tag: loaded[tag] for tag in routing.tags()}
        runtimes = runtimes_of(routing, models)
        shadows = {served.shadow for served in routing.models.values() if served.shadow}
        old_runtimes = previous.runtimes if previous else {}
        old_live = previous.batchers if previous else {}
        old_shadow = previous.shadow_batchers if previous else {}
        batchers = {
            tag: (old_live.get(tag) if old_runtimes.get(tag) == runtimes[tag] else None)
            or self._batcher(model, runtimes[tag], self._executor, live=True)
            for tag, model in models.items()
        }
        shadow_batchers = {
            tag: (old_shadow.get(tag) if old_runtimes.get(tag) == runtimes[tag] else None)
            or self._batcher(models[tag], runtimes[tag], self._shadow_executor, live=False)
            for tag in shadows
        }
        routers = {name: Router(served.variants, served.shadow) for name, served in routing.models.items()}
        self.metrics.set_routing_revision(routing.revision)
        self.metrics.set_runtimes({tag: (models[tag].name, runtime) for tag, runtime in runtimes.items()})
        references = {tag: model.drift for tag, model in models.items()}
        window = routing.window()
        self.drift.start_window(routing.revision, references, window)  # a new routing, a new drift window
        self.outcomes.start_window(routing.revision, window)  # and a new outcomes window
        caches, digest = self._caches(models), window_digest(window)
        return ServingState(routing, routers, models, batchers, shadow_batchers, runtimes, caches, digest)

    def _caches(self, models: dict[str, LoadedModel]) -> dict[str, PredictionCache]:
        """An empty prediction cache per served tag, when the settings turn caching on."""
        limits = CacheLimits(self.settings.prediction_cache.max_entries, self.settings.prediction_cache.max_bytes)
        if not limits.enabled:
            return {}

        def observer(model: LoadedModel) -> Callable[[int, int, int], None]:
            return lambda hits, misses, evicted: self.metrics.observe_cache(
                model.name, model.tag, hits, misses, evicted
            )

        return {tag: PredictionCache(limits, observer(model)) for tag, model in models.items()}

    def _batcher(self, model: LoadedModel, runtime: str, executor: ThreadPoolExecutor, live: bool) -> Batcher:
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
        count = None
        if live and self.drift.enabled and model.drift is not None:
            reference = model.drift

            def count(matrix: np.ndarray, output: np.ndarray) -> None:
                self.drift.add(model.tag, reference, matrix, output)

        inline = self.settings.inline_call_us / 1e6
        return Batcher(
            model.runner(runtime),
            self.settings.max_batch_rows,
            executor,
            observe,
            max_wait=wait,
            inline_below=inline,
            count=count,
        )


def answer_warnings(
    schema: InputSchema, matrix: np.ndarray, unknown_categories: str, outside: np.ndarray | None
) -> tuple[str, ...]:
    """What an answer warns of: values outside the training range (`outside`, from the
    schema's check; None when every value is inside it, the common case, at no cost), and
    categories training never saw, which reach the model only when the settings accept them."""
    warnings = schema.range_warnings(matrix, outside) if outside is not None else []
    if unknown_categories == ACCEPT:
        warnings += schema.unknown_categories(matrix)
    return tuple(warnings)


def output_names(schema: InputSchema) -> list[str]:
    """The outputs a model of this schema answers with (the explanation's aside)."""
    if schema.is_classifier:
        return [OUTPUT_PREDICT, OUTPUT_PREDICT_PROBA]
    return [OUTPUT_PREDICT]


def check_outputs(schema: InputSchema, requested: tuple[str, ...], explain: bool = False) -> tuple[str, ...]:
    """The outputs to answer with (all the model has when none are named; with `explain`,
    the explanation's too); checked before the model runs, so a bad name costs no model call."""
    if not requested and not explain:  # the common case, per request: nothing to check
        return CLASSIFIER_OUTPUTS if schema.is_classifier else REGRESSOR_OUTPUTS
    available = output_names(schema) + [OUTPUT_PREDICTION_ID] + (list(EXPLAIN_OUTPUT_NAMES) if explain else [])
    for name in requested:
        if name not in available:
            raise InvalidInput.at(
                ["outputs", name], f"is not an output of this model (outputs: {', '.join(available)})", "unknown"
            )
    # Each named output is answered once, however often it is named (a list that repeats
    # one must not multiply the answer).
    names = tuple(dict.fromkeys(requested)) or tuple(output_names(schema))
    names += tuple(n for n in EXPLAIN_OUTPUT_NAMES if explain and n not in names)
    # Every answered row carries its id, whatever outputs were named.
    return names if OUTPUT_PREDICTION_ID in names else (*names, OUTPUT_PREDICTION_ID)


CLASSIFIER_OUTPUTS = (OUTPUT_PREDICT, OUTPUT_PREDICT_PROBA, OUTPUT_PREDICTION_ID)
REGRESSOR_OUTPUTS = (OUTPUT_PREDICT, OUTPUT_PREDICTION_ID)


def reorder(matrix: np.ndarray, source: InputSchema, target: InputSchema) -> np.ndarray:
    """A matrix in `source`'s feature order as `target` takes it: the same features, in
    `target`'s order (tags of one name may list them in different orders). A matrix of
    another width is returned as it is, for the schema check to refuse."""
    if source is target:  # the common case: the tag is the name's first variant
        return matrix
    positions = target.positions(source.names)
    if positions is None or matrix.ndim != 2 or matrix.shape[1] != len(positions):
        return matrix
    return matrix[:, positions]


def limit_numeric_threads(threads: int) -> None:
    """Limit OpenMP and BLAS to `threads` threads in the calling thread.

    OpenMP's thread count is a per-thread setting, so this runs in each model thread:
    a limit set in the main thread does not reach them, and gradient boosting then
    spins one OpenMP thread per core in every worker, which starves them all
    (docs/performance.md).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


def runtimes_of(routing: Routing, models: dict[str, LoadedModel]) -> dict[str, str]:
    """Each tag's runtime: what its variants ask for, else its default (onnx where the tag
    has a checked export, else sklearn; registry.default_runtime); a shadow serves with its
    tag's runtime. ValueError when one tag is asked for with two runtimes, or for onnx
    without a checked export."""
    asked: dict[str, str] = {}
    for name, served in routing.models.items():
        for variant in served.variants:
            runtime = variant.runtime
            if runtime is None:
                continue
            if asked.setdefault(variant.tag, runtime) != runtime:
                raise ValueError(f"'{variant.tag}' is asked to serve with both {asked[variant.tag]} and {runtime}")
            if runtime not in models[variant.tag].runtimes:
                raise ValueError(f"'{name}': {registry.no_onnx_export(variant.tag)}")
    tags = {tag for served in routing.models.values() for tag in served.tags()}
    return {tag: asked.get(tag) or registry.default_runtime(models[tag].runtimes) for tag in sorted(tags)}


def _traced(trace: RequestTrace, target: Target) -> None:
    """A traced request's input is checked: when, and what answers it."""
    trace.validated = time.perf_counter()
    runtime = target.state.runtimes.get(target.model.tag, "")
    trace.attributes = {"model": target.name, "tag": target.model.tag, "runtime": runtime}


def _traced_call(trace: RequestTrace, call: tuple[float, float, int]) -> None:
    """A traced request is answered: the model call that answered it, unless it was
    answered without one (the prediction cache) and the last call is another's."""
    trace.infer_ended = time.perf_counter()
    if call[1] >= trace.validated:
        trace.call = call
