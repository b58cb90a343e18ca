"""Open Inference Protocol over REST, an ASGI app mounted inside the BentoML service at /v2.

Speaks the JSON form and Triton's binary tensor extension (a JSON header of
`Inference-Header-Content-Length` bytes followed by raw tensors), which tritonclient
uses by default. All work goes through `oip` and the core. The infer routes are
direct routes of the front door (fast_path.py); the rest is a small Starlette app.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import oip
from .constants import KEY_HEADER_BYTES
from .errors import InvalidInput, ModelServerError
from .fast_path import DirectAnswer, DirectRequest, DirectRoutes, Front
from .http_json import error_response, internal_error
from .payloads import decode_json, encode_json
from .server import ModelServer

log = logging.getLogger(__name__)

HEADER_LENGTH = "inference-header-content-length"


class OipRestApi(Front):
    """The /v2 front: an ASGI app whose infer routes are also direct routes."""

    def __init__(self, get_server: Callable[[], ModelServer]) -> None:
        self._get_server = get_server
        routes = DirectRoutes(
            [
                ("POST", "/models/{name}/infer", self.infer),
                ("POST", "/models/{name}/versions/{version}/infer", self.infer),
            ]
        )
        super().__init__(_starlette_routes(get_server), routes)

    async def infer(self, request: DirectRequest) -> DirectAnswer:
        """An OIP infer request, JSON or with Triton's binary tensors; answered in the same form."""
        server = self._get_server()
        name, version = request.params["name"], request.params.get("version")
        body, inputs = _parse_infer(request.body, request.header(HEADER_LENGTH_BYTES))
        matrix = oip.tensor_to_matrix(inputs)
        prediction = await server.predict_matrix(name, matrix, version, request.header(KEY_HEADER_BYTES))
        requested, binary = _requested_outputs(body)
        outputs = oip.outputs_for(prediction, requested)
        answer: dict[str, Any] = {"model_name": name, "model_version": prediction.model.version, "outputs": []}
        if "id" in body:
            answer["id"] = body["id"]
        blobs: list[bytes] = []
        for tensor in outputs:
            entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
            if binary.get(tensor.name, False):
                blob = tensor.as_bytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = tensor.as_list()
            answer["outputs"].append(entry)
        header = encode_json(answer)
        if not blobs:
            return DirectAnswer(header, prediction.model.tag)
        return DirectAnswer(
            header + b"".join(blobs),
            prediction.model.tag,
            b"application/octet-stream",
            [(HEADER_LENGTH_BYTES, str(len(header)).encode())],
        )


HEADER_LENGTH_BYTES = HEADER_LENGTH.encode()


def build_app(get_server: Callable[[], ModelServer]) -> OipRestApi:
    """The /v2 routes; `get_server` raises ModelNotReady until the models are loaded."""
    return OipRestApi(get_server)


def _starlette_routes(get_server: Callable[[], ModelServer]) -> Starlette:
    """The metadata and health routes, which are not on the hot path."""

    async def server_metadata(request: Request) -> JSONResponse:
        return JSONResponse(
            {"name": oip.SERVER_NAME, "version": oip.SERVER_VERSION, "extensions": ["binary_tensor_data"]}
        )

    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> JSONResponse:
        try:
            get_server()
        except ModelServerError:
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({"ready": True})

    async def model_metadata(request: Request) -> JSONResponse:
        try:
            server = get_server()
            name, version = request.path_params["name"], request.path_params.get("version")
            model = server.resolve(name, version)
            versions = list(server.routers[name].versions)
            return JSONResponse(oip.model_metadata(name, [version] if version else versions, model))
        except ModelServerError as exc:
            return error_response(exc, request)

    async def model_ready(request: Request) -> JSONResponse:
        try:
            server = get_server()
            name, version = request.path_params["name"], request.path_params.get("version")
            server.resolve(name, version)
        except ModelServerError as exc:
            return error_response(exc, request)
        return JSONResponse({"name": name, "ready": True})

    base = "/models/{name}"
    pinned = "/models/{name}/versions/{version}"
    return Starlette(
        exception_handlers={Exception: internal_error},
        routes=[
            Route("/", server_metadata, methods=["GET"]),
            Route("/health/live", live, methods=["GET"]),
            Route("/health/ready", ready, methods=["GET"]),
            Route(base, model_metadata, methods=["GET"]),
            Route(pinned, model_metadata, methods=["GET"]),
            Route(base + "/ready", model_ready, methods=["GET"]),
            Route(pinned + "/ready", model_ready, methods=["GET"]),
        ],
    )


def _parse_infer(raw: bytes, header_length: str | None) -> tuple[dict[str, Any], list[oip.InputTensor]]:
    """The JSON part of an infer request and its input tensors (binary parts attached)."""
    binary = b""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 < length <= len(raw):
            raise InvalidInput.at(
                ["headers", "Inference-Header-Content-Length"], f"must be between 1 and {len(raw)}", "length"
            )
        raw, binary = raw[:length], raw[length:]
    body = decode_json(raw)
    if not isinstance(body, dict):
        raise InvalidInput.at(["body"], "must be a JSON object with 'inputs'", "type")
    items = body.get("inputs")
    if not isinstance(items, list):
        raise InvalidInput.at(["inputs"], "is required and must be a list of tensors", "missing")
    tensors, offset = [], 0
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput.at(["inputs", i], "must be a tensor object", "type")
        for key, kind in (("name", str), ("datatype", str), ("shape", list)):
            if not isinstance(item.get(key), kind):
                raise InvalidInput.at(["inputs", i, key], f"is required and must be a {kind.__name__}", "missing")
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput.at(["inputs", i, "parameters"], "must be an object", "type")
        size = parameters.get("binary_data_size")
        tensor = oip.InputTensor(
            name=item["name"], datatype=item["datatype"], shape=item["shape"], data=item.get("data")
        )
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInput.at(
                    ["inputs", i, "parameters", "binary_data_size"],
                    "does not match the binary part of the body",
                    "length",
                )
            tensor.raw, offset = binary[offset : offset + size], offset + size
        elif "data" not in item:
            raise InvalidInput.at(
                ["inputs", i, "data"], "is required unless the tensor is sent as binary data", "missing"
            )
        tensors.append(tensor)
    if offset != len(binary):
        raise InvalidInput.at(
            ["body"], f"{len(binary) - offset} bytes of binary data follow the tensors they belong to", "length"
        )
    return body, tensors


def _requested_outputs(body: dict[str, Any]) -> tuple[list[str], dict[str, bool]]:
    """Names of the requested outputs, and which of them to answer as binary data."""
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput.at(["parameters"], "must be an object", "type")
    all_binary = bool(params.get("binary_data_output", False))
    outputs = body.get("outputs") or []
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("parameters") or {}, dict)
        for o in outputs
    ):
        raise InvalidInput.at(
            ["outputs"], "must be a list of objects with a 'name' (and an object of 'parameters')", "type"
        )
    names = [o["name"] for o in outputs]
    binary: dict[str, bool] = {}
    for o in outputs:
        binary[o["name"]] = bool((o.get("parameters") or {}).get("binary_data", all_binary))
    if not outputs and all_binary:
        binary = {oip.OUTPUT_PREDICT: True, oip.OUTPUT_PREDICT_PROBA: True}
    return names, binary
