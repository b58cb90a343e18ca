"""BentoML service: declares the model server's APIs and wires them to the core.

The APIs are thin adapters around `model_server.ModelServer`, which validates, routes
and batches. The JSON prediction API is an ASGI app mounted at /v1 rather than
`@bentoml.api` methods: it reads the raw body (BentoML's parsing keeps only the last of
duplicated keys) and skips BentoML's per-request serde and schema work (see README,
"Why a mounted API").
"""

from __future__ import annotations

import logging

import bentoml

from model_server import http_json, registry
from model_server.constants import SERVICE_NAME
from model_server.errors import ModelNotReady
from model_server.server import ModelServer
from model_server.settings import load_settings

log = logging.getLogger("model_server")


def _current_server() -> ModelServer:
    server = _state.get("server")
    if server is None:
        raise ModelNotReady("models are still loading")
    return server


_state: dict[str, ModelServer] = {}

# Read (not written) at import, so that `bentoml serve` stops before starting workers
# when the configuration is invalid or names a tag the model store lacks.
SETTINGS = load_settings()
registry.require(SETTINGS.tags())

# POST /v1/models/{name}/predict, GET /v1/models, GET /v1/models/{name}
json_api = http_json.build_app(_current_server)


@bentoml.asgi_app(json_api, path="/v1")
@bentoml.service(name=SERVICE_NAME)
class TabularModelServer:
    """Serves the scikit-learn models that configuration.yaml names, by tag."""

    def __init__(self) -> None:
        from threadpoolctl import threadpool_limits

        # One thread per worker for OpenMP/BLAS: the defaults oversubscribe small machines.
        threadpool_limits(limits=1)
        self.server = ModelServer.from_settings(SETTINGS)
        _state["server"] = self.server
        log.info("serving %s", ", ".join(sorted(self.server.models)))

    def __is_ready__(self) -> bool:
        return _state.get("server") is self.server

    @bentoml.on_shutdown
    def close(self) -> None:
        _state.pop("server", None)
        self.server.close()


# Declare every configured tag as a model of the service, so `bentoml build` packs them.
TabularModelServer.models.extend(  # type: ignore[attr-defined]  # a bentoml.Service once decorated
    bentoml.models.BentoModel(tag) for tag in SETTINGS.tags()
)
