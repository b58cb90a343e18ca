"""The transport-agnostic core on small fitted models: routing, errors, shadows, metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression

from model_server.config.settings import ServerSettings
from model_server.core import server as core
from model_server.core.server import InferenceCall, InferenceResult, ModelServer
from model_server.errors import InvalidInput, ModelNotFound, PredictionFailed
from model_server.models.registry import LoadedModel
from model_server.models.schema import CLASSIFICATION, REGRESSION, Feature, InputSchema
from model_server.monitoring.metrics import Metrics
from model_server.transports.json_api import named_call, prediction_body

X = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
FEATURES = (Feature("a", "float64", 0, 3), Feature("b", "float64", 0, 3))
CLASSES = InputSchema(task=CLASSIFICATION, features=FEATURES, classes=("no", "yes"))
VALUES = InputSchema(task=REGRESSION, features=FEATURES)


class Broken:
    classes_ = np.array([0, 1])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise RuntimeError("broken on purpose")


async def predict(server: ModelServer, name: str, instances: Any, version: str | None = None) -> InferenceResult:
    """What every API does: one call into the core."""
    return await server.infer(InferenceCall(name, instances=instances, version=version))


def build(models: dict[str, tuple[object, InputSchema]], config: dict) -> tuple[ModelServer, CollectorRegistry]:
    registry = CollectorRegistry()
    loaded = {tag: LoadedModel(tag=tag, pipeline=m, schema=s) for tag, (m, s) in models.items()}
    return ModelServer(ServerSettings.model_validate(config), loaded, Metrics(registry)), registry


def classifiers() -> dict[str, tuple[object, InputSchema]]:
    y = np.array([0, 0, 1, 1])
    return {
        "c:v1": (LogisticRegression().fit(X, y), CLASSES),
        "c:v2": (DummyClassifier(strategy="constant", constant=0).fit(X, y), CLASSES),
        "c:bad": (Broken(), CLASSES),
    }


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_predicts_records_and_counts_classes() -> None:
    server, registry = build(classifiers(), {"models": {"c": {"variants": [{"tag": "c:v1"}]}}})
    prediction = asyncio.run(predict(server, "c", [{"a": 3, "b": 3}]))
    assert prediction_body(prediction)["predictions"] == ["yes"]
    assert sample(registry, "model_server_predicted_classes_total", model="c", tag="c:v1", **{"class": "yes"}) == 1
    assert sample(registry, "model_server_requests_total", model="c", tag="c:v1", outcome="ok") == 1


def test_unknown_model_version_and_invalid_input() -> None:
    server, registry = build(classifiers(), {"models": {"c": {"variants": [{"tag": "c:v1"}]}}})
    with pytest.raises(ModelNotFound, match="model 'x' is not served here"):
        asyncio.run(predict(server, "x", [[1, 2]]))
    with pytest.raises(ModelNotFound, match="no served version 'v7'"):
        asyncio.run(predict(server, "c", [[1, 2]], version="v7"))
    with pytest.raises(InvalidInput):
        asyncio.run(predict(server, "c", [[1]]))
    assert sample(registry, "model_server_requests_total", model="c", tag="c:v1", outcome="invalid") == 1


def test_the_in_process_form_refuses_an_empty_version_as_http_does() -> None:
    """`predict(..., version="")` in process is BentoML's form of the call: the same refusal."""
    with pytest.raises(InvalidInput) as caught:
        named_call({"model": "iris", "instances": [[1.0, 2.0]], "version": ""})
    assert caught.value.detail == [
        {"loc": ["version"], "msg": "must name a version (leave it out to let the routing choose)", "type": "empty"}
    ]
    assert named_call({"model": "iris", "instances": [[1.0, 2.0]]}).version is None


def test_model_failure_is_a_500_and_the_next_request_succeeds() -> None:
    config = {"models": {"c": {"variants": [{"tag": "c:bad", "weight": 0}, {"tag": "c:v1"}]}}}
    server, registry = build(classifiers(), config)
    with pytest.raises(PredictionFailed) as caught:
        asyncio.run(predict(server, "c", [[1, 2]], version="bad"))
    assert caught.value.status == 500 and "see the server log" in caught.value.message
    assert asyncio.run(predict(server, "c", [[1, 2]])).model.tag == "c:v1"
    assert sample(registry, "model_server_requests_total", model="c", tag="c:bad", outcome="error") == 1


def test_classifier_shadow_records_agreement_after_the_answer() -> None:
    config = {"models": {"c": {"variants": [{"tag": "c:v1"}], "shadow": "c:v2"}}}
    server, registry = build(classifiers(), config)

    async def scenario() -> None:
        live = await predict(server, "c", [[0, 0], [3, 3]])
        assert live.model.tag == "c:v1"
        labels = {"model": "c", "tag": "c:v1", "shadow_tag": "c:v2"}
        assert sample(registry, "model_server_shadow_comparisons_total", outcome="agree", **labels) == 0
        await server.drain_shadows()
        # v1 says no, yes; the constant v2 says no, no.
        assert sample(registry, "model_server_shadow_comparisons_total", outcome="agree", **labels) == 1
        assert sample(registry, "model_server_shadow_comparisons_total", outcome="disagree", **labels) == 1

    asyncio.run(scenario())


def test_failing_shadow_is_counted_not_raised() -> None:
    config = {"models": {"c": {"variants": [{"tag": "c:v1"}], "shadow": "c:bad"}}}
    server, registry = build(classifiers(), config)

    async def scenario() -> None:
        assert (await predict(server, "c", [[1, 1]])).model.tag == "c:v1"
        await server.drain_shadows()

    asyncio.run(scenario())
    labels = {"model": "c", "tag": "c:v1", "shadow_tag": "c:bad", "outcome": "error"}
    assert sample(registry, "model_server_shadow_comparisons_total", **labels) == 1


def test_regression_shadow_records_absolute_difference() -> None:
    y = np.array([0.0, 1.0, 2.0, 3.0])
    models = {
        "r:v1": (LinearRegression().fit(X, y), VALUES),
        "r:v2": (DummyRegressor(constant=10.0, strategy="constant").fit(X, y), VALUES),
    }
    server, registry = build(models, {"models": {"r": {"variants": [{"tag": "r:v1"}], "shadow": "r:v2"}}})

    async def scenario() -> None:
        await predict(server, "r", [[1, 1]])
        await server.drain_shadows()

    asyncio.run(scenario())
    labels = {"model": "r", "tag": "r:v1", "shadow_tag": "r:v2"}
    assert sample(registry, "model_server_shadow_abs_difference_sum", **labels) == pytest.approx(9.0)
    assert sample(registry, "model_server_shadow_comparisons_total", outcome="compared", **labels) == 1


def test_shadows_beyond_the_bound_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "MAX_PENDING_SHADOWS", 2)
    config = {"models": {"c": {"variants": [{"tag": "c:v1"}], "shadow": "c:v2"}}}
    server, registry = build(classifiers(), config)

    async def scenario() -> None:
        await asyncio.gather(*(predict(server, "c", [[1, 1]]) for _ in range(5)))
        await server.drain_shadows()

    asyncio.run(scenario())
    labels = {"model": "c", "tag": "c:v1", "shadow_tag": "c:v2"}
    dropped = sample(registry, "model_server_shadow_comparisons_total", outcome="dropped", **labels)
    compared = sample(registry, "model_server_shadow_comparisons_total", outcome="agree", **labels)
    assert dropped >= 1 and dropped + compared == 5


def test_model_threads_run_with_the_configured_numeric_threads() -> None:
    """The limit applies inside the model thread itself (OpenMP's setting is per thread)."""
    from threadpoolctl import threadpool_info

    server, _ = build(classifiers(), {"models": {"c": {"variants": [{"tag": "c:v1"}]}}, "numeric_threads": 1})
    infos = server._executor.submit(threadpool_info).result()
    openmp = [i for i in infos if i["user_api"] == "openmp"]
    assert openmp and all(i["num_threads"] == 1 for i in openmp)


class Decoded:
    """Tensors already decoded (in the name's published order), as a door hands them over."""

    def __init__(self, rows: list[list[float]]) -> None:
        self.rows = rows

    def to_matrix(self, schema: InputSchema) -> np.ndarray:
        return np.array(self.rows, dtype=np.float64)


def test_tags_with_the_same_features_in_another_order_answer_alike_under_one_name() -> None:
    """r:ab takes (a, b), r:ba the same features as (b, a): records map by name, rows and
    tensors follow the name's first variant (r:ab), and the shadow gets its own order."""
    from model_server.models.registry import check_schemas

    rows = np.array([[0.0, 1.0], [1.0, 5.0], [2.0, 2.0], [3.0, 7.0]])
    y = 2 * rows[:, 0] - rows[:, 1]
    swapped = InputSchema(task=REGRESSION, features=(FEATURES[1], FEATURES[0]))
    models = {
        "r:ab": (LinearRegression().fit(rows, y), VALUES),
        "r:ba": (LinearRegression().fit(rows[:, ::-1], y), swapped),
    }
    config = {"models": {"r": {"variants": [{"tag": "r:ab"}], "shadow": "r:ba"}}}  # r:ba pinned or as shadow
    server, registry = build(models, config)
    check_schemas(server.state.routing.models, {tag: m.schema for tag, m in server.models.items()})
    want = [2 * 3.0 - 1.0, 2 * 1.0 - 4.0]

    async def scenario() -> dict[str, list[list[float]]]:
        found: dict[str, list[list[float]]] = {}
        for version in ("ab", "ba"):
            target = server.resolve("r", version)
            assert target.published.names == ["a", "b"]
            records = await server.infer(InferenceCall("r", [{"b": 1, "a": 3}, {"a": 1, "b": 4}], version=version))
            positional = await server.infer(InferenceCall("r", [[3, 1], [1, 4]], version=version))
            tensor = await server.infer(InferenceCall("r", tensors=Decoded([[3.0, 1.0], [1.0, 4.0]]), version=version))
            explained = await server.infer(InferenceCall("r", [[3, 1], [1, 4]], version=version, explain=True))
            found[version] = [p.output.tolist() for p in (records, positional, tensor, explained)]
        await predict(server, "r", [[3, 1]], version="ab")  # the shadow r:ba compares it
        await server.drain_shadows()
        return found

    found = asyncio.run(scenario())
    for version in ("ab", "ba"):
        for output in found[version]:
            assert output == pytest.approx(want)
    labels = {"model": "r", "tag": "r:ab", "shadow_tag": "r:ba"}
    assert sample(registry, "model_server_shadow_abs_difference_sum", **labels) == pytest.approx(0.0, abs=1e-9)
    assert sample(registry, "model_server_shadow_comparisons_total", outcome="compared", **labels) >= 1
