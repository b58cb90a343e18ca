"""BentoML service: declares the model server's APIs and wires them to the core.

Three fronts, one core (`model_server.ModelServer` validates, routes and batches):
  /v1   JSON prediction API            (model_server/http_json.py)
  /v2   Open Inference Protocol, REST  (model_server/oip_rest.py)
  gRPC  Open Inference Protocol        (model_server/oip_grpc.py), started with each worker
The HTTP APIs are ASGI apps of ours rather than `@bentoml.api` methods: they read the
raw body (BentoML's parsing keeps only the last of duplicated keys), and a dispatcher
in front of BentoML's app hands them their paths before BentoML's per-request
middleware runs (see README, "Why our own HTTP apps").
"""

from __future__ import annotations

import gc
import logging

import bentoml
import grpc

from model_server import http_json, oip_rest, registry
from model_server.constants import SERVICE_NAME
from model_server.errors import ModelNotReady
from model_server.fast_path import service_class_with_fast_path
from model_server.guard import ACCESS_LOG, ConcurrencyGate, configure_logging, load_api_keys
from model_server.server import ModelServer
from model_server.settings import load_settings, load_tls

log = logging.getLogger("model_server")

# Read (not written) at import, so that `bentoml serve` stops before starting workers
# when the configuration is invalid, names a tag the model store lacks, or mixes tags
# with different input schemas under one name.
SETTINGS = load_settings()
registry.check_configured(SETTINGS)

# The worker's ModelServer once its models are loaded; the fronts answer 503 before.
_loaded: dict[str, ModelServer] = {}


def current_server() -> ModelServer:
    server = _loaded.get("server")
    if server is None:
        raise ModelNotReady("models are still loading")
    return server


# The HTTP fronts, dispatched ahead of BentoML's per-request middleware (fast_path.py).
HTTP_FRONTS = {"/v1": http_json.build_app(current_server), "/v2": oip_rest.build_app(current_server)}


# The same API keys and concurrency limit guard HTTP (here) and gRPC (start_grpc).
API_KEYS = load_api_keys(SETTINGS)
# BentoML's `ssl` block of this service turns TLS on for HTTP; gRPC follows the same block.
TLS = load_tls()
GATE = ConcurrencyGate(SETTINGS.max_concurrent_requests)
FRONT_DOOR = service_class_with_fast_path(
    HTTP_FRONTS,
    keys=API_KEYS,
    gate=GATE,
    max_body_bytes=SETTINGS.max_body_bytes,
    metrics_require_key=SETTINGS.metrics_require_key,
    access_log=SETTINGS.access_log,
    max_requests_per_connection=SETTINGS.max_requests_per_connection,
)


@bentoml.service(name=SERVICE_NAME, service_class=FRONT_DOOR)
class TabularModelServer:
    """Serves the scikit-learn models that configuration.yaml names, by tag."""

    def __init__(self) -> None:
        configure_logging()
        # Models run in the core's model thread, limited to one OpenMP/BLAS thread there.
        self.server = ModelServer.from_settings(SETTINGS)
        self.grpc_server: grpc.aio.Server | None = None
        _loaded["server"] = self.server
        log.info("serving %s", ", ".join(sorted(self.server.models)))
        # Everything loaded so far (BentoML, scikit-learn, the models) lives as long as
        # the worker. Frozen, the garbage collector stops walking it: a full collection
        # then takes about 3 ms instead of 130-150 ms, which was every p99 under load.
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return _loaded.get("server") is self.server

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        """Start the OIP gRPC server in this worker's event loop (the port is shared)."""
        if SETTINGS.grpc_port == 0:
            return
        from model_server.oip_grpc import build_server

        address = f"{SETTINGS.grpc_host}:{SETTINGS.grpc_port}"
        grpc_server = build_server(current_server, address, API_KEYS, GATE, SETTINGS, TLS)
        await grpc_server.start()
        self.grpc_server = grpc_server
        log.info("OIP gRPC listening on %s%s", address, " with TLS" if TLS else "")

    @bentoml.on_shutdown
    async def stop(self) -> None:
        """Drain in-flight gRPC calls and shadow comparisons, then release the models."""
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=10)
        _loaded.pop("server", None)
        await self.server.drain_shadows()
        self.server.close()
        ACCESS_LOG.flush()


# Declare every configured tag as a model of the service, so `bentoml build` packs them.
TabularModelServer.models.extend(  # type: ignore[attr-defined]  # a bentoml.Service once decorated
    bentoml.models.BentoModel(tag) for tag in SETTINGS.tags()
)
