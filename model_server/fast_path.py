"""The HTTP front door: route the prediction paths around BentoML's per-request
middleware, and apply this server's rules to every HTTP request.

BentoML wraps every request in its metrics, OpenTelemetry, access-log, timeout and
context middleware; on a one-row request that costs more CPU than the model. This
dispatcher sits outside that stack and hands `/v1/...` and `/v2/...` straight to this
server's own fronts, after the API-key check, the concurrency limit and the body
size limit; it gives each request an id (X-Request-ID) and writes the access log.
Every other path (health, /metrics, docs) and the lifespan go to BentoML's app, behind
the same API-key check (health probes stay open).

A front is an ASGI app; the prediction routes of a front are also "direct" routes
(`DirectRoutes`): plain coroutines from a parsed request to an answer, called
without any framework in between, because per-request framework work, not the
model, is what limits a server of small models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import bentoml

from .errors import MethodNotAllowed, ModelServerError, PayloadTooLarge
from .guard import ApiKeys, ConcurrencyGate, log_access, request_id
from .payloads import encode_json

ASGIApp = Any
log = logging.getLogger(__name__)
OPEN_PATHS = ("/livez", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")
JSON_TYPE = b"application/json"
CONNECTION_CLOSE = (b"connection", b"close")


class ConnectionRecycler:
    """Says when to close a keep-alive connection: after `limit` requests on it.

    BentoML's workers accept from one shared socket, and whichever is idle first takes
    every connection that is waiting, so a client that opens its pool at once can end
    up with all of it on one worker (seen here: one worker busy, the other idle, 40 %
    less throughput). Closing a connection now and then makes the client reconnect,
    and the worker with spare time is the likelier to accept it; like nginx's
    `keepalive_requests`. Connections are told apart by the client's address and port.
    """

    MAX_TRACKED = 10_000  # beyond this many open connections, counting starts afresh

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[Any, int] = {}

    def should_close(self, scope: dict[str, Any]) -> bool:
        client = scope.get("client")
        # Port 0: the address came from a proxy's X-Forwarded-For, so it names no connection.
        if not self.limit or not client or not client[1] or _asks_to_close(scope):
            return False
        key = tuple(client)
        count = self._counts.get(key, 0) + 1
        if count >= self.limit:
            self._counts.pop(key, None)
            return True
        if len(self._counts) >= self.MAX_TRACKED:
            self._counts.clear()
        self._counts[key] = count
        return False


@dataclass
class DirectRequest:
    """What a direct route sees: the path parameters, the headers and the whole body."""

    params: dict[str, str]
    headers: list[tuple[bytes, bytes]]
    body: bytes
    request_id: str

    def header(self, name: bytes) -> str | None:
        """The value of a header (name in lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None


@dataclass
class DirectAnswer:
    """A successful answer: the body, the tag that produced it, any further headers."""

    body: bytes
    tag: str | None = None
    content_type: bytes = JSON_TYPE
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


DirectHandler = Callable[[DirectRequest], Awaitable[DirectAnswer]]


class DirectRoutes:
    """Path templates such as `/models/{name}/predict` (one segment per parameter)."""

    def __init__(self, routes: list[tuple[str, str, DirectHandler]]) -> None:
        self._routes = [(method, template[1:].split("/"), handler) for method, template, handler in routes]

    def match(self, method: str, path: str) -> tuple[DirectHandler, dict[str, str]] | None:
        """The handler and parameters for `path`; a known path with another method is a 405.

        Exact: a trailing or doubled slash is no match (the app answers as it would)."""
        if not path.startswith("/"):
            return None
        segments = path[1:].split("/")
        allowed = []
        for route_method, template, handler in self._routes:
            params = _match_segments(template, segments)
            if params is None:
                continue
            if route_method == method:
                return handler, params
            allowed.append(route_method)
        if allowed:
            return _refuse_method(method, allowed), {}
        return None


class Front:
    """A front mounted under a prefix (/v1, /v2): an ASGI app for its read-only routes,
    and direct routes for its hot ones, which the dispatcher tries first."""

    def __init__(self, app: ASGIApp, direct: DirectRoutes) -> None:
        self.app = app
        self.direct = direct

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _asks_to_close(scope: dict[str, Any]) -> bool:
    """Whether the client itself ends the connection after this request (not worth counting)."""
    value = _header(scope, b"connection")
    if value is not None:
        return "close" in value.lower()
    return scope.get("http_version") == "1.0"


def _match_segments(template: list[str], segments: list[str]) -> dict[str, str] | None:
    if len(template) != len(segments):
        return None
    params = {}
    for part, segment in zip(template, segments, strict=True):
        if part.startswith("{"):
            if not segment:
                return None
            params[part[1:-1]] = segment
        elif part != segment:
            return None
    return params


def _refuse_method(method: str, allowed: list[str]) -> DirectHandler:
    async def refuse(request: DirectRequest) -> DirectAnswer:
        raise MethodNotAllowed(method, allowed)

    return refuse


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
        max_requests_per_connection: int = 0,
    ) -> None:
        self.fallback = fallback
        self.routes = routes
        self.keys = keys
        self.gate = gate
        self.max_body_bytes = max_body_bytes
        self.open_paths = OPEN_PATHS if metrics_require_key else (*OPEN_PATHS, "/metrics")
        self.access_log = access_log
        self.connections = ConnectionRecycler(max_requests_per_connection)

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
                if isinstance(app, Front):
                    matched = app.direct.match(scope["method"], path[len(prefix) :])
                    if matched is not None:
                        handler, params = matched
                        await self._serve_direct(handler, params, scope, receive, send)
                        return
                await self._serve(app, prefix, scope, receive, send)
                return
        await self.fallback(scope, receive, send)

    async def _serve_direct(
        self, handler: DirectHandler, params: dict[str, str], scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        """A direct route: the same rules as `_serve`, one response, no framework."""
        started = time.perf_counter()
        headers = scope["headers"]
        rid = request_id(_header(scope, b"x-request-id"))
        status, tag = 500, None
        if not self.gate.try_enter():
            status, body, extra = self._busy()
        else:
            try:
                request = DirectRequest(params, headers, await _read_body(scope, receive, self.max_body_bytes), rid)
                answer = await handler(request)
                status, tag, body = 200, answer.tag, answer.body
                extra = [(b"content-type", answer.content_type), *answer.headers]
                if tag is not None:
                    extra.append((b"x-model-tag", tag.encode()))
            except ModelServerError as exc:
                status, body, extra = exc.status, self._error_body(exc, rid, scope), [(b"content-type", JSON_TYPE)]
                if isinstance(exc, MethodNotAllowed):
                    extra.append((b"allow", ", ".join(exc.allowed).encode()))
            except Exception:
                log.exception("request %s: %s %s failed", rid, scope["method"], scope["path"])
                body = encode_json({"error": "internal error; see the server log", "detail": [], "request_id": rid})
                extra = [(b"content-type", JSON_TYPE)]
            finally:
                self.gate.leave()
        extra += [(b"content-length", str(len(body)).encode()), (b"x-request-id", rid.encode())]
        if self.connections.should_close(scope):
            extra.append(CONNECTION_CLOSE)
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": body})
        if self.access_log:
            log_access("http", rid, f"{scope['method']} {scope['path']}", status, tag, started)

    def _busy(self) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        text = f"the server is at its limit of {self.gate.limit} requests in flight; retry shortly"
        return 503, encode_json({"error": text}), [(b"content-type", JSON_TYPE), (b"retry-after", b"1")]

    @staticmethod
    def _error_body(exc: ModelServerError, rid: str, scope: dict[str, Any]) -> bytes:
        """The error body; a 5xx is logged and carries the request id to quote in a report."""
        body = exc.body()
        if exc.status >= 500:
            log.error("request %s: %s %s failed: %s", rid, scope["method"], scope["path"], exc.message)
            body["request_id"] = rid
        return encode_json(body)

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
                headers.append(rid_header)
                if self.connections.should_close(scope):
                    headers.append(CONNECTION_CLOSE)
                message = {**message, "headers": headers}
            await send(message)

        if not self.gate.try_enter():
            status, body, extra = self._busy()
            extra.append((b"content-length", str(len(body)).encode()))
            await send_with_id({"type": "http.response.start", "status": status, "headers": extra})
            await send_with_id({"type": "http.response.body", "body": body})
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
    payload = encode_json(body)
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
