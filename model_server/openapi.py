"""The OpenAPI document of the HTTP fronts, built from what is actually served.

Each served model gets its own predict paths whose records name exactly its features
(from the training schema), so clients and fuzzers see the real request bodies, the
real answers and the error body. Served at GET /v1/openapi.json.
"""

from __future__ import annotations

from typing import Any

from .oip import SERVER_VERSION
from .server import ModelServer

JSON = "application/json"
NUMBER_OR_NULL = {"type": "number", "nullable": True}
ERROR_STATUSES = {
    "400": "Invalid input: the message and `detail[].loc` name the field and the rule.",
    "401": "API keys are on and the request has none or a wrong one.",
    "404": "Model or version not served.",
    "413": "Body larger than max_body_bytes.",
    "415": "Content-Type is not application/json.",
    "500": "The model failed; the body carries the request id.",
    "503": "Models loading, or too many requests in flight (see Retry-After).",
}


def build_openapi(server: ModelServer) -> dict[str, Any]:
    """OpenAPI 3.0 for /v1 (JSON API) and /v2 (Open Inference Protocol, REST)."""
    paths: dict[str, Any] = {
        "/v1/models": {"get": _get("List served models, tags, weights and labels.", "ModelList")},
        "/v1/openapi.json": {"get": _get("This document.", None)},
        "/v2": {"get": _get("OIP server metadata.", None)},
        "/v2/health/live": {"get": _get("OIP liveness.", None)},
        "/v2/health/ready": {"get": _get("OIP readiness.", None)},
    }
    schemas: dict[str, Any] = {
        "Error": _ERROR,
        "ModelList": {"type": "object", "required": ["models"]},
        "InferRequest": _INFER_REQUEST,
        "InferResponse": _INFER_RESPONSE,
    }
    for name in server.model_names():
        model = server.resolve(name)
        versions = list(server.routers[name].versions)
        record = {
            "type": "object",
            "properties": {f.name: NUMBER_OR_NULL for f in model.schema.features},
            "required": model.schema.names,
            "additionalProperties": False,
        }
        width = len(model.schema.features)
        row = {"type": "array", "items": NUMBER_OR_NULL, "minItems": width, "maxItems": width}
        request_name, answer_name = f"{name}_PredictRequest", f"{name}_Prediction"
        schemas[request_name] = {
            "type": "object",
            "required": ["instances"],
            "additionalProperties": False,
            "properties": {
                "instances": {
                    "description": "Records keyed by feature name, or rows in training order (not both); "
                    "null is a missing value.",
                    "oneOf": [
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": server.settings.max_rows_per_request,
                            "items": record,
                        },
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": server.settings.max_rows_per_request,
                            "items": row,
                        },
                    ],
                },
                "version": {"type": "string", "enum": [*versions, None], "nullable": True},
            },
        }
        schemas[answer_name] = _prediction(model.schema.is_classifier, list(model.schema.classes))
        version_param = {
            "name": "version",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": versions},
        }
        paths[f"/v1/models/{name}"] = {"get": _get(f"Input schema, variants and metrics of {name}.", None)}
        paths[f"/v1/models/{name}/predict"] = {"post": _post(f"Predict with {name}.", request_name, answer_name)}
        paths[f"/v1/models/{name}/versions/{{version}}/predict"] = {
            "post": {
                **_post(f"Predict with one version of {name}.", request_name, answer_name),
                "parameters": [version_param],
            }
        }
        paths[f"/v2/models/{name}"] = {"get": _get(f"OIP metadata of {name}.", None)}
        paths[f"/v2/models/{name}/ready"] = {"get": _get(f"OIP readiness of {name}.", None)}
        paths[f"/v2/models/{name}/infer"] = {
            "post": _post(f"OIP inference with {name}.", "InferRequest", "InferResponse")
        }
    return {
        "openapi": "3.0.3",
        "info": {"title": "Tabular model server", "version": SERVER_VERSION},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }


def _errors() -> dict[str, Any]:
    ref = {"content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {status: {"description": text, **ref} for status, text in ERROR_STATUSES.items()}


def _get(summary: str, schema: str | None) -> dict[str, Any]:
    body: dict[str, Any] = (
        {"schema": {"$ref": f"#/components/schemas/{schema}"}} if schema else {"schema": {"type": "object"}}
    )
    return {"summary": summary, "responses": {"200": {"description": "OK", "content": {JSON: body}}, **_errors()}}


def _post(summary: str, request: str, answer: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "requestBody": {"required": True, "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{request}"}}}},
        "responses": {
            "200": {
                "description": "The answer and the tag that produced it.",
                "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{answer}"}}},
            },
            **_errors(),
        },
    }


def _prediction(classifier: bool, classes: list[str]) -> dict[str, Any]:
    common = {"model": {"type": "string"}, "tag": {"type": "string"}}
    if classifier:
        return {
            "type": "object",
            "required": ["model", "tag", "predictions", "probabilities", "classes"],
            "properties": {
                **common,
                "predictions": {"type": "array", "items": {"type": "string", "enum": classes}},
                "probabilities": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                "classes": {"type": "array", "items": {"type": "string"}},
            },
        }
    return {
        "type": "object",
        "required": ["model", "tag", "predictions"],
        "properties": {**common, "predictions": {"type": "array", "items": {"type": "number"}}},
    }


_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"loc": {"type": "array"}, "msg": {"type": "string"}, "type": {"type": "string"}},
            },
        },
        "request_id": {"type": "string", "nullable": True},
    },
}

_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {
            "type": "string",
            "enum": ["FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8"],
        },
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
        "data": {"type": "array"},
        "parameters": {"type": "object"},
    },
}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1, "maxItems": 1},
        "outputs": {
            "type": "array",
            "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        },
        "parameters": {"type": "object"},
    },
}
_INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "model_version", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name", "datatype", "shape"]}},
    },
}
