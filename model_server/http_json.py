"""The JSON prediction API, an ASGI app mounted inside the BentoML service at /v1.

Routes (relative to the mount):
  GET  /openapi.json                            OpenAPI document of /v1 and /v2, from what is served
  GET  /models                                  served models and their tags
  GET  /models/{name}                           input schema, variants, metrics of each tag
  POST /models/{name}/predict                   {"instances": [...]} -> predictions
  POST /models/{name}/versions/{version}/predict   the same, pinned to one version

It reads the raw body itself (strict JSON: duplicated keys and NaN are errors) and
answers errors as {"error": ..., "detail": [...]} with the status the core chose.
The two predict routes are direct routes of the front door (fast_path.py); the rest
is a small Starlette app.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .constants import KEY_HEADER_BYTES
from .errors import InvalidInput, ModelNotFound, ModelServerError, UnsupportedMediaType
from .fast_path import DirectAnswer, DirectRequest, DirectRoutes, Front
from .openapi import build_openapi
from .payloads import decode_json, encode_json
from .server import ModelServer

log = logging.getLogger(__name__)

PREDICT_FIELDS = {"instances", "version"}

JSON_TYPES = {"application/json", "text/json"}


class JsonApi(Front):
    """The /v1 front: an ASGI app whose predict routes are also direct routes."""

    def __init__(self, get_server: Callable[[], ModelServer]) -> None:
        self._get_server = get_server
        routes = DirectRoutes(
            [
                ("POST", "/models/{name}/predict", self.predict),
                ("POST", "/models/{name}/versions/{version}/predict", self.predict),
            ]
        )
        super().__init__(_starlette_routes(get_server), routes)

    async def predict(self, request: DirectRequest) -> DirectAnswer:
        """POST {"instances": [...], "version"?: ...} -> predictions of the chosen tag."""
        name = request.params["name"]
        version = request.params.get("version")
        server = self._get_server()
        _require_json(request.header(b"content-type"))
        instances, body_version = _predict_fields(decode_json(request.body))
        if version and body_version and body_version != version:
            raise InvalidInput.at(
                ["version"], f"is '{body_version}' but the path names version '{version}'", "conflict"
            )
        prediction = await server.predict_instances(
            name, instances, version or body_version, request.header(KEY_HEADER_BYTES)
        )
        return DirectAnswer(encode_json(prediction.to_json()), prediction.model.tag)


def build_app(get_server: Callable[[], ModelServer]) -> JsonApi:
    """The JSON API; `get_server` returns the worker's ModelServer once the service started."""
    return JsonApi(get_server)


def _starlette_routes(get_server: Callable[[], ModelServer]) -> Starlette:
    """The read-only routes, which are not on the hot path."""

    async def list_models(request: Request) -> JSONResponse:
        try:
            server = get_server()
        except ModelServerError as exc:
            return error_response(exc, request)
        return JSONResponse({"models": [_describe(server, name) for name in server.model_names()]})

    async def get_model(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        try:
            server = get_server()
            if name not in server.routers:
                raise ModelNotFound(name)
        except ModelServerError as exc:
            return error_response(exc, request)
        return JSONResponse(_describe(server, name, full=True))

    async def openapi_document(request: Request) -> JSONResponse:
        try:
            server = get_server()
        except ModelServerError as exc:
            return error_response(exc, request)
        return JSONResponse(build_openapi(server))

    return Starlette(
        exception_handlers={Exception: internal_error},
        routes=[
            Route("/openapi.json", openapi_document, methods=["GET"]),
            Route("/models", list_models, methods=["GET"]),
            Route("/models/{name}", get_model, methods=["GET"]),
        ],
    )


def _require_json(declared: str | None) -> None:
    """A body declared as anything but JSON is refused; no Content-Type is read as JSON."""
    if declared and declared.split(";")[0].strip().lower() not in JSON_TYPES:
        raise UnsupportedMediaType(f"Content-Type '{declared}' is not supported; send application/json")


def _predict_fields(body: Any) -> tuple[Any, str | None]:
    if not isinstance(body, dict):
        raise InvalidInput.at(["body"], "must be a JSON object with an 'instances' field", "type")
    unknown = sorted(set(body) - PREDICT_FIELDS)
    if unknown:
        raise InvalidInput.at(
            [unknown[0]], f"is not a field of this API (fields: {', '.join(sorted(PREDICT_FIELDS))})", "unknown"
        )
    if "instances" not in body:
        raise InvalidInput.at(["instances"], "is required", "missing")
    version = body.get("version")
    if version is not None and not isinstance(version, str):
        raise InvalidInput.at(["version"], "must be a string", "type")
    return body["instances"], version


def _describe(server: ModelServer, name: str, full: bool = False) -> dict[str, Any]:
    router = server.routers[name]
    variants = []
    for variant in server.settings.models[name].variants:
        model = server.models[variant.tag]
        entry: dict[str, Any] = {
            "tag": variant.tag,
            "version": variant.version,
            "weight": variant.weight,
            "labels": model.labels,
        }
        if full:
            entry["metrics"] = model.metadata.get("metrics", {})
        variants.append(entry)
    schema = server.models[router.tags[0]].schema
    shadow = server.shadows.get(name)
    described: dict[str, Any] = {"name": name, "task": schema.task, "variants": variants, "shadow": shadow}
    if full:
        described["schema"] = schema.to_dict()
    return described


def error_response(exc: ModelServerError, request: Request) -> JSONResponse:
    """The error body; a 5xx is logged and carries the request id to quote in a report."""
    body = exc.body()
    if exc.status >= 500:
        rid = getattr(request.state, "request_id", None)
        log.error("request %s: %s %s failed: %s", rid, request.method, request.url.path, exc.message)
        body["request_id"] = rid
    return JSONResponse(body, status_code=exc.status)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug of ours still answers in the documented error shape, with the id to quote."""
    rid = getattr(request.state, "request_id", None)
    return JSONResponse(
        {"error": "internal error; see the server log", "detail": [], "request_id": rid}, status_code=500
    )
