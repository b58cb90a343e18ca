"""Open Inference Protocol over gRPC: `inference.GRPCInferenceService` on grpc.aio.

BentoML >= 1.2 cannot serve gRPC for `@bentoml.service`, so each worker starts this
server in its own event loop (the service's startup hook) on a shared port
(SO_REUSEPORT), and calls the same core, and so the same batcher, as HTTP.
Requests are parsed inside the handlers, so a malformed message is INVALID_ARGUMENT
rather than a transport failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from . import oip
from .constants import KEY_HEADER
from .errors import InvalidInput, ModelServerError
from .guard import ApiKeys, ConcurrencyGate, log_access, request_id
from .oip_proto import grpc_predict_v2_pb2 as pb
from .server import ModelServer
from .settings import ServerSettings

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"

# The one table from the core's statuses to gRPC codes.
STATUS_TO_CODE = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}

# Health calls answer without an API key, like the HTTP health probes.
OPEN_CALLS = {"ServerLive", "ServerReady"}

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]


class InferenceServicer:
    """The six OIP calls, each: parse, ask the core, answer or abort with the mapped code."""

    def __init__(self, get_server: Callable[[], ModelServer]) -> None:
        self._get_server = get_server

    async def server_live(self, request: pb.ServerLiveRequest, metadata: dict[str, str]) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, metadata: dict[str, str]) -> Any:
        try:
            self._get_server()
        except ModelServerError:
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=True)

    async def model_ready(self, request: pb.ModelReadyRequest, metadata: dict[str, str]) -> Any:
        self._get_server().resolve(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, request: pb.ServerMetadataRequest, metadata: dict[str, str]) -> Any:
        return pb.ServerMetadataResponse(name=oip.SERVER_NAME, version=oip.SERVER_VERSION, extensions=[])

    async def model_metadata(self, request: pb.ModelMetadataRequest, metadata: dict[str, str]) -> Any:
        server = self._get_server()
        model = server.resolve(request.name, request.version or None)
        versions = [request.version] if request.version else list(server.routers[request.name].versions)
        meta = oip.model_metadata(request.name, versions, model)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def model_infer(self, request: pb.ModelInferRequest, metadata: dict[str, str]) -> Any:
        server = self._get_server()
        matrix = oip.tensor_to_matrix(_input_tensors(request))
        key = metadata.get(KEY_HEADER)
        prediction = await server.predict_matrix(request.model_name, matrix, request.model_version or None, key)
        outputs = oip.outputs_for(prediction, [o.name for o in request.outputs])
        response = pb.ModelInferResponse(
            model_name=request.model_name, model_version=prediction.model.version, id=request.id
        )
        for tensor in outputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(tensor.as_bytes())
        return response, prediction.model.tag


def build_server(
    get_server: Callable[[], ModelServer],
    address: str,
    keys: ApiKeys,
    gate: ConcurrencyGate,
    settings: ServerSettings,
    tls: tuple[Path, Path] | None = None,
) -> grpc.aio.Server:
    """A grpc.aio server for the OIP service on `address`, sharing the port with sibling workers."""
    servicer = InferenceServicer(get_server)
    calls: dict[str, tuple[Callable[..., Awaitable[Any]], Any]] = {
        "ServerLive": (servicer.server_live, pb.ServerLiveRequest),
        "ServerReady": (servicer.server_ready, pb.ServerReadyRequest),
        "ModelReady": (servicer.model_ready, pb.ModelReadyRequest),
        "ServerMetadata": (servicer.server_metadata, pb.ServerMetadataRequest),
        "ModelMetadata": (servicer.model_metadata, pb.ModelMetadataRequest),
        "ModelInfer": (servicer.model_infer, pb.ModelInferRequest),
    }
    rules = _Rules(keys, gate, settings.access_log)
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _guarded(name, method, message, rules),
            request_deserializer=None,  # raw bytes: parsed in _guarded
            response_serializer=lambda response: response.SerializeToString(),
        )
        for name, (method, message) in calls.items()
    }
    options = [
        ("grpc.so_reuseport", 1),
        # Larger messages are refused by gRPC itself with RESOURCE_EXHAUSTED.
        ("grpc.max_receive_message_length", settings.max_body_bytes),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if tls is None:
        server.add_insecure_port(address)
    else:
        certfile, keyfile = tls
        credentials = grpc.ssl_server_credentials([(keyfile.read_bytes(), certfile.read_bytes())])
        server.add_secure_port(address, credentials)
    return server


@dataclass(frozen=True)
class _Rules:
    keys: ApiKeys
    gate: ConcurrencyGate
    access_log: bool


def _guarded(name: str, method: Callable[..., Awaitable[Any]], message: Any, rules: _Rules) -> Handler:
    """Parse, check key and limit, call, map errors to codes, log; health calls stay open."""
    open_call = name in OPEN_CALLS

    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        metadata = dict(context.invocation_metadata() or ())
        rid = request_id(metadata.get("x-request-id"))
        code, text, tag = grpc.StatusCode.OK, "", None
        entered = False
        try:
            if not open_call and not rules.keys.accepts(metadata.get("authorization")):
                raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "unauthorized")
            if not open_call:
                if not rules.gate.try_enter():
                    limit = rules.gate.limit
                    raise _Refused(
                        grpc.StatusCode.UNAVAILABLE,
                        f"the server is at its limit of {limit} requests in flight; retry shortly",
                    )
                entered = True
            try:
                request = message.FromString(raw)
            except DecodeError:
                invalid = f"is not a valid {message.DESCRIPTOR.name}"
                raise InvalidInput.at(["message"], invalid, "protobuf") from None
            result = await method(request, metadata)
            response, tag = result if isinstance(result, tuple) else (result, None)
        except _Refused as refused:
            code, text = refused.code, refused.text
        except ModelServerError as exc:
            code = STATUS_TO_CODE.get(exc.status, grpc.StatusCode.INTERNAL)
            text = exc.message
            if code == grpc.StatusCode.INTERNAL:
                log.error("request %s: %s failed: %s", rid, name, text)
        except Exception:
            log.exception("request %s: %s failed", rid, name)
            code, text = grpc.StatusCode.INTERNAL, f"internal error (request id {rid}); see the server log"
        finally:
            if entered:
                rules.gate.leave()
        trailing = [("x-request-id", rid)] + ([("x-model-tag", tag)] if tag else [])
        context.set_trailing_metadata(tuple(trailing))
        if rules.access_log and not open_call:
            log_access("grpc", rid, name, code.name, tag, started)
        if code != grpc.StatusCode.OK:
            await context.abort(code, text)
        return response

    return handle


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, text: str) -> None:
        self.code, self.text = code, text


def _input_tensors(request: Any) -> list[oip.InputTensor]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput.at(
            ["raw_input_contents"], f"holds {len(raw)} entries for {len(request.inputs)} inputs", "count"
        )
    tensors = []
    for i, item in enumerate(request.inputs):
        tensor = oip.InputTensor(name=item.name, datatype=item.datatype, shape=list(item.shape))
        if raw:
            tensor.raw = raw[i]
        else:
            tensor.data = _contents(item.datatype, item.contents)
        tensors.append(tensor)
    return tensors


def _contents(datatype: str, contents: Any) -> list[Any]:
    """The typed `contents` field that matches the datatype, as a flat list."""
    field = {
        "FP64": "fp64_contents",
        "FP32": "fp32_contents",
        "INT64": "int64_contents",
        "INT32": "int_contents",
        "INT16": "int_contents",
        "INT8": "int_contents",
        "UINT64": "uint64_contents",
        "UINT32": "uint_contents",
        "UINT16": "uint_contents",
        "UINT8": "uint_contents",
    }.get(datatype)
    if field is None:
        return []  # the datatype check in oip names the problem
    return list(getattr(contents, field))
