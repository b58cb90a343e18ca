"""The JSON prediction API: its /v1 routes, and the same API in BentoML's calling
convention at `POST /predict` (the `@bentoml.api` method `predict` of service.py).

Both read the raw body (strict JSON: duplicated keys and NaN are errors), go through
the same validation, A/B routing and batcher, and answer the same body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from . import drift
from .constants import KEY_HEADER_BYTES
from .errors import InvalidInput
from .json_codec import decode_json, encode_json
from .routes import Answer, Request, Route, RouteTable
from .server import ModelServer, Prediction, ServedModel

JSON_BODY = ("application/json", "text/json")

# The value types of one instance, as BentoML's page and client show them: numbers for
# numeric features, strings for categorical ones, null for a missing value.
Record = dict[str, float | str | None]
Row = list[float | str | None]


class PredictRequest(BaseModel):
    """The body of `POST /predict`: the `@bentoml.api` method's parameters, nothing else
    (BentoML's document says so with `additionalProperties: false`, as the route refuses
    an unknown field)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    instances: list[Record | Row]
    version: str | None = None
    explain: bool = False


class PredictionAnswer(BaseModel):
    """The answer of /v1 and of `predict`: the tag that answered and its predictions."""

    model_config = ConfigDict(extra="forbid")

    model: str
    tag: str
    predictions: list[str] | list[float]
    probabilities: list[list[float]] | None = None
    classes: list[str] | None = None
    warnings: list[str] | None = None
    explanation: dict[str, Any] | None = None  # with `explain`: docs/explanations.md


async def predict(
    server: ModelServer,
    name: str,
    instances: Any,
    version: str | None = None,
    key: str | None = None,
    explain: bool = False,
) -> tuple[dict[str, Any], Prediction]:
    """The answer body for `instances` of model `name`, and the prediction (its tag and
    revision); with `explain`, each feature's contribution to each answer."""
    target = server.resolve(name, version, key)
    if explain:
        prediction = await server.explain_instances(target, instances)
    else:
        prediction = await server.predict_instances(target, instances)
    return prediction_body(prediction), prediction


def prediction_body(prediction: Prediction) -> dict[str, Any]:
    schema = prediction.model.schema
    body: dict[str, Any] = {"model": prediction.name, "tag": prediction.tag}
    if schema.is_classifier:
        body["predictions"] = [schema.classes[i] for i in np.argmax(prediction.output, axis=1)]
        body["probabilities"] = prediction.output.tolist()
        body["classes"] = list(schema.classes)
    else:
        body["predictions"] = prediction.output.tolist()
    if prediction.warnings:
        body["warnings"] = list(prediction.warnings)
    if prediction.explanation is not None:
        body["explanation"] = prediction.explanation.body()
    return body


def describe_body(served: ServedModel, full: bool = False) -> dict[str, Any]:
    variants = []
    for variant in served.variants:
        entry: dict[str, Any] = {
            "tag": variant.tag,
            "version": variant.version,
            "weight": variant.weight,
            "runtime": variant.runtime,
            "labels": variant.labels,
        }
        if full:
            entry["metrics"] = variant.metrics
        variants.append(entry)
    body: dict[str, Any] = {"name": served.name, "task": served.schema.task, "variants": variants}
    body["shadow"] = served.shadow
    if full:
        body["schema"] = served.schema.to_dict()
    return body


class JsonApi:
    """Handlers of the JSON API; `routes` (/v1) and `bentoml_routes` (/predict) serve them."""

    def __init__(self, get_server: Callable[[], ModelServer], openapi: Callable[[], dict[str, Any]]) -> None:
        self._get_server = get_server
        self._openapi = openapi
        self.routes = RouteTable(
            [
                Route(
                    "GET",
                    "/v1/models",
                    "Served models, their tags, weights and labels.",
                    self.list_models,
                    response_schema="model_list",
                ),
                Route(
                    "GET",
                    "/v1/models/{name}",
                    "Input schema, variants and metrics of a model.",
                    self.get_model,
                    response_schema="model_description",
                ),
                Route(
                    "POST",
                    "/v1/models/{name}/predict",
                    "Predict with the tag the A/B split chooses.",
                    self.predict,
                    body=JSON_BODY,
                    request_schema="predict_request",
                    response_schema="prediction",
                ),
                Route(
                    "POST",
                    "/v1/models/{name}/versions/{version}/predict",
                    "Predict with one version.",
                    self.predict,
                    body=JSON_BODY,
                    request_schema="pinned_predict_request",
                    response_schema="prediction",
                ),
                Route(
                    "GET",
                    "/v1/models/{name}/drift",
                    "Drift of live inputs and predictions against the training data, per tag (PSI).",
                    self.drift_report,
                    response_schema="drift",
                ),
                Route(
                    "GET",
                    "/v1/models/{name}/versions/{version}/drift",
                    "Drift of one version's live inputs and predictions against its training data (PSI).",
                    self.drift_report,
                    response_schema="drift",
                ),
                Route("GET", "/v1/openapi.json", "This document.", self.openapi_document),
            ]
        )
        self.bentoml_routes = RouteTable(
            [
                Route(
                    "POST",
                    "/predict",
                    "Predict with a served model (BentoML's API; the same answer as /v1).",
                    self.predict_named,
                    body=JSON_BODY,
                    request_schema="bentoml_predict_request",
                    response_schema="any_prediction",
                ),
            ]
        )

    async def list_models(self, request: Request) -> Answer:
        server = self._get_server()
        models = [describe_body(server.describe(name)) for name in server.model_names()]
        return Answer(encode_json({"models": models}))

    async def get_model(self, request: Request) -> Answer:
        served = self._get_server().describe(request.params["name"])
        return Answer(encode_json(describe_body(served, full=True)))

    async def drift_report(self, request: Request) -> Answer:
        """Every tag of the name (or the version in the path): window, counts, PSI (drift.py)."""
        server = self._get_server()
        return Answer(encode_json(drift.report(server, request.params["name"], request.params.get("version"))))

    async def openapi_document(self, request: Request) -> Answer:
        self._get_server()  # the document names the served models: 503 while they load
        return Answer(encode_json(self._openapi()))

    async def predict(self, request: Request) -> Answer:
        """POST {"instances": [...], "version"?: ...}; on a pinned route the path names the version."""
        server = self._get_server()
        pinned = request.params.get("version")
        optional = ("explain",) if pinned else ("version", "explain")
        fields = _fields(decode_json(request.body), required=("instances",), optional=optional)
        version = pinned or fields.get("version")
        name, instances, explain = request.params["name"], fields["instances"], bool(fields.get("explain"))
        body, prediction = await predict(server, name, instances, version, _key(request), explain)
        return Answer(encode_json(body), prediction.tag, revision=prediction.revision)

    async def predict_named(self, request: Request) -> Answer:
        """POST {"model": ..., "instances": [...], "version"?: ...}: BentoML's form of the same call."""
        server = self._get_server()
        fields = _fields(decode_json(request.body), required=("model", "instances"), optional=("version", "explain"))
        model = fields["model"]
        if not isinstance(model, str):
            raise InvalidInput.at(["model"], "must be a string naming a served model", "type")
        instances, version, explain = fields["instances"], fields.get("version"), bool(fields.get("explain"))
        body, prediction = await predict(server, model, instances, version, _key(request), explain)
        return Answer(encode_json(body), prediction.tag, revision=prediction.revision)


def _key(request: Request) -> str | None:
    return request.header(KEY_HEADER_BYTES)


def _fields(body: Any, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    """The body's fields, checked: an object with the required ones, nothing unknown."""
    allowed = (*required, *optional)
    if not isinstance(body, dict):
        raise InvalidInput.at(["body"], f"must be a JSON object with {' and '.join(map(repr, required))}", "type")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidInput.at(
            [unknown[0]], f"is not a field of this route (fields: {', '.join(sorted(allowed))})", "unknown"
        )
    for name in required:
        if name not in body:
            raise InvalidInput.at([name], "is required", "missing")
    version = body.get("version")
    if version is not None and not isinstance(version, str):
        raise InvalidInput.at(["version"], "must be a string", "type")
    explain = body.get("explain")
    if explain is not None and not isinstance(explain, bool):
        raise InvalidInput.at(["explain"], "must be true or false", "type")
    return body
