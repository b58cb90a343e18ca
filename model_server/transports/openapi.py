"""The OpenAPI document of every HTTP route, built from the route tables and from what
is served: a route whose path names `{name}` is listed once per served model, with
request and answer schemas made from that model's training schema, so clients and
fuzzers see exactly the bodies the server accepts. Served at GET /v1/openapi.json.

The one thing a schema cannot say is that an OIP tensor's data holds rows x columns
values; the document describes the one-row tensor, and the server takes any number
of rows of that shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model_server.constants import MISSING_TEXT, OUTPUT_PREDICTION_ID, SERVER_VERSION
from model_server.core.server import ModelDescription, ModelServer, output_names
from model_server.models.schema import ACCEPT, InputSchema
from model_server.transports import datatypes
from model_server.transports.route_table import AnswerBody, RequestBody, Route, RouteTable

JSON = "application/json"
# An input tensor's parameters; binary_data_size belongs to Triton's binary form, never beside `data`.
TENSOR_PARAMETERS = {"type": "object", "properties": {"binary_data_size": False}}
# Binary outputs are asked for with true or false (oip_rest.py).
REQUEST_PARAMETERS = {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}}
OUTPUT_PARAMETERS = {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}
ERROR_STATUSES = {
    "400": "Invalid input: the message and `detail[].loc` name the field and the rule.",
    "401": "API keys are on and the request has none or a wrong one.",
    "404": "No such route, model or version.",
    "405": "The path exists, but not for this method (see Allow).",
    "408": "The body or the headers came too slowly (body_timeout_s, body_idle_timeout_s, header_timeout_s).",
    "413": "Body larger than max_body_bytes.",
    "415": "Content-Type is not one the route reads, or Content-Encoding is not identity (bodies are read as sent).",
    "500": "The model failed, or a bug; the body carries the request id.",
    "503": "Models loading, or too many requests in flight (see Retry-After).",
}

# What BentoML's own routes answer with.
BENTOML_CONTENT = {
    "/": "text/html",
    "/metrics": "text/plain",
    "/livez": "text/plain",
    "/healthz": "text/plain",
    "/readyz": "text/plain",
}


@dataclass(frozen=True)
class RowLimits:
    """Rows one request may carry: any request, and one asking for explanations."""

    per_request: int
    explained: int


def build_openapi(server: ModelServer, routes: RouteTable) -> dict[str, Any]:
    """OpenAPI 3.1 for every listed route of `routes`, expanded per served model."""
    served = [server.describe(name) for name in server.model_names()]
    max_rows = RowLimits(server.settings.max_rows_per_request, server.settings.max_explained_rows)
    paths: dict[str, Any] = {}
    for route in routes:
        if not route.listed:
            continue
        for model in served if "{name}" in route.path else [None]:
            path = route.path if model is None else route.path.replace("{name}", model.name)
            paths.setdefault(path, {})[route.method.lower()] = _operation(route, model, served, max_rows)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tabular model server", "version": SERVER_VERSION},
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }


def error_responses() -> dict[str, Any]:
    """Every error status of ERROR_STATUSES with the one error body inline, valid in
    OpenAPI 3.0 as in 3.1: what BentoML's /docs.json declares for `POST /predict`
    (bentoml_hooks.py), so that document and the answers agree."""
    content = {JSON: {"schema": _ERROR}}
    return {status: {"description": text, "content": content} for status, text in ERROR_STATUSES.items()}


def _operation(
    route: Route, model: ModelDescription | None, served: list[ModelDescription], max_rows: RowLimits
) -> dict[str, Any]:
    summary = route.summary if model is None else f"{route.summary} ({model.name})"
    operation: dict[str, Any] = {"summary": summary, "responses": _responses(route, model, served)}
    if "{version}" in route.path and model is not None:
        operation["parameters"] = [
            {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "enum": model.versions}}
        ]
    if route.request_schema is not None:
        schema = _request(route.request_schema, model, served, max_rows)
        content = {media: {"schema": schema} for media in route.body if media != "application/octet-stream"}
        operation["requestBody"] = {"required": True, "content": content}
    return operation


def _responses(route: Route, model: ModelDescription | None, served: list[ModelDescription]) -> dict[str, Any]:
    if route.handler is None:
        media = BENTOML_CONTENT.get(route.path, JSON)
        ok = {"description": "Answered by BentoML.", "content": {media: {"schema": {}}}}
    else:
        schema = _answer(route.response_schema, model, served)
        content = {JSON: {"schema": schema}}
        if route.response_schema is AnswerBody.INFER:
            content["application/octet-stream"] = {"schema": {}}  # Triton's binary extension
        ok = {"description": "OK", "content": content}
    ref = {"content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {"200": ok, **{status: {"description": text, **ref} for status, text in ERROR_STATUSES.items()}}


def _request(
    kind: RequestBody, model: ModelDescription | None, served: list[ModelDescription], max_rows: RowLimits
) -> Any:
    if kind is RequestBody.BENTOML_PREDICT:
        return {"oneOf": [_predict_request(m, max_rows, pinned=False, named=True) for m in served]}
    assert model is not None, kind  # every other request body belongs to a route of one model
    return REQUESTS[kind](model, max_rows)


def _answer(kind: AnswerBody | None, model: ModelDescription | None, served: list[ModelDescription]) -> dict[str, Any]:
    if kind is None:
        return {"type": "object"}
    return ANSWERS[kind](model, served)


def _infer_request_of(model: ModelDescription, max_rows: RowLimits) -> dict[str, Any]:
    return _infer_columns_request(model) if model.schema.has_categorical else _infer_request(model.schema)


def _object(*required: str) -> dict[str, Any]:
    """An object with these members (their own schemas are in docs/api.md)."""
    return {"type": "object", "required": list(required), "properties": {key: {} for key in required}}


def _one_prediction(model: ModelDescription | None, served: list[ModelDescription]) -> dict[str, Any]:
    assert model is not None
    return _prediction(model)


# One builder per request and answer body a route may declare (tests/test_openapi.py
# checks that every member of RequestBody and AnswerBody has one).
REQUESTS: dict[RequestBody, Callable[[ModelDescription, RowLimits], dict[str, Any]]] = {
    RequestBody.PREDICT: lambda model, max_rows: _predict_request(model, max_rows, pinned=False),
    RequestBody.PINNED_PREDICT: lambda model, max_rows: _predict_request(model, max_rows, pinned=True),
    RequestBody.INFER: _infer_request_of,
    RequestBody.FEEDBACK: lambda model, max_rows: _feedback_request(model, max_rows),
}
ANSWERS: dict[AnswerBody, Callable[[ModelDescription | None, list[ModelDescription]], dict[str, Any]]] = {
    AnswerBody.PREDICTION: _one_prediction,
    AnswerBody.ANY_PREDICTION: lambda _, served: (
        {"oneOf": [_prediction(m) for m in served]} if served else {"type": "object"}
    ),
    AnswerBody.MODEL_LIST: lambda _, served: {
        "type": "object",
        "required": ["models"],
        "properties": {"models": {"type": "array", "items": _object("name", "task", "variants", "shadow")}},
    },
    AnswerBody.MODEL_DESCRIPTION: lambda *_: _object("name", "task", "variants", "shadow", "schema"),
    AnswerBody.DRIFT: lambda *_: _object("model", "routing_revision", "thresholds", "epsilon", "tags"),
    AnswerBody.OIP_SERVER: lambda *_: _object("name", "version", "extensions"),
    AnswerBody.OIP_MODEL: lambda *_: _object("name", "versions", "platform", "inputs", "outputs"),
    AnswerBody.INFER: lambda *_: _object("model_name", "model_version", "outputs"),
    AnswerBody.FEEDBACK: lambda *_: _object("model", "results", "counts"),
    AnswerBody.OUTCOMES: lambda *_: _object("model", "routing_revision", "window", "level", "tags"),
}


def _feedback_request(model: ModelDescription, max_rows: RowLimits) -> dict[str, Any]:
    """Items are judged one by one (each gets its own result), so the document constrains
    the list, not its items: a malformed item is answered as such, never refused whole."""
    truth = f"one of {', '.join(model.schema.classes)}" if model.schema.is_classifier else "a finite number"
    item = {
        "description": f"{{'id': a prediction id the server answered, 'truth': {truth}}}; an item that is not "
        "is answered with status invalid_id or invalid_truth"
    }
    return {
        "type": "object",
        "required": ["feedback"],
        "additionalProperties": False,
        "properties": {"feedback": {"type": "array", "items": item, "minItems": 1, "maxItems": max_rows.per_request}},
    }


def _feature_value(schema: InputSchema, index: int, accept_unknown: bool = False) -> dict[str, Any]:
    feature = schema.features[index]
    if feature.is_categorical:
        if accept_unknown:
            return {"type": ["string", "null"]}
        # null or "" is a missing category (constants.MISSING_TEXT), for every tag.
        return {"enum": [*feature.categories, *([] if MISSING_TEXT in feature.categories else [MISSING_TEXT]), None]}
    bound = float(schema.bounds[index])
    return {"type": ["number", "null"], "minimum": -bound, "maximum": bound}


def _predict_request(model: ModelDescription, max_rows: RowLimits, pinned: bool, named: bool = False) -> dict[str, Any]:
    schema = model.schema
    accept = model.unknown_categories == ACCEPT
    record = {
        "type": "object",
        "properties": {f.name: _feature_value(schema, i, accept) for i, f in enumerate(schema.features)},
        "required": schema.names,
        "additionalProperties": False,
    }
    width = len(schema.features)
    row = {
        "type": "array",
        "prefixItems": [_feature_value(schema, i, accept) for i in range(width)],
        "items": False,
        "minItems": width,
        "maxItems": width,
    }
    rows = {"minItems": 1, "maxItems": max_rows.per_request}
    properties: dict[str, Any] = {
        "instances": {
            "description": "Records keyed by feature name, or rows in the order of `prefixItems` (the "
            "features of the name's first variant, for every tag of the name; not both); null is a missing value, "
            'and so is "" for a categorical feature.',
            "oneOf": [{"type": "array", "items": record, **rows}, {"type": "array", "items": row, **rows}],
        },
        "explain": {
            "type": ["boolean", "null"],
            "description": "Each feature's contribution to each prediction, and the base value "
            f"(docs/explanations.md); at most {max_rows.explained} rows.",
        },
    }
    required = ["instances"]
    if named:
        properties["model"] = {"enum": [model.name]}
        properties["key"] = {
            "type": ["string", "null"],
            "description": "The caller key that keeps a caller on one tag (the X-Request-Key header wins).",
        }
        required.insert(0, "model")
    if not pinned:  # on a pinned route the path names the version
        properties["version"] = {"enum": [*model.versions, None]}
    return {
        "type": "object",
        "required": required,
        "additionalProperties": False,
        "properties": properties,
        # An explained request carries fewer rows (max_explained_rows).
        "if": {"properties": {"explain": {"const": True}}, "required": ["explain"]},
        "then": {"properties": {"instances": {"maxItems": max_rows.explained}}},
    }


def _infer_columns_request(model: ModelDescription) -> dict[str, Any]:
    """One tensor per feature (a model with categorical features), one row each."""
    schema = model.schema
    accept = model.unknown_categories == ACCEPT
    tensors = []
    for i, feature in enumerate(schema.features):
        datatype = {"const": datatypes.BYTES} if feature.is_categorical else {"enum": list(datatypes.NUMERIC_NAMES)}
        tensors.append(
            {
                "type": "object",
                "required": ["name", "datatype", "shape", "data"],
                "properties": {
                    "name": {"const": feature.name},
                    "datatype": datatype,
                    "shape": {"type": "array", "items": {"const": 1}, "minItems": 1, "maxItems": 2},
                    "data": {
                        "type": "array",
                        "prefixItems": [_feature_value(schema, i, accept)],
                        "items": False,
                        "minItems": 1,
                    },
                    "parameters": TENSOR_PARAMETERS,
                },
                **({} if feature.is_categorical else {"allOf": _datatype_rules()}),
            }
        )
    width = len(tensors)
    request = _infer_request(schema)
    request["properties"]["inputs"] = {
        "type": "array",
        "prefixItems": tensors,
        "items": False,
        "minItems": width,
        "maxItems": width,
    }
    return request


def _datatype_rules() -> list[dict[str, Any]]:
    """What a numeric tensor's JSON data may hold under each datatype (datatypes.limits):
    whole numbers within an integer type's range, numbers within a smaller float's."""
    rules = []
    for datatype in datatypes.NUMERIC:
        fits = datatypes.limits(datatype)
        if fits is None:
            continue
        kind = "integer" if fits.whole else "number"
        value = {"type": [kind, "null"], "minimum": fits.lowest, "maximum": fits.highest}
        rules.append(
            {
                "if": {"properties": {"datatype": {"const": datatype.name}}, "required": ["datatype"]},
                "then": {"properties": {"data": {"items": value}}},
            }
        )
    return rules


def _infer_request(schema: InputSchema) -> dict[str, Any]:
    width = len(schema.features)
    tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"enum": list(datatypes.NUMERIC_NAMES)},
            "shape": {
                "type": "array",
                "prefixItems": [{"const": 1}, {"const": width}],
                "items": False,
                "minItems": 2,
            },
            "data": {
                "type": "array",
                "prefixItems": [_feature_value(schema, i) for i in range(width)],
                "items": False,
                "minItems": width,
                "maxItems": width,
            },
            "parameters": TENSOR_PARAMETERS,
        },
        "allOf": _datatype_rules(),
    }
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "items": tensor, "minItems": 1, "maxItems": 1},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"enum": [*output_names(schema), OUTPUT_PREDICTION_ID]},
                        "parameters": OUTPUT_PARAMETERS,
                    },
                },
            },
            "parameters": REQUEST_PARAMETERS,
        },
    }


def _prediction(model: ModelDescription) -> dict[str, Any]:
    common = {
        "model": {"const": model.name},
        "tag": {"type": "string"},
        "ids": {"type": "array", "items": {"type": "string"}, "description": "Each row's prediction id (feedback)."},
    }
    classes = list(model.schema.classes)
    if model.schema.is_classifier:
        return {
            "type": "object",
            "required": ["model", "tag", "predictions", "probabilities", "classes", "ids"],
            "properties": {
                **common,
                "predictions": {"type": "array", "items": {"enum": classes}},
                "probabilities": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                "classes": {"type": "array", "items": {"type": "string"}},
            },
        }
    return {
        "type": "object",
        "required": ["model", "tag", "predictions", "ids"],
        "properties": {**common, "predictions": {"type": "array", "items": {"type": "number"}}},
    }


# The one error body (errors.error_body), in terms OpenAPI 3.0 and 3.1 read alike.
_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string"},
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
        "request_id": {"type": "string"},  # on a 5xx: the id to quote in a report
    },
}
