"""Every BentoML hook this project relies on, in one place.

Documented in BentoML's guides, and used as they describe:
  - `@bentoml.service`, `@bentoml.api`, `@bentoml.on_startup`, `@bentoml.on_shutdown`;
  - `bentoml.models.BentoModel` attributes at class scope declare the models that
    `bentoml build` packs (`declares_models` sets one per configured tag);
  - BENTOML_CONFIG with a `services.<service name>` block, whose `ssl` block turns on TLS;
  - `bentoml.get_current_service()` and `bentoml.server_context` (service.py, rollout);
  - `/readyz` asks the service instance's `__is_ready__()`, and each scrape of `/metrics`
    passes BentoML's text to `__metrics__(content)` and serves what it returns (both
    documented since BentoML 1.4.30; service.py appends the drift gauges).

Not documented, so each is pinned by a contract test in tests/test_bentoml_hooks.py that
observes the behaviour (a real `bentoml serve` where it happens in a worker) and fails
loudly when a BentoML upgrade changes it:
  1. `bentoml.service(service_class=...)` makes the service an instance of our
     subclass of `bentoml.Service`;
  2. each worker builds its ASGI app by calling `Service.to_asgi()`; our subclass
     wraps that app in the front door, which therefore sees every request first;
  3. the paths BentoML's app answers are those of `bentoml_routes()` (the front door
     passes them to it, and the OpenAPI document lists them);
  4. BentoML keeps unknown keys under `services.<service name>` (this server's own
     `model_server` block) and the `ssl` block in its configuration;
  5. in a worker, BentoML has set PROMETHEUS_MULTIPROC_DIR before the service's
     `__init__` runs, so the metrics created there reach `/metrics` (metrics.py);
  6. each worker is started with `--fd N`, the HTTP socket it shares; its address is
     where gRPC listens by default (`http_host`);
  7. `/docs.json` serves the service's `openapi_spec` property, in which each
     `@bentoml.api` route is `paths[route].post`: a dict with a `requestBody` dict and
     a `responses` dict keyed by int status. BentoML declares the body optional and its
     own error body (`detail` a string); our subclass declares what the front door does
     instead: the body is required, and errors have the one error body (openapi.py's
     `error_responses`). Pinned by tests/test_bentoml_hooks.py and, on a real server,
     by schemathesis with every check in tests/test_fuzz.py;
  8. each worker runs uvicorn with its default HTTP protocol (`http="auto"`), which
     uvicorn looks up in `uvicorn.config.HTTP_PROTOCOLS` when it starts, after the
     worker has built its app (hook 2); `serve_http_with` points that entry at the
     front door's protocol, which adds a deadline for request headers (pinned by
     tests/test_operations.py, which sees a connection with unfinished headers closed);
  9. BentoML's model store is the object `BentoMLContainer.model_store` provides, which
     `bentoml.models.get/list/import_model` use; `use_model_store` replaces it with one on
     a fleet's shared store (pinned by tests/test_fleet.py: replicas serve a tag that
     only the shared store holds); that object keeps its folder as `_path`, and a tag
     NAME:VERSION lives in NAME/VERSION/ there with its facts in model.yaml: the registry
     (models/registry.py `_store_path`, below this module's layer) reads a tag's facts
     once per change of that file (pinned by tests/test_bentoml_hooks.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import bentoml
import uvicorn.config

from model_server.transports.edge import DOCUMENT, PROBE, scrape
from model_server.transports.route_table import Route, RouteTable

ASGIApp = Any
C = TypeVar("C", bound=type)

# The HTTP protocol this worker's uvicorn speaks, once `serve_http_with` has chosen it.
HTTP_PROTOCOL: type[asyncio.Protocol] | None = None


def bentoml_routes(metrics_need_key: bool) -> RouteTable:
    """The routes BentoML's own app answers (hook 3); the front door forwards them to it."""
    return RouteTable(
        [
            Route("GET", "/", "BentoML's page: the service's APIs.", access=DOCUMENT),
            Route("GET", "/docs.json", "BentoML's OpenAPI document of the @bentoml.api methods.", access=DOCUMENT),
            Route(
                "GET", "/schema.json", "BentoML's schema of the service, read by BentoML's clients.", access=DOCUMENT
            ),
            Route("GET", "/livez", "Liveness (BentoML).", access=PROBE),
            Route("GET", "/healthz", "Liveness (BentoML).", access=PROBE),
            Route("GET", "/readyz", "Readiness: 200 once the models are loaded.", access=PROBE),
            Route("GET", "/metrics", "Prometheus metrics.", access=scrape(metrics_need_key)),
            Route("GET", "/static_content", "Assets of BentoML's page.", access=DOCUMENT, listed=False, prefix=True),
        ]
    )


def front_door_service(
    build_front_door: Callable[[ASGIApp], ASGIApp], error_responses: dict[str, Any] | None = None
) -> type[bentoml.Service[Any]]:
    """A `bentoml.Service` subclass (hook 1) whose ASGI app (hook 2) is
    `build_front_door(BentoML's app)`; with `error_responses` (status: OpenAPI response),
    its document at /docs.json declares a required body and those error answers for
    every `@bentoml.api` route (hook 7)."""

    class FrontDoorService(bentoml.Service):  # type: ignore[type-arg]
        def to_asgi(self, is_main: bool = True) -> ASGIApp:
            return build_front_door(super().to_asgi(is_main=is_main))

        @property
        def openapi_spec(self) -> Any:
            spec = super().openapi_spec
            if error_responses is not None:
                for api in self.apis.values():
                    operation = spec.paths[api.route].post
                    operation["requestBody"]["required"] = True
                    responses = operation["responses"]
                    for status in [s for s in responses if int(s) >= 400]:
                        del responses[status]
                    responses.update({int(status): response for status, response in error_responses.items()})
            return spec

    return FrontDoorService


def serve_http_with(protocol: type[asyncio.Protocol]) -> None:
    """Make this worker's uvicorn speak HTTP with `protocol` (hook 8); called while the
    worker builds its app, before uvicorn starts."""
    global HTTP_PROTOCOL
    HTTP_PROTOCOL = protocol
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:HTTP_PROTOCOL"


def use_model_store(path: Path, seed_tags: Iterable[str] = ()) -> None:
    """Make BentoML read and write models in `path` (a fleet's shared store) in this
    process, instead of BENTOML_HOME's store or a Bento's own models (hook 9). First, each
    of `seed_tags` that `path` lacks is copied there from the store in use (the image's
    Bento), so that a fleet's first replica fills an empty volume with the tags that
    configuration.yaml names; each in one rename, so that a replica never sees half a tag."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    path.mkdir(parents=True, exist_ok=True)
    source = Path(getattr(BentoMLContainer.model_store.get(), "_path", path))
    for tag in seed_tags:
        name, _, version = tag.partition(":")
        target, origin = path / name / version, source / name / version
        if target.exists() or not origin.is_dir() or source.resolve() == path.resolve():
            continue
        staging = Path(tempfile.mkdtemp(prefix="seed-", dir=_staging(path)))
        try:
            shutil.copytree(origin, staging / version)
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # another replica seeded it meanwhile
                os.rename(staging / version, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    BentoMLContainer.model_store.set(ModelStore(str(path)))


def _staging(store: Path) -> Path:
    staging = store.parent / ".incoming"  # as model_server/rollout/store_push.py: one filesystem
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def declares_models(tags: Iterable[str]) -> Callable[[C], C]:
    """A class decorator: one `BentoModel` class attribute per tag, as BentoML's guides
    declare models (`model = BentoModel("iris:v1")`), so `bentoml build` packs them."""

    def declare(cls: C) -> C:
        for tag in tags:
            attribute = "model_" + "".join(c if c.isalnum() else "_" for c in tag)
            setattr(cls, attribute, bentoml.models.BentoModel(tag))
        return cls

    return declare


def http_host(argv: list[str] | None = None) -> str | None:
    """The address this worker's HTTP socket is bound to (hook 6), or None outside a worker."""
    args = sys.argv if argv is None else argv
    if "--fd" not in args:
        return None
    try:
        fd = int(args[args.index("--fd") + 1])
        with socket.socket(fileno=os.dup(fd)) as shared:
            return str(shared.getsockname()[0])
    except (IndexError, ValueError, OSError):
        return None
