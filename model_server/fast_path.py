"""The HTTP front door: route the prediction paths around BentoML's per-request
middleware, and apply this server's rules to every HTTP request.

BentoML wraps every request in its metrics, OpenTelemetry, access-log, timeout and
context middleware; on a one-row request that costs more CPU than the model. This
dispatcher sits outside that stack and hands `/v1/...` and `/v2/...` straight to this
server's own ASGI apps, after the API-key check, the concurrency limit and the body
size limit; it gives each request an id (X-Request-ID) and writes the access log.
Every other path (health, /metrics, docs) and the lifespan go to BentoML's app, behind
the same API-key check (health probes stay open).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import bentoml

from .errors import ModelServerError, PayloadTooLarge
from .guard import ApiKeys, ConcurrencyGate, log_access, request_id

ASGIApp = Any
log = logging.getLogger(__name__)
OPEN_PATHS = ("/livez", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")


class FastPathDispatcher:
    """An ASGI app: prefix-matched paths to our apps, the rest to BentoML's."""

    def __init__(
        self,
        fallback: ASGIApp,
        routes: dict[str, ASGIApp],
        keys: ApiKeys,
        gate: ConcurrencyGate,
        max_body_bytes: int,
        metrics_require_key: bool = False,
        access_log: bool = True,
    ) -> None:
        self.fallback = fallback
        self.routes = routes
        self.keys = keys
        self.gate = gate
        self.max_body_bytes = max_body_bytes
        self.open_paths = OPEN_PATHS if metrics_require_key else (*OPEN_PATHS, "/metrics")
        self.access_log = access_log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        path: str = scope["path"]
        if (
            self.keys.enabled
            and path not in self.open_paths
            and not self.keys.accepts(_header(scope, b"authorization"))
        ):
            await _respond(send, 401, {"error": "unauthorized"}, [(b"www-authenticate", b"Bearer")])
            return
        for prefix, app in self.routes.items():
            if path == prefix or path.startswith(prefix + "/"):
                await self._serve(app, prefix, scope, receive, send)
                return
        await self.fallback(scope, receive, send)

    async def _serve(self, app: ASGIApp, prefix: str, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        rid = request_id(_header(scope, b"x-request-id"))
        outcome: dict[str, Any] = {"status": 500, "tag": None}
        rid_header = (b"x-request-id", rid.encode())

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                outcome["status"], outcome["started"] = message["status"], True
                headers = list(message.get("headers", []))
                outcome["tag"] = next((v.decode() for k, v in headers if k == b"x-model-tag"), None)
                message = {**message, "headers": [*headers, rid_header]}
            await send(message)

        if not self.gate.try_enter():
            await _respond(
                send_with_id,
                503,
                {"error": f"the server is at its limit of {self.gate.limit} requests in flight; retry shortly"},
                [(b"retry-after", b"1")],
            )
        else:
            try:
                body = await _read_body(scope, receive, self.max_body_bytes)
                replay = _replay(body)
                path = scope["path"] if scope["path"] != prefix else prefix + "/"  # GET /v2 without a redirect
                state = {**scope.get("state", {}), "request_id": rid}
                child = {**scope, "path": path, "root_path": scope.get("root_path", "") + prefix, "state": state}
                await app(child, replay, send_with_id)
            except ModelServerError as exc:
                await _respond(send_with_id, exc.status, exc.body())
            except Exception:
                # A bug of ours must still answer in the documented shape, with the id to quote.
                log.exception("request %s: %s %s failed", rid, scope["method"], scope["path"])
                if not outcome.get("started"):
                    failure = {"error": "internal error; see the server log", "detail": [], "request_id": rid}
                    await _respond(send_with_id, 500, failure)
            finally:
                self.gate.leave()
        if self.access_log:
            log_access("http", rid, f"{scope['method']} {scope['path']}", outcome["status"], outcome["tag"], started)


def service_class_with_fast_path(routes: dict[str, ASGIApp], **rules: Any) -> type[bentoml.Service[Any]]:
    """A `bentoml.Service` subclass whose ASGI app puts the dispatcher in front."""

    class FastPathService(bentoml.Service):  # type: ignore[type-arg]
        def to_asgi(self, is_main: bool = True) -> ASGIApp:
            return FastPathDispatcher(super().to_asgi(is_main=is_main), routes, **rules)

    return FastPathService


async def _read_body(scope: dict[str, Any], receive: Any, limit: int) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it is known to exceed `limit`."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(f"{declared} bytes", limit)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(f"more than {limit} bytes", limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _too_large(size: str, limit: int) -> PayloadTooLarge:
    message = f"the body has {size}; at most {limit} bytes are allowed (max_body_bytes)"
    return PayloadTooLarge(message, [{"loc": ["body"], "msg": message, "type": "too_large"}])


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _respond(send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
