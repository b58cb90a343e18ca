"""BentoML service: the model server's APIs, wired to one core.

Which path serves what, and why:
  POST /predict      the `@bentoml.api` method `predict` below. BentoML's page at `/`,
                     /docs.json, /schema.json and its clients (SyncHTTPClient) list it
                     from this declaration; its HTTP calls are answered by the front door.
  /v1, /v2           the JSON API (model_server/json_api.py) and the Open Inference
                     Protocol over REST (model_server/oip_rest.py), by the front door.
  /ui                a web page for people: forms, model cards, CSV scoring
                     (model_server/web_page.py, model_server/web/), a client of /v1.
  /v1/admin,         what serves each name, changed on the running server with an admin
  /v2/repository     key (model_server/admin_api.py, model_server/rollout.py); every
                     worker follows the routing file (model_server/routing.py).
  gRPC (port 3001)   the Open Inference Protocol (model_server/oip_grpc.py), a grpc.aio
                     server that each worker starts (start_grpc).
  /readyz, /metrics, BentoML's own app, behind the front door.
  /, /docs.json ...
The front door (model_server/http_front_door.py) sits ahead of BentoML's per-request
middleware, which costs more CPU than a small model (docs/performance.md). Every door
goes through the same edge (model_server/edge.py: API keys, limits, request ids, errors,
access log) and the same core (validation, A/B routing, batching, metrics).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import bentoml
import grpc

from model_server import drift, json_api, registry
from model_server.admin_api import AdminApi
from model_server.auth import load_admin_keys, load_api_keys
from model_server.bentoml_hooks import bentoml_routes, declares_models, front_door_service, http_host
from model_server.constants import SERVICE_NAME
from model_server.edge import ConcurrencyGate, Edge
from model_server.errors import ModelNotReady
from model_server.http_front_door import FrontDoor
from model_server.json_api import JsonApi, PredictionAnswer, Record, Row
from model_server.logs import ACCESS_LOG, configure_logging
from model_server.oip_rest import OipRestApi
from model_server.openapi import build_openapi
from model_server.rollout import Rollout, follow, worker_name
from model_server.routes import RouteTable, join
from model_server.routing import Routing, RoutingFile, WorkerStatus
from model_server.server import ModelServer
from model_server.settings import load_settings, load_tls
from model_server.web_page import WebPage

log = logging.getLogger("model_server")

# Read (not written) at import, so that `bentoml serve` stops before starting workers
# when the configuration or the routing file is invalid (and no good routing from the
# file was kept, model_server/routing.py), names a tag the model store lacks, or mixes
# tags with different input schemas under one name.
SETTINGS = load_settings()
# What serves: the routing file once the admin API changed it, else configuration.yaml.
ROUTING_FILE = RoutingFile(SETTINGS.routing_path(), SETTINGS.routing_file_writable)
registry.check_configured(ROUTING_FILE.serving(Routing.initial(SETTINGS)).models)
WORKER_STATUS = WorkerStatus(ROUTING_FILE.path)
# BentoML's `ssl` block of this service turns TLS on for HTTP; gRPC follows the same block.
TLS = load_tls()

# The worker's ModelServer once its models are loaded; the APIs answer 503 before.
_loaded: dict[str, ModelServer] = {}


def current_server() -> ModelServer:
    server = _loaded.get("server")
    if server is None:
        raise ModelNotReady("models are still loading")
    return server


def is_ready() -> bool:
    return "server" in _loaded


def openapi_document() -> dict[str, Any]:
    return build_openapi(current_server(), ROUTES)


EDGE = Edge(
    load_api_keys(SETTINGS),
    ConcurrencyGate(SETTINGS.max_concurrent_requests),
    SETTINGS.access_log,
    admin_keys=load_admin_keys(SETTINGS),
)
ROLLOUT = Rollout(current_server, SETTINGS, ROUTING_FILE, WORKER_STATUS)
JSON_API = JsonApi(current_server, openapi_document)
OIP_REST = OipRestApi(current_server, is_ready)
ADMIN_API = AdminApi(ROLLOUT)
WEB_PAGE = WebPage(current_server)
ROUTES: RouteTable = join(
    JSON_API.bentoml_routes,
    JSON_API.routes,
    OIP_REST.routes,
    ADMIN_API.routes,
    WEB_PAGE.routes,
    bentoml_routes(SETTINGS.metrics_require_key),
)


def front_door(bentoml_app: object) -> FrontDoor:
    return FrontDoor(bentoml_app, ROUTES, EDGE, SETTINGS.max_body_bytes, SETTINGS.max_requests_per_connection)


@bentoml.service(name=SERVICE_NAME, service_class=front_door_service(front_door))
@declares_models(SETTINGS.tags())
class TabularModelServer:
    """Serves the scikit-learn models that configuration.yaml names, by tag."""

    def __init__(self) -> None:
        configure_logging()
        WORKER_STATUS.starting(worker_name())
        # Models run in the core's model thread, limited to one OpenMP/BLAS thread there.
        routing = ROUTING_FILE.serving(Routing.initial(SETTINGS))
        self.server = ModelServer.from_settings(SETTINGS, routing=routing)
        self.grpc_server: grpc.aio.Server | None = None
        self.follower: asyncio.Task[None] | None = None
        _loaded["server"] = self.server
        log.info("serving %s at routing revision %d", ", ".join(sorted(self.server.models)), routing.revision)
        # Everything loaded so far (BentoML, scikit-learn, the models) lives as long as
        # the worker. Frozen, the garbage collector stops walking it, and a full
        # collection no longer stalls requests (docs/performance.md).
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return _loaded.get("server") is self.server

    def __metrics__(self, content: str) -> str:
        """BentoML's /metrics text at each scrape, with the drift gauges appended, computed
        now from every worker's counts (model_server/drift.py). BentoML calls this hook
        when the service class has it (not documented; tests/test_monitoring.py pins it)."""
        return content + drift.metrics_text(self.server)

    @bentoml.api(route="/predict")
    async def predict(
        self, model: str, instances: list[Record | Row], version: str | None = None, explain: bool = False
    ) -> PredictionAnswer:
        """Predict with a served model: records keyed by feature name, or rows in training order.

        Answers what POST /v1/models/{model}/predict answers: the tag that answered, the
        predictions and, for classifiers, the probabilities of each class. With `explain`,
        each feature's contribution to each answer (docs/explanations.md).
        People can try every model on the web page at [/ui](/ui).
        """
        body, _ = await json_api.predict(self.server, model, instances, version, explain=explain)
        return PredictionAnswer.model_validate(body)

    @bentoml.on_startup
    async def follow_routing(self) -> None:
        """Apply every change of the routing file, made by any worker or a ConfigMap."""
        self.follower = asyncio.get_running_loop().create_task(follow(self.server, ROUTING_FILE, WORKER_STATUS))

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        """Start the OIP gRPC server in this worker's event loop (the port is shared)."""
        if SETTINGS.grpc_port == 0:
            return
        from model_server.oip_grpc import build_server

        host = SETTINGS.grpc_host or http_host() or "127.0.0.1"
        address = f"[{host}]:{SETTINGS.grpc_port}" if ":" in host else f"{host}:{SETTINGS.grpc_port}"
        grpc_server = build_server(current_server, is_ready, address, EDGE, SETTINGS, TLS, ROLLOUT)
        await grpc_server.start()
        self.grpc_server = grpc_server
        log.info("OIP gRPC listening on %s%s", address, " with TLS" if TLS else "")

    @bentoml.on_shutdown
    async def stop(self) -> None:
        """Drain in-flight gRPC calls and shadow comparisons, then release the models."""
        if self.follower is not None:
            self.follower.cancel()
        WORKER_STATUS.remove()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=10)
        _loaded.pop("server", None)
        await self.server.drain_shadows()
        self.server.close()
        ACCESS_LOG.flush()
