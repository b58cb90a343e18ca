"""BentoML service: the model server's APIs, wired to one core.

Which path serves what, and why:
  POST /predict      the `@bentoml.api` method `predict` below. BentoML's page at `/`,
                     /docs.json, /schema.json and its clients (SyncHTTPClient) list it
                     from this declaration; its HTTP calls are answered by the front door.
  /v1, /v2           the JSON API (model_server/transports/json_api.py) and the Open Inference
                     Protocol over REST (model_server/transports/oip_rest.py), by the front door.
  /ui                a web page for people: forms, model cards, CSV scoring
                     (model_server/transports/web_page.py, model_server/transports/web/), a client of /v1.
  /v1/admin,         what serves each name, changed on the running server with an admin
  /v2/repository     key (model_server/transports/admin_api.py, model_server/rollout/operations.py); every
                     worker follows the routing file (model_server/config/routing.py).
  gRPC (port 3001)   the Open Inference Protocol (model_server/transports/oip_grpc.py), a grpc.aio
                     server that each worker starts (start_grpc).
  /readyz, /metrics, BentoML's own app, behind the front door.
  /, /docs.json ...
The front door (model_server/transports/http_front_door.py) sits ahead of BentoML's per-request
middleware, which costs more CPU than a small model (docs/performance.md). Every door
goes through the same edge (model_server/transports/edge.py: API keys, limits, request ids, errors,
access log) and the same core (validation, A/B routing, batching, metrics).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import bentoml
import grpc
from bentoml import get_current_service
from bentoml.exceptions import BentoMLException

from model_server.bentoml_hooks import (
    bentoml_routes,
    declares_models,
    front_door_service,
    http_host,
    serve_http_with,
    use_model_store,
)
from model_server.config.auth import load_admin_keys, load_api_keys, load_fingerprints
from model_server.config.routing import Routing, RoutingFile, WorkerStatus
from model_server.config.settings import load_settings, load_tls
from model_server.constants import SERVICE_NAME
from model_server.core.server import ModelServer
from model_server.errors import ModelNotReady
from model_server.models import registry
from model_server.monitoring import drift_report, outcome_report
from model_server.monitoring.logs import ACCESS_LOG, configure_logging
from model_server.monitoring.tracing import TRACING
from model_server.rollout.operations import Rollout, follow, worker_name
from model_server.transports import json_api
from model_server.transports.admin_api import AdminApi
from model_server.transports.edge import ConcurrencyGate, Edge
from model_server.transports.http_front_door import FrontDoor, header_protocol
from model_server.transports.json_api import JsonApi, PredictionAnswer, PredictRequest, Record, Row
from model_server.transports.oip_rest import OipRestApi
from model_server.transports.openapi import build_openapi, error_responses
from model_server.transports.route_table import RouteTable, join
from model_server.transports.web_page import WebPage

log = logging.getLogger("model_server")

# Read (not written) at import, so that `bentoml serve` stops before starting workers
# when the configuration or the routing file is invalid (and no good routing from the
# file was kept, model_server/config/routing.py), names a tag the model store lacks, or mixes
# tags with different input schemas under one name.
SETTINGS = load_settings()
# A fleet's replicas share one model store, routing file and worker reports (docs/operations.md).
if (SHARED_MODELS := SETTINGS.model_store_path()) is not None:
    use_model_store(SHARED_MODELS, seed_tags=SETTINGS.tags())
# What serves: the routing file once the admin API changed it, else configuration.yaml.
ROUTING_FILE = RoutingFile(SETTINGS.routing_path(), SETTINGS.routing_file_writable)
registry.check_configured(ROUTING_FILE.serving(Routing.initial(SETTINGS)).models)
WORKER_STATUS = WorkerStatus(ROUTING_FILE.path, SETTINGS.reports_path(), SETTINGS.replica_name)
# BentoML's `ssl` block of this service turns TLS on for HTTP; gRPC follows the same block.
TLS = load_tls()


def current_server() -> ModelServer:
    """This worker's core, held by the service instance (`bentoml.get_current_service()`)
    once its models are loaded; ModelNotReady (503) before, and after shutdown begins.
    The function is imported once: `bentoml.<name>` resolves lazily, about 14 µs a time."""
    try:
        server = get_current_service().server
    except BentoMLException:
        server = None
    if server is None:
        raise ModelNotReady("models are still loading")
    return server


def is_ready() -> bool:
    try:
        return get_current_service().server is not None
    except BentoMLException:
        return False


def openapi_document() -> dict[str, Any]:
    return build_openapi(current_server(), ROUTES)


ADMIN_KEYS = load_admin_keys(SETTINGS)
EDGE = Edge(
    load_api_keys(SETTINGS),
    ConcurrencyGate(SETTINGS.max_concurrent_requests),
    SETTINGS.access_log,
    admin_keys=ADMIN_KEYS,
)
# A server with admin keys audits every change with a fingerprint of the key, keyed by a
# secret that every worker reads (made by `bentoml serve` before it starts the workers).
FINGERPRINTS = load_fingerprints(SETTINGS) if ADMIN_KEYS.enabled else None
ROLLOUT = Rollout(current_server, SETTINGS, ROUTING_FILE, WORKER_STATUS, FINGERPRINTS)
JSON_API = JsonApi(current_server, openapi_document)
OIP_REST = OipRestApi(current_server, is_ready)
ADMIN_API = AdminApi(ROLLOUT, SETTINGS.max_push_bytes, SETTINGS.push_timeout_s)
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
    serve_http_with(header_protocol(SETTINGS.header_timeout_s, SETTINGS.access_log))
    return FrontDoor(
        bentoml_app,
        ROUTES,
        EDGE,
        SETTINGS.max_body_bytes,
        SETTINGS.max_requests_per_connection,
        body_timeout_s=SETTINGS.body_timeout_s,
        body_idle_timeout_s=SETTINGS.body_idle_timeout_s,
    )


@bentoml.service(name=SERVICE_NAME, service_class=front_door_service(front_door, error_responses()))
@declares_models(SETTINGS.tags())
class TabularModelServer:
    """Serves the scikit-learn models that configuration.yaml names, by tag."""

    def __init__(self) -> None:
        configure_logging()
        TRACING.configure(SETTINGS.tracing, SETTINGS.tracing_sample_ratio, WORKER_STATUS.replica)
        WORKER_STATUS.starting(worker_name())
        # Models run in the core's model thread, limited to one OpenMP/BLAS thread there.
        routing = ROUTING_FILE.serving(Routing.initial(SETTINGS))
        # The worker's core; None once shutdown begins, when the APIs answer 503.
        server = ModelServer.from_settings(SETTINGS, routing=routing)
        self.server: ModelServer | None = server
        self.grpc_server: grpc.aio.Server | None = None
        self.follower: asyncio.Task[None] | None = None
        log.info("serving %s at routing revision %d", ", ".join(sorted(server.models)), routing.revision)
        # Everything loaded so far (BentoML, scikit-learn, the models) lives as long as
        # the worker. Frozen, the garbage collector stops walking it, and a full
        # collection no longer stalls requests (docs/performance.md).
        gc.collect()
        gc.freeze()

    def core(self) -> ModelServer:
        """This instance's core (ModelNotReady once shutdown began)."""
        if self.server is None:
            raise ModelNotReady("the service is shutting down")
        return self.server

    def __is_ready__(self) -> bool:
        """BentoML's /readyz asks this (a documented hook since BentoML 1.4.30)."""
        return self.server is not None

    def __metrics__(self, content: str) -> str:
        """BentoML's /metrics text at each scrape, with the drift and live quality gauges
        appended, computed now from every worker's counts and outcomes (drift_report.py,
        outcome_report.py in model_server/monitoring). A documented hook since BentoML
        1.4.30; tests/test_monitoring.py reads the gauges through a real scrape."""
        server = self.core()
        views = [server.outcome_view(name) for name in server.model_names()]
        return content + drift_report.metrics_text(server.drift_view()) + outcome_report.metrics_text(views)

    @bentoml.api(route="/predict", input_spec=PredictRequest)
    async def predict(
        self,
        model: str,
        instances: list[Record | Row],
        version: str | None = None,
        explain: bool = False,
        key: str | None = None,
    ) -> PredictionAnswer:
        """Predict with a served model: records keyed by feature name, or rows in training order.

        Answers what POST /v1/models/{model}/predict answers: the tag that answered, the
        predictions and, for classifiers, the probabilities of each class. With `explain`,
        each feature's contribution to each answer (docs/explanations.md). `key` is the
        caller key that keeps a caller on one tag of an A/B split (over HTTP, the
        X-Request-Key header does the same). People can try every model at [/ui](/ui).
        """
        fields = {"model": model, "instances": instances, "version": version, "explain": explain, "key": key}
        result = await self.core().infer(json_api.named_call(fields))
        return PredictionAnswer.model_validate(json_api.prediction_body(result))

    @bentoml.on_startup
    async def follow_routing(self) -> None:
        """Apply every change of the routing file, made by any worker or a ConfigMap."""
        self.follower = asyncio.get_running_loop().create_task(follow(self.core(), ROUTING_FILE, WORKER_STATUS))

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        """Start the OIP gRPC server in this worker's event loop (the port is shared)."""
        if SETTINGS.grpc_port == 0:
            return
        from model_server.transports.oip_grpc import build_server

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
        server, self.server = self.server, None
        if server is not None:
            await server.drain_shadows()
            server.close()
        ACCESS_LOG.flush()
        TRACING.shutdown()
