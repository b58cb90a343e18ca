"""Open Inference Protocol over gRPC: `inference.GRPCInferenceService` on grpc.aio.

BentoML >= 1.2 cannot serve gRPC for `@bentoml.service`, so each worker starts this
server in its own event loop (the service's startup hook) on a shared port
(SO_REUSEPORT). Every call goes through the same edge as HTTP (edge.py: API key,
gate, request id, error mapping, access log) and the same core. Requests are parsed
inside the edge, so a malformed message is INVALID_ARGUMENT, not a transport failure.

`ModelStreamInfer` (Triton's bidirectional stream) takes many ModelInferRequests on one
stream: each message goes through the edge on its own (the stream's API key, the gate,
its `id` as request id, its access log line) and gets one ModelStreamInferResponse, its
response or its `error_message`; an error never ends the stream. Messages are answered
as they finish, not in the order they came (as Triton's decoupled models): a client
matches answers to requests by `id`.

With a `Rollout`, the server also answers Triton's model repository extension
(RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload) with an admin key, as
POST /v2/repository/... does over REST (admin_api.py).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from model_server.config.settings import ServerSettings
from model_server.constants import KEY_HEADER, SERVER_NAME, SERVER_VERSION
from model_server.core.server import InferenceCall, InferenceResult, ModelServer
from model_server.errors import GRPC_CODES, InvalidInput, shorten
from model_server.json_codec import decode_json
from model_server.rollout.changes import model_name
from model_server.rollout.operations import ChangeResult, Rollout, refuse_model_files
from model_server.transports import datatypes, oip
from model_server.transports.edge import ADMIN, PREDICTION, PROBE, Access, Call, Edge
from model_server.transports.oip_proto import grpc_predict_v2_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
# The edge's request id, put among a call's metadata for its handler.
REQUEST_ID = "x-request-id"
Metadata = dict[str, str]
# Messages of one stream in flight at once (never more than the worker's gate allows): a
# client may send more, they wait in gRPC's flow control until answers leave.
STREAM_IN_FLIGHT = 128
# The parameter of a stream's error answer that holds the gRPC status code name the unary
# call would have ended with (UNAVAILABLE: try again later; INVALID_ARGUMENT: do not).
ERROR_CODE = "error_code"


class InferenceServicer:
    """The OIP calls, each: ask the core, answer with a message (errors raise)."""

    def __init__(self, get_server: Callable[[], ModelServer], is_ready: Callable[[], bool]) -> None:
        self._get_server = get_server
        self._is_ready = is_ready

    async def server_live(self, request: pb.ServerLiveRequest, metadata: Metadata) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, metadata: Metadata) -> Any:
        return pb.ServerReadyResponse(ready=self._is_ready())

    async def model_ready(self, request: pb.ModelReadyRequest, metadata: Metadata) -> Any:
        self._get_server().resolve(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, request: pb.ServerMetadataRequest, metadata: Metadata) -> Any:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=["model_repository"])

    async def model_metadata(self, request: pb.ModelMetadataRequest, metadata: Metadata) -> Any:
        server = self._get_server()
        target = server.resolve(request.name, request.version or None)
        versions = [request.version] if request.version else server.describe(request.name).versions
        meta = oip.model_metadata(request.name, versions, target.published)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[
                tensor(
                    name=t["name"],
                    datatype=t["datatype"],
                    shape=t["shape"],
                    parameters={k: pb.InferParameter(string_param=v) for k, v in t["parameters"].items()},
                )
                for t in meta["inputs"]
            ],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def model_infer(self, request: pb.ModelInferRequest, metadata: Metadata) -> Any:
        result = await self.infer(request, metadata)
        response = pb.ModelInferResponse()
        encode_response(response, request, result)
        return _Answer(response, result.tag, result.revision)

    async def infer(self, request: pb.ModelInferRequest, metadata: Metadata) -> InferenceResult:
        """The core's answer to one ModelInferRequest (unary or one message of a stream)."""
        call = InferenceCall(
            request.model_name,
            tensors=oip.Tensors(_input_tensors(request)),
            version=request.model_version or None,
            key=metadata.get(KEY_HEADER),
            explain=oip.wants_explanation(_explain_parameter(request.parameters)),
            outputs=tuple(o.name for o in request.outputs),
            request_id=metadata.get(REQUEST_ID),
        )
        return await self._get_server().infer(call)


def encode_response(response: Any, request: pb.ModelInferRequest, result: InferenceResult) -> None:
    """Fill a ModelInferResponse (a fresh one, or a stream answer's `infer_response`)."""
    response.model_name = result.name
    response.model_version = result.model.version
    response.id = request.id
    for key, text in oip.response_parameters(result).items():
        response.parameters[key].string_param = text
    for tensor in oip.outputs_for(result):
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(tensor.as_bytes())


class RepositoryServicer:
    """Triton's model repository extension over one worker's `Rollout`: a model is a
    served name, and load's `config` parameter is its routing as JSON, as over REST."""

    def __init__(self, rollout: Rollout) -> None:
        self._rollout = rollout

    async def index(self, request: pb.RepositoryIndexRequest, metadata: Metadata) -> Any:
        entries = await asyncio.to_thread(self._rollout.index, request.ready)
        model_index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[model_index(**entry) for entry in entries])

    async def load(self, request: pb.RepositoryModelLoadRequest, metadata: Metadata) -> Any:
        config = _config_parameter(request.parameters)
        who = self._rollout.who(metadata.get("authorization"))
        result = await self._rollout.load(_model_name(request), config, who)
        return _changed(pb.RepositoryModelLoadResponse(), result)

    async def unload(self, request: pb.RepositoryModelUnloadRequest, metadata: Metadata) -> Any:
        who = self._rollout.who(metadata.get("authorization"))
        result = await self._rollout.remove(_model_name(request), who)
        return _changed(pb.RepositoryModelUnloadResponse(), result)


class _Answer:
    """A response message, and the tag and routing revision that produced it (for the
    access log and the trailing metadata)."""

    def __init__(self, message: Any, tag: str | None = None, revision: int | None = None) -> None:
        self.message, self.tag, self.revision = message, tag, revision


def build_server(
    get_server: Callable[[], ModelServer],
    is_ready: Callable[[], bool],
    address: str,
    edge: Edge,
    settings: ServerSettings,
    tls: tuple[Path, Path] | None = None,
    rollout: Rollout | None = None,
) -> grpc.aio.Server:
    """A grpc.aio server for the OIP service on `address`, sharing the port with sibling
    workers; with `rollout`, also the model repository extension."""
    servicer = InferenceServicer(get_server, is_ready)
    # name: (method, request message, who may call)
    calls: dict[str, tuple[Callable[..., Awaitable[Any]], Any, Access]] = {
        "ServerLive": (servicer.server_live, pb.ServerLiveRequest, PROBE),
        "ServerReady": (servicer.server_ready, pb.ServerReadyRequest, PROBE),
        "ModelReady": (servicer.model_ready, pb.ModelReadyRequest, PREDICTION),
        "ServerMetadata": (servicer.server_metadata, pb.ServerMetadataRequest, PREDICTION),
        "ModelMetadata": (servicer.model_metadata, pb.ModelMetadataRequest, PREDICTION),
        "ModelInfer": (servicer.model_infer, pb.ModelInferRequest, PREDICTION),
    }
    if rollout is not None:
        repository = RepositoryServicer(rollout)
        calls["RepositoryIndex"] = (repository.index, pb.RepositoryIndexRequest, ADMIN)
        calls["RepositoryModelLoad"] = (repository.load, pb.RepositoryModelLoadRequest, ADMIN)
        calls["RepositoryModelUnload"] = (repository.unload, pb.RepositoryModelUnloadRequest, ADMIN)
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _through_edge(edge, name, method, message, access),
            request_deserializer=None,  # raw bytes: parsed inside the edge
            response_serializer=lambda response: response.SerializeToString(),
        )
        for name, (method, message, access) in calls.items()
    }
    window = min(STREAM_IN_FLIGHT, settings.max_concurrent_requests)
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        _stream_through_edge(edge, servicer, window),
        request_deserializer=None,  # raw bytes: parsed per message
        response_serializer=None,  # answers are serialized by the task that made them
    )
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


def _through_edge(
    edge: Edge, name: str, method: Callable[..., Awaitable[Any]], message: Any, access: Access
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
    """A gRPC handler: the call as the edge sees it, the edge's outcome as a status code."""

    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        metadata = dict(context.invocation_metadata() or ())
        call = Call(
            transport="grpc",
            target=name,
            credentials=metadata.get("authorization"),
            presented_id=metadata.get("x-request-id"),
            access=access,
            traceparent=metadata.get("traceparent"),
        )

        async def run(request_id: str) -> _Answer:
            try:
                request = message.FromString(raw)
            except DecodeError:
                raise InvalidInput.at(["message"], f"is not a valid {message.DESCRIPTOR.name}", "protobuf") from None
            result = await method(request, {**metadata, REQUEST_ID: request_id})
            return result if isinstance(result, _Answer) else _Answer(result)

        outcome = await edge.run(call, run)
        trailing = [("x-request-id", outcome.request_id)]
        if outcome.result is not None and outcome.result.tag:
            trailing.append(("x-model-tag", outcome.result.tag))
        if outcome.result is not None and outcome.result.revision is not None:
            trailing.append(("x-routing-revision", str(outcome.result.revision)))
        context.set_trailing_metadata(tuple(trailing))
        if outcome.error is not None:
            code = grpc.StatusCode[GRPC_CODES.get(outcome.error.status, "INTERNAL")]
            text = outcome.error.message
            if outcome.error.status >= 500:
                text += f" (request id {outcome.request_id})"
            await context.abort(code, text)
        assert outcome.result is not None
        return outcome.result.message

    return handle


def _stream_through_edge(
    edge: Edge, servicer: InferenceServicer, window: int
) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], AsyncIterator[bytes]]:
    """A ModelStreamInfer handler: each message becomes a task that runs through the edge
    and queues its serialized answer; the handler writes answers as they come. At most
    `window` messages of the stream are in flight; the next is read when one finishes."""

    async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        metadata = dict(context.invocation_metadata() or ())
        answers: asyncio.Queue[bytes | None] = asyncio.Queue()
        slots = asyncio.Semaphore(window)
        running: set[asyncio.Task[None]] = set()
        failure: list[BaseException] = []

        async def answer(raw: bytes) -> None:
            try:
                answers.put_nowait(await _stream_answer(edge, servicer, raw, metadata))
            finally:
                slots.release()

        async def read() -> None:
            try:
                async for raw in requests:
                    await slots.acquire()
                    task = asyncio.create_task(answer(raw))
                    running.add(task)
                    task.add_done_callback(running.discard)
                for _ in range(window):  # every message answered
                    await slots.acquire()
            except Exception as exc:  # the stream broke: end it with that error
                failure.append(exc)
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await answers.get()) is not None:
                yield item
            if failure:
                raise failure[0]
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    return handle


async def _stream_answer(edge: Edge, servicer: InferenceServicer, raw: bytes, metadata: Metadata) -> bytes:
    """One stream message through the edge, answered as a serialized
    ModelStreamInferResponse: the response, or the error as the unary call's status text
    followed by the request id."""
    try:
        request = pb.ModelInferRequest.FromString(raw)
    except DecodeError:
        request = None
    call = Call(
        transport="grpc",
        target="ModelStreamInfer",
        credentials=metadata.get("authorization"),
        presented_id=request.id if request is not None else None,
        access=PREDICTION,
    )
    answer = pb.ModelStreamInferResponse()

    async def run(request_id: str) -> InferenceResult:
        if request is None:
            raise InvalidInput.at(["message"], "is not a valid ModelInferRequest", "protobuf")
        result = await servicer.infer(request, metadata)
        encode_response(answer.infer_response, request, result)
        return result

    outcome = await edge.run(call, run)
    if outcome.error is not None:
        answer.Clear()
        # The request id ends every error on a stream (a unary call's only on a 5xx): a
        # client such as tritonclient sees the text alone, and needs it to tell which failed.
        answer.error_message = f"{outcome.error.message} (request id {outcome.request_id})"
        # As Triton: the failed request's id in the response too, and here the status code
        # the unary call would have ended with.
        failed = answer.infer_response
        if request is not None:
            failed.id, failed.model_name, failed.model_version = request.id, request.model_name, request.model_version
        failed.parameters[ERROR_CODE].string_param = GRPC_CODES.get(outcome.error.status, "INTERNAL")
    return answer.SerializeToString()


def _changed(message: Any, result: ChangeResult) -> _Answer:
    """An empty repository answer; the routing revision goes in the trailing metadata.
    Workers still behind it (a 202 over REST) show in GET /v1/admin/models."""
    return _Answer(message, revision=result.revision)


def _model_name(request: Any) -> str:
    if not request.model_name:
        raise InvalidInput.at(["model_name"], "is required", "missing")
    return model_name(str(request.model_name), ["model_name"])


def _config_parameter(parameters: Any) -> Any:
    """Load's `config` parameter: the name's routing as a JSON string (string_param), the
    body of PUT /v1/admin/models/{name}. Triton's model files are refused."""
    refuse_model_files(parameters)
    if "config" not in parameters:
        return None
    config = parameters["config"]
    if config.WhichOneof("parameter_choice") != "string_param":
        raise InvalidInput.at(["parameters", "config"], "must be a string_param holding JSON", "type")
    return decode_json(config.string_param.encode())


def _explain_parameter(parameters: Any) -> Any:
    """The request's `explain` parameter as Python: a bool_param's value, else what was sent."""
    if oip.EXPLAIN not in parameters:
        return None
    parameter = parameters[oip.EXPLAIN]
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def _input_tensors(request: Any) -> list[oip.InputTensor]:
    """The request's inputs as `oip.InputTensor`s. The values come either all from
    `raw_input_contents` or all from each input's typed `contents` (the protocol allows
    one or the other); typed values are counted against the shape before any is copied."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput.at(
            ["raw_input_contents"], f"holds {len(raw)} entries for {len(request.inputs)} inputs", "count"
        )
    tensors = []
    for i, item in enumerate(request.inputs):
        where = ["inputs", item.name or i]
        tensor = oip.InputTensor(name=item.name, datatype=item.datatype, shape=list(item.shape))
        if raw:
            if item.HasField("contents"):
                raise InvalidInput.at(
                    [*where, "contents"],
                    "must not be set when the request has raw_input_contents; send the values in one of them",
                    "exclusive",
                )
            tensor.raw = raw[i]
        else:
            tensor.data = _contents(item.datatype, item.contents, tensor.shape, where)
        tensors.append(tensor)
    return tensors


def _contents(datatype: str, contents: Any, shape: list[int], where: list[Any]) -> list[Any]:
    """The typed `contents` field that matches the datatype, as a flat list; a field that
    holds another count of values than a valid shape needs is refused before it is copied."""
    known = datatypes.INPUTS.get(datatype)
    if known is None:
        return []  # the datatype check in oip names the problem
    if not known.grpc_contents:
        raise InvalidInput.at(
            [*where, "contents"], f"{datatype} has no typed field; send raw_input_contents", "datatype"
        )
    values = getattr(contents, known.grpc_contents)
    if all(d >= 0 for d in shape):  # else oip's shape check names the problem
        needed = math.prod(shape)
        if len(values) != needed:
            raise InvalidInput.at(
                [*where, "contents"],
                f"holds {len(values)} values; shape {shorten(str(shape))} needs {needed}",
                "length",
            )
    return list(values)
