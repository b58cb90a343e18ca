"""Route the prediction paths around BentoML's per-request middleware.

BentoML wraps every request in its metrics, OpenTelemetry, access-log, timeout and
context middleware; on a one-row request that costs more CPU than the model. This
dispatcher sits outside that stack and hands `/v1/...` and `/v2/...` straight to this
server's own ASGI apps (which count, time and label their requests themselves); every
other path (health, /metrics, docs) and the lifespan go to BentoML's app unchanged.
"""

from __future__ import annotations

from typing import Any

import bentoml

ASGIApp = Any


class FastPathDispatcher:
    """An ASGI app: prefix-matched paths to our apps, the rest to BentoML's."""

    def __init__(self, fallback: ASGIApp, routes: dict[str, ASGIApp]) -> None:
        self.fallback = fallback
        self.routes = routes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            for prefix, app in self.routes.items():
                if path == prefix or path.startswith(prefix + "/"):
                    if path == prefix:  # GET /v2 is OIP server metadata, served without a redirect
                        path = prefix + "/"
                    await app({**scope, "path": path, "root_path": scope.get("root_path", "") + prefix}, receive, send)
                    return
        await self.fallback(scope, receive, send)


def service_class_with_fast_path(routes: dict[str, ASGIApp]) -> type[bentoml.Service[Any]]:
    """A `bentoml.Service` subclass whose ASGI app puts the dispatcher in front."""

    class FastPathService(bentoml.Service):  # type: ignore[type-arg]
        def to_asgi(self, is_main: bool = True) -> ASGIApp:
            return FastPathDispatcher(super().to_asgi(is_main=is_main), routes)

    return FastPathService
