"""Open Inference Protocol over REST: the /v2 routes.

Speaks the JSON form and Triton's binary tensor extension (a JSON header of
`Inference-Header-Content-Length` bytes followed by raw tensors), which tritonclient
uses by default. Tensors are decoded by `oip` and predicted by the same core as /v1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from model_server.constants import (
    KEY_HEADER_BYTES,
    OUTPUT_PREDICT,
    OUTPUT_PREDICT_PROBA,
    OUTPUT_PREDICTION_ID,
    SERVER_NAME,
    SERVER_VERSION,
)
from model_server.core.server import InferenceCall, InferenceResult, ModelServer
from model_server.errors import InvalidInput
from model_server.json_codec import decode_json, encode_json
from model_server.transports import oip
from model_server.transports.edge import PROBE
from model_server.transports.route_table import Answer, AnswerBody, Request, RequestBody, Route, RouteTable

HEADER_LENGTH = b"inference-header-content-length"
# JSON, or Triton's binary extension (tritonclient sends no Content-Type at all).
INFER_BODY = ("application/json", "application/octet-stream")
READY = encode_json({"ready": True})


class OipRestApi:
    """Handlers of the OIP REST routes, and their table."""

    def __init__(self, get_server: Callable[[], ModelServer], is_ready: Callable[[], bool]) -> None:
        self._get_server = get_server
        self._is_ready = is_ready
        model, pinned = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
        self.routes = RouteTable(
            [
                Route(
                    "GET", "/v2", "OIP server metadata.", self.server_metadata, response_schema=AnswerBody.OIP_SERVER
                ),
                Route("GET", "/v2/health/live", "OIP liveness.", self.live, access=PROBE),
                Route("GET", "/v2/health/ready", "OIP readiness.", self.ready, access=PROBE),
                Route(
                    "GET", model, "OIP metadata of a model.", self.model_metadata, response_schema=AnswerBody.OIP_MODEL
                ),
                Route(
                    "GET",
                    pinned,
                    "OIP metadata of one version.",
                    self.model_metadata,
                    response_schema=AnswerBody.OIP_MODEL,
                ),
                Route("GET", model + "/ready", "OIP readiness of a model.", self.model_ready),
                Route("GET", pinned + "/ready", "OIP readiness of one version.", self.model_ready),
                Route(
                    "POST",
                    model + "/infer",
                    "OIP inference with the tag the A/B split chooses.",
                    self.infer,
                    body=INFER_BODY,
                    request_schema=RequestBody.INFER,
                    response_schema=AnswerBody.INFER,
                ),
                Route(
                    "POST",
                    pinned + "/infer",
                    "OIP inference with one version.",
                    self.infer,
                    body=INFER_BODY,
                    request_schema=RequestBody.INFER,
                    response_schema=AnswerBody.INFER,
                ),
            ]
        )

    async def server_metadata(self, request: Request) -> Answer:
        return Answer(
            encode_json(
                {
                    "name": SERVER_NAME,
                    "version": SERVER_VERSION,
                    "extensions": ["binary_tensor_data", "model_repository"],
                }
            )
        )

    async def live(self, request: Request) -> Answer:
        return Answer(encode_json({"live": True}))

    async def ready(self, request: Request) -> Answer:
        if self._is_ready():
            return Answer(READY)
        return Answer(encode_json({"ready": False}), status=503)

    async def model_metadata(self, request: Request) -> Answer:
        server = self._get_server()
        name, version = request.params["name"], request.params.get("version")
        target = server.resolve(name, version)
        versions = [version] if version else server.describe(name).versions
        return Answer(encode_json(oip.model_metadata(name, versions, target.published)))

    async def model_ready(self, request: Request) -> Answer:
        name = request.params["name"]
        self._get_server().resolve(name, request.params.get("version"))
        return Answer(encode_json({"name": name, "ready": True}))

    async def infer(self, request: Request) -> Answer:
        """An OIP infer request, JSON or with Triton's binary tensors; answered in the same form."""
        server = self._get_server()
        body, inputs = _parse_infer(request.body, request.header(HEADER_LENGTH))
        requested, binary = _requested_outputs(body)
        call = InferenceCall(
            request.params["name"],
            tensors=oip.Tensors(inputs),
            version=request.params.get("version"),
            key=request.header(KEY_HEADER_BYTES),
            explain=oip.wants_explanation(body.get("parameters", {}).get(oip.EXPLAIN)),
            outputs=tuple(requested),
            request_id=request.request_id,
        )
        result = await server.infer(call)
        return _infer_answer(body.get("id"), result, binary)


def _infer_answer(request_id: str | None, result: InferenceResult, binary: dict[str, bool]) -> Answer:
    """The OIP answer: JSON, with each output asked for as binary data appended after it."""
    answer: dict[str, Any] = {"model_name": result.name, "model_version": result.model.version, "outputs": []}
    if request_id is not None:
        answer["id"] = request_id
    if parameters := oip.response_parameters(result):
        answer["parameters"] = parameters
    blobs: list[bytes] = []
    for tensor in oip.outputs_for(result):
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
        return Answer(header, result.tag, revision=result.revision)
    length = [(HEADER_LENGTH, str(len(header)).encode())]
    body = header + b"".join(blobs)
    return Answer(body, result.tag, b"application/octet-stream", length, revision=result.revision)


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
    if not isinstance(body.get("id", ""), str):
        raise InvalidInput.at(["id"], "must be a string", "type")
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
        parameters = item.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidInput.at(["inputs", i, "parameters"], "must be an object", "type")
        size = parameters.get("binary_data_size")
        tensor = oip.InputTensor(
            name=item["name"], datatype=item["datatype"], shape=item["shape"], data=item.get("data")
        )
        if size is not None:
            if "data" in item:
                raise InvalidInput.at(
                    ["inputs", i, "data"],
                    "must be left out of a tensor sent as binary data (parameters.binary_data_size)",
                    "conflict",
                )
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
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInput.at(["parameters"], "must be an object", "type")
    all_binary = _flag(params.get("binary_data_output", False), ["parameters", "binary_data_output"])
    outputs = body.get("outputs", [])
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("parameters", {}), dict)
        for o in outputs
    ):
        raise InvalidInput.at(
            ["outputs"], "must be a list of objects with a 'name' (and an object of 'parameters')", "type"
        )
    names = [o["name"] for o in outputs]
    binary: dict[str, bool] = {}
    for o in outputs:
        where = ["outputs", o["name"], "parameters", "binary_data"]
        binary[o["name"]] = _flag(o.get("parameters", {}).get("binary_data", all_binary), where)
    if not outputs and all_binary:
        binary = {OUTPUT_PREDICT: True, OUTPUT_PREDICT_PROBA: True}
    binary.setdefault(OUTPUT_PREDICTION_ID, all_binary)  # answered whether named or not
    return names, binary


def _flag(value: Any, where: list[Any]) -> bool:
    """A binary data parameter: true or false, as Triton's clients send it."""
    if not isinstance(value, bool):
        raise InvalidInput.at(where, "must be true or false", "type")
    return value
