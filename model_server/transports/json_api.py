"""The JSON prediction API: its /v1 routes, and the same API in BentoML's calling
convention at `POST /predict` (the `@bentoml.api` method `predict` of service.py).

Both read the raw body (strict JSON: duplicated keys and NaN are errors), go through
the same validation, A/B routing and batcher, and answer the same body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from model_server.constants import KEY_HEADER_BYTES
from model_server.core.server import InferenceCall, InferenceResult, ModelDescription, ModelServer
from model_server.errors import InvalidInput
from model_server.json_codec import decode_json, encode_json
from model_server.monitoring import drift_report, outcome_report
from model_server.monitoring.feedback import STATUSES
from model_server.transports.route_table import Answer, AnswerBody, Request, RequestBody, Route, RouteTable

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
    version: Annotated[str, Field(min_length=1)] | None = None  # "" is refused: leave it out
    explain: bool = False
    # The caller key that keeps a caller on one tag of an A/B split (the X-Request-Key header wins).
    key: str | None = None


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
    ids: list[str] | None = None  # each row's prediction id, which feedback names (docs/api.md)


def prediction_body(prediction: InferenceResult) -> dict[str, Any]:
    """The answer body of /v1 and /predict: the tag, predictions and, for classifiers,
    the probabilities of each class; each row's prediction id; warnings and the
    explanation when there are any."""
    schema = prediction.model.schema
    body: dict[str, Any] = {"model": prediction.name, "tag": prediction.tag}
    if schema.is_classifier:
        body["predictions"] = [schema.classes[i] for i in np.argmax(prediction.output, axis=1)]
        body["probabilities"] = prediction.output.tolist()
        body["classes"] = list(schema.classes)
    else:
        body["predictions"] = prediction.output.tolist()
    body["ids"] = list(prediction.ids)
    if prediction.warnings:
        body["warnings"] = list(prediction.warnings)
    if prediction.explanation is not None:
        body["explanation"] = prediction.explanation.body()
    return body


def describe_body(served: ModelDescription, full: bool = False) -> dict[str, Any]:
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
                    response_schema=AnswerBody.MODEL_LIST,
                ),
                Route(
                    "GET",
                    "/v1/models/{name}",
                    "Input schema, variants and metrics of a model.",
                    self.get_model,
                    response_schema=AnswerBody.MODEL_DESCRIPTION,
                ),
                Route(
                    "POST",
                    "/v1/models/{name}/predict",
                    "Predict with the tag the A/B split chooses.",
                    self.predict,
                    body=JSON_BODY,
                    request_schema=RequestBody.PREDICT,
                    response_schema=AnswerBody.PREDICTION,
                ),
                Route(
                    "POST",
                    "/v1/models/{name}/versions/{version}/predict",
                    "Predict with one version.",
                    self.predict,
                    body=JSON_BODY,
                    request_schema=RequestBody.PINNED_PREDICT,
                    response_schema=AnswerBody.PREDICTION,
                ),
                Route(
                    "GET",
                    "/v1/models/{name}/drift",
                    "Drift of live inputs and predictions against the training data, per tag (PSI).",
                    self.drift_report,
                    response_schema=AnswerBody.DRIFT,
                ),
                Route(
                    "GET",
                    "/v1/models/{name}/versions/{version}/drift",
                    "Drift of one version's live inputs and predictions against its training data (PSI).",
                    self.drift_report,
                    response_schema=AnswerBody.DRIFT,
                ),
                Route(
                    "POST",
                    "/v1/models/{name}/feedback",
                    "Outcomes of earlier predictions, by prediction id; a result per item.",
                    self.feedback,
                    body=JSON_BODY,
                    request_schema=RequestBody.FEEDBACK,
                    response_schema=AnswerBody.FEEDBACK,
                ),
                Route(
                    "GET",
                    "/v1/models/{name}/outcomes",
                    "Live quality per tag with 95 % intervals, beside held-out metrics, and A/B verdicts.",
                    self.outcomes,
                    response_schema=AnswerBody.OUTCOMES,
                ),
                Route(
                    "GET",
                    "/v1/models/{name}/versions/{version}/outcomes",
                    "Live quality of one version with 95 % intervals, beside its held-out metrics.",
                    self.outcomes,
                    response_schema=AnswerBody.OUTCOMES,
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
                    request_schema=RequestBody.BENTOML_PREDICT,
                    response_schema=AnswerBody.ANY_PREDICTION,
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
        """Every tag of the name (or the version in the path): window, counts, PSI (drift_report.py)."""
        name = request.params["name"]
        view = self._get_server().drift_view(name, request.params.get("version"))
        return Answer(encode_json(drift_report.report(name, view)))

    async def feedback(self, request: Request) -> Answer:
        """POST {"feedback": [{"id": ..., "truth": ...}, ...]}: each item accepted or refused on its own."""
        server = self._get_server()
        fields = _fields(decode_json(request.body), required=("feedback",), optional=())
        items = fields["feedback"]
        limit = server.settings.max_rows_per_request
        if not isinstance(items, list) or not items:
            raise InvalidInput.at(["feedback"], "must be a non-empty list of {'id': ..., 'truth': ...}", "type")
        if len(items) > limit:
            raise InvalidInput.at(
                ["feedback"], f"holds {len(items)} items; at most {limit} (max_rows_per_request)", "too_long"
            )
        judged = server.feedback(request.params["name"], items)
        counts = dict.fromkeys(STATUSES, 0)
        for result in judged:
            counts[result.status] += 1
        body = {"model": request.params["name"], "results": [r.body(i) for i, r in enumerate(judged)], "counts": counts}
        return Answer(encode_json(body))

    async def outcomes(self, request: Request) -> Answer:
        """Each tag's live quality (or the version's in the path) and the variants' verdicts."""
        name, version = request.params["name"], request.params.get("version")
        view = self._get_server().outcome_view(name, version)
        return Answer(encode_json(outcome_report.report(name, view, verdicts=version is None)))

    async def openapi_document(self, request: Request) -> Answer:
        self._get_server()  # the document names the served models: 503 while they load
        return Answer(encode_json(self._openapi()))

    async def predict(self, request: Request) -> Answer:
        """POST {"instances": [...], "version"?: ...}; on a pinned route the path names the version."""
        pinned = request.params.get("version")
        optional = ("explain",) if pinned else ("version", "explain")
        fields = _fields(decode_json(request.body), required=("instances",), optional=optional)
        call = InferenceCall(
            request.params["name"],
            instances=fields["instances"],
            version=pinned or fields.get("version"),
            key=request.header(KEY_HEADER_BYTES),
            explain=bool(fields.get("explain")),
            request_id=request.request_id,
        )
        return await self._answer(call)

    async def predict_named(self, request: Request) -> Answer:
        """POST {"model": ..., "instances": [...], "version"?: ...}: BentoML's form of the same call."""
        optional = ("version", "explain", "key")
        fields = _fields(decode_json(request.body), required=("model", "instances"), optional=optional)
        return await self._answer(named_call(fields, request.header(KEY_HEADER_BYTES), request.request_id))

    async def _answer(self, call: InferenceCall) -> Answer:
        result = await self._get_server().infer(call)
        return Answer(encode_json(prediction_body(result)), result.tag, revision=result.revision)


def checked_version(version: Any) -> str | None:
    """A body's `version`: absent (None), or a version's name."""
    if version is not None and not isinstance(version, str):
        raise InvalidInput.at(["version"], "must be a string", "type")
    if version == "":  # not "no version": a client that meant none leaves the field out
        raise InvalidInput.at(["version"], "must name a version (leave it out to let the routing choose)", "empty")
    return version


def named_call(fields: dict[str, Any], header_key: str | None = None, request_id: str | None = None) -> InferenceCall:
    """The core's call for BentoML's form of the API (`predict`, over HTTP or in process);
    the caller key comes from the X-Request-Key header, else the body's `key`."""
    model, key = fields["model"], fields.get("key")
    if not isinstance(model, str):
        raise InvalidInput.at(["model"], "must be a string naming a served model", "type")
    if key is not None and not isinstance(key, str):
        raise InvalidInput.at(["key"], "must be a string (the caller key)", "type")
    return InferenceCall(
        model,
        instances=fields["instances"],
        version=checked_version(fields.get("version")),
        key=header_key or key,
        explain=bool(fields.get("explain")),
        request_id=request_id,
    )


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
    checked_version(body.get("version"))
    explain = body.get("explain")
    if explain is not None and not isinstance(explain, bool):
        raise InvalidInput.at(["explain"], "must be true or false", "type")
    return body
