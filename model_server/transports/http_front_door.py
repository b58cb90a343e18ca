"""The HTTP front door: an ASGI app in front of BentoML's, which dispatches every HTTP
request through one route table and the edge.

BentoML wraps each request in its metrics, OpenTelemetry, access-log, timeout and
context middleware; on a one-row request that costs more CPU than the model. The
front door sits outside that stack (bentoml_hooks.py puts it there): routes with a
handler (/v1, /v2, the `@bentoml.api` route /predict) are answered here, without any
framework in between; routes without one (health probes, /metrics, BentoML's page)
are passed to BentoML's app. Both go through the edge (API key, gate, request id,
errors, access log). An unknown path is a 404, a known path with another method a 405.

A slow client must not hold capacity: a body is read in full, within `body_timeout_s`
and `body_idle_timeout_s`, before the request enters the concurrency gate, and the
request's headers must arrive within `header_timeout_s` (`HeaderDeadlineProtocol`,
uvicorn's HTTP protocol with that deadline added). That protocol also sends a response's
head and body in one write (`CoalescingTransport`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from model_server.errors import (
    ClientDisconnected,
    InternalError,
    InvalidInput,
    ModelServerError,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedContentEncoding,
    UnsupportedMediaType,
    error_body,
    shorten,
)
from model_server.json_codec import encode_json
from model_server.monitoring.logs import log_access
from model_server.monitoring.tracing import TRACING
from model_server.transports.edge import Call, Edge, Outcome, request_id
from model_server.transports.route_table import JSON_TYPE, Answer, Request, Route, RouteTable

log = logging.getLogger(__name__)
ASGIApp = Any
CONNECTION_CLOSE = (b"connection", b"close")

# After refusing a body (413, or any answer given before the body was read), the rest
# of it is read and dropped, up to these bounds, before answering: a client that sends
# its whole body before reading the answer (urllib, requests) would otherwise find the
# connection reset and never see the answer. nginx's "lingering close" does the same.
DRAIN_MAX_BYTES = 64 * 1024 * 1024
DRAIN_MAX_SECONDS = 10.0
DRAIN_IDLE_SECONDS = 1.0


class FrontDoor:
    """An ASGI app: every HTTP request through the route table and the edge."""

    def __init__(
        self,
        bentoml_app: ASGIApp,
        routes: RouteTable,
        edge: Edge,
        max_body_bytes: int,
        max_requests_per_connection: int = 0,
        body_timeout_s: float = 10.0,
        body_idle_timeout_s: float = 2.0,
    ) -> None:
        self.bentoml_app = bentoml_app
        self.routes = routes
        self.edge = edge
        self.body_limits = BodyLimits(max_body_bytes, body_timeout_s, body_idle_timeout_s)
        self.connections = ConnectionRecycler(max_requests_per_connection)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan (BentoML starts the service) and websockets
            await self.bentoml_app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers = scope["headers"]
        wanted = _wanted_headers(headers)
        body = RequestBody(wanted, receive, self.body_limits)
        try:
            matched = self.routes.match(method, path)
            if matched is None:
                raise NotFound(f"no route for {method} {path}; see /v1/openapi.json")
            route, params = matched
        except ModelServerError as refusal:
            route, params = _refusal(refusal), {}
        call = Call(
            transport="http",
            target=f"{method} {path}",
            credentials=wanted.get(b"authorization"),
            presented_id=wanted.get(b"x-request-id"),
            access=route.access,
            traceparent=wanted.get(b"traceparent") if TRACING.on else None,
        )
        if route.handler is None:
            forwarded = Forwarded(self.bentoml_app, scope, receive, send)
            outcome: Outcome[Any] = await self.edge.run(call, forwarded)
            if outcome.error is not None and not forwarded.started:
                await self._respond(scope, send, outcome, body, wanted)
            return
        handler = route.handler
        content = b""

        async def read_body() -> None:
            # Before the gate: a slow body waits without holding a concurrency slot.
            nonlocal content
            if route.body:
                _check_media_type(wanted.get(b"content-type"), route.body)
                _check_encoding(wanted.get(b"content-encoding"))
                content = await body.read(route.max_body, route.body_timeout)

        async def answer(request_id: str) -> Answer:
            return await handler(Request(params, headers, content, request_id))

        await self._respond(scope, send, await self.edge.run(call, answer, read_body), body, wanted)

    async def _respond(
        self, scope: dict[str, Any], send: Any, outcome: Outcome[Answer], body: RequestBody, wanted: dict[bytes, str]
    ) -> None:
        request_id = outcome.request_id.encode()
        if outcome.error is None:
            assert outcome.result is not None
            answer = outcome.result
            status, payload = answer.status, answer.body
            headers = [(b"content-type", answer.content_type), *answer.headers]
            if answer.tag is not None:
                headers.append((b"x-model-tag", answer.tag.encode()))
            if answer.revision is not None:
                headers.append((b"x-routing-revision", str(answer.revision).encode()))
        else:
            status, payload = outcome.error.status, encode_json(error_body(outcome.error, outcome.request_id))
            headers = [(b"content-type", JSON_TYPE), *outcome.error.http_headers()]
        headers += [(b"content-length", str(len(payload)).encode()), (b"x-request-id", request_id)]
        if not body.complete or isinstance(outcome.error, PayloadTooLarge):
            await body.discard()
            headers.append(CONNECTION_CLOSE)
        elif self.connections.should_close(scope, wanted.get(b"connection")):
            headers.append(CONNECTION_CLOSE)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


class Forwarded:
    """A route answered by BentoML's app; the response gets the request id on its way out."""

    def __init__(self, app: ASGIApp, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.app, self.scope, self.receive, self.send = app, scope, receive, send
        self.started = False
        self.status = 500

    async def __call__(self, request_id: str) -> Forwarded:
        rid = (b"x-request-id", request_id.encode())

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.started, self.status = True, message["status"]
                message = {**message, "headers": [*message.get("headers", []), rid]}
            await self.send(message)

        await self.app(self.scope, self.receive, send_with_id)
        return self


class BodyLimits:
    """How large a request body may be and how long it may take to arrive, for one worker;
    and the one watch that ends the reads that are late.

    Every `CHECK_S` seconds, while some body is being read, one check cancels the reads
    past their time (RequestBody.read turns that into a 408), so a limit is met within
    `CHECK_S`. A timer per request (asyncio.timeout) would be more exact, but reading a
    small body took about 23 µs with one against 3 µs without (uvloop, measured here),
    a visible share of a request's CPU; with the watch it takes about 4.5 µs.
    """

    CHECK_S = 0.25

    def __init__(self, max_bytes: int, timeout_s: float, idle_timeout_s: float) -> None:
        self.max_bytes, self.timeout_s, self.idle_timeout_s = max_bytes, timeout_s, idle_timeout_s
        self._reading: set[RequestBody] = set()
        self._watch: asyncio.Task[None] | None = None

    def watch(self, body: RequestBody) -> None:
        self._reading.add(body)
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._check())

    def unwatch(self, body: RequestBody) -> None:
        self._reading.discard(body)

    async def _check(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._reading:
                await asyncio.sleep(self.CHECK_S)
                now = loop.time()
                for body in list(self._reading):
                    body.end_if_late(now)
        finally:
            self._watch = None


class RequestBody:
    """The request body, read whole within limits; or dropped, within bounds, when refused."""

    def __init__(self, headers: dict[bytes, str], receive: Any, limits: BodyLimits) -> None:
        """`headers`: the request's headers that the front door reads (`_wanted_headers`)."""
        self._receive = receive
        self._limits = limits
        self._declared = headers.get(b"content-length")
        has_body = (self._declared not in (None, "0")) or b"transfer-encoding" in headers
        self._expects_continue = headers.get(b"expect", "").lower() == "100-continue"
        self.complete = not has_body
        self.abandoned = False  # timed out or disconnected: nothing more is read
        self._started = False
        self._reader: asyncio.Task[Any] | None = None
        self._deadline = self._pause_ends = 0.0
        self._timeout = (limits.timeout_s, "body_timeout_s")  # the time the body has, and its setting
        self._late: RequestTimeout | None = None

    async def read(
        self, max_body: tuple[int, str] | None = None, body_timeout: tuple[float, str] | None = None
    ) -> bytes:
        """The whole body; PayloadTooLarge as soon as it is known to exceed the limit (the
        route's own `max_body`, else max_body_bytes), RequestTimeout when it is late (the
        route's own `body_timeout`, else body_timeout_s; a pause always has
        body_idle_timeout_s), ClientDisconnected when the client went away."""
        limits = self._limits
        max_bytes, setting = max_body or (limits.max_bytes, "max_body_bytes")
        declared = self._declared
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise PayloadTooLarge(f"{declared} bytes", max_bytes, setting)
        if self.complete:
            return b""
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        self._reader = asyncio.current_task()
        if body_timeout is not None:
            self._timeout = body_timeout
        self._deadline = loop.time() + self._timeout[0]
        self._pause_ends = loop.time() + limits.idle_timeout_s
        limits.watch(self)
        try:
            while not self.complete:
                message = await self._next()
                self._pause_ends = loop.time() + limits.idle_timeout_s
                if message["type"] == "http.disconnect":
                    # A truncated body is never passed on as if it were whole.
                    self.abandoned = True
                    raise ClientDisconnected()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"more than {max_bytes} bytes", max_bytes, setting)
                chunks.append(chunk)
        except asyncio.CancelledError:
            if self._late is None or self._reader is None:
                raise  # cancelled by someone else (shutdown)
            self._reader.uncancel()
            self.abandoned = True
            raise self._late from None
        finally:
            limits.unwatch(self)
        return b"".join(chunks)

    def end_if_late(self, now: float) -> None:
        """Cancel the read when the body paused too long or is late in total (BodyLimits' watch)."""
        limits = self._limits
        if self._late is not None:
            return  # already cancelled once
        if self._pause_ends <= self._deadline and now >= self._pause_ends:
            self._late = RequestTimeout("body", "body_idle_timeout_s", limits.idle_timeout_s, idle=True)
        elif now >= self._deadline:
            seconds, setting = self._timeout
            self._late = RequestTimeout("body", setting, seconds)
        if self._late is not None and self._reader is not None:
            self._reader.cancel()

    async def discard(self) -> None:
        """Read and drop the rest of the body, within DRAIN_* bounds (the connection then closes)."""
        if self.complete or self.abandoned or (self._expects_continue and not self._started):
            return  # nothing more to read, or the client waits for 100 Continue before sending
        deadline = time.monotonic() + DRAIN_MAX_SECONDS
        dropped = 0
        while not self.complete and dropped < DRAIN_MAX_BYTES:
            remaining = min(DRAIN_IDLE_SECONDS, deadline - time.monotonic())
            if remaining <= 0:
                return
            try:
                message = await asyncio.wait_for(self._next(), remaining)
            except TimeoutError:
                return  # the client sends no more (a Content-Length that lies)
            dropped += len(message.get("body", b""))

    async def _next(self) -> dict[str, Any]:
        self._started = True
        message: dict[str, Any] = await self._receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.complete = True
        return message


class ConnectionRecycler:
    """Says when to close a keep-alive connection: after `limit` requests on it.

    BentoML's workers accept from one shared socket, and whichever is idle first takes
    every connection that is waiting, so a client that opens its pool at once can end
    up with all of it on one worker (one worker busy, the other idle). Closing a
    connection now and then makes the client reconnect, and the worker with spare time
    is the likelier to accept it; like nginx's `keepalive_requests`. Connections are
    told apart by the client's address and port.
    """

    MAX_TRACKED = 10_000  # beyond this many open connections, counting starts afresh

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[Any, int] = {}

    def should_close(self, scope: dict[str, Any], connection: str | None = None) -> bool:
        """`connection`: the request's Connection header."""
        client = scope.get("client")
        # Port 0: the address came from a proxy's X-Forwarded-For, so it names no connection.
        if not self.limit or not client or not client[1] or _asks_to_close(scope, connection):
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


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, closing a connection whose request headers come too late.

    uvicorn times out an idle connection only after a response (`timeout_keep_alive`):
    a connection that sends nothing, or never finishes a request's headers, stays open
    for good (measured with uvicorn 0.54: still open after 40 s), and no ASGI app sees
    it. Here the headers must arrive within `header_timeout_s` of the connection's
    opening or of the request's first byte; then a request begun gets a 408 with the
    JSON error body, and the connection closes. `header_protocol` sets the deadline.
    A timer runs only for a new connection and for a head that came in pieces: a
    request whose head arrives in one read (nearly all) arms none.
    """

    header_timeout_s = 10.0
    access_log_on = True  # the access_log setting

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # It stands for the transport everywhere uvicorn uses one (its own methods or the transport's).
        self.transport = cast(asyncio.Transport, CoalescingTransport(transport, self.loop))
        self._head_begun = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()  # a connection that never sends a request is closed too

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol takes the connection over: it gets the transport itself.
        if isinstance(self.transport, CoalescingTransport):
            self.transport.flush()
            self.transport = self.transport.unwrapped
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_begun and self._head_timer is None and not self.transport.is_closing():
            self._arm_head_timer()  # a request's head came in part: the rest must come in time

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_late)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_begun = False

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # a pipelined head behind a request still answering: after it
            return
        if self._head_begun:
            late = RequestTimeout("headers", "header_timeout_s", self.header_timeout_s)
            self._refuse(late, b"408 Request Timeout", time.perf_counter() - self.header_timeout_s)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes its parser refuses (an unknown method, two Content-Length
        headers, a bad chunk size, ...), called while the parser's error is being handled.

        Bytes that follow a whole request still being answered (or a request whose answer
        has begun) do not cut into that answer: it is sent, then the connection closes.
        Otherwise the answer is the one JSON error body naming the parser's reason, with a
        request id and an access log line, instead of uvicorn's plain text; then the
        connection closes. A parser callback that raised is a bug of ours: a logged 500."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and (cycle.response_started or not cycle.more_body):
            cycle.keep_alive = False
            self.flow.pause_reading()
            return
        refused = sys.exception()
        if isinstance(refused, httptools.HttpParserCallbackError):
            log.error("an HTTP parser callback failed", exc_info=refused.__context__ or refused)
            self._refuse(InternalError(), b"500 Internal Server Error", time.perf_counter())
        else:
            reason = str(refused or "") or msg.rstrip(".")
            error = InvalidInput.at(["request"], f"is not valid HTTP/1.1: {shorten(reason)}", "http")
            self._refuse(error, b"400 Bad Request", time.perf_counter())
        self.transport.close()

    def _refuse(self, error: ModelServerError, status_line: bytes, started: float) -> None:
        """Answer `error` on a connection that closes after it (no request for the app):
        the JSON error body, a request id, and the access log line (`started`: when the
        request began, on time.perf_counter's clock) unless the setting turns it off."""
        rid = request_id(None)
        payload = encode_json(error_body(error, rid))
        head = (
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nx-request-id: %s\r\nconnection: close\r\n\r\n"
            % (status_line, len(payload), rid.encode())
        )
        self.transport.write(head + payload)
        if self.access_log_on:
            log_access("http", rid, "-", error.status, None, started)


class CoalescingTransport:
    """A connection's transport that sends a response's head together with its body.

    uvicorn writes the head (status line and headers) when the app sends
    `http.response.start`, and the body when it sends `http.response.body`: two writes,
    so two system calls and two TCP segments for every answer, and a client that may wake
    up twice to read it. Here the first write of a turn of the event loop is held and goes
    out with the next one, in one write; if no other write comes, it goes out alone at the
    end of the turn (a streamed response whose first chunk comes later, the interim
    "100 Continue"). Order is kept, and a close sends what is held first. Everything but
    `write` and `close` is the transport's own.
    """

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        # None: nothing written this turn (the next write is held); b"": this turn's writes
        # go straight out; else the held bytes.
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        elif held:
            self._held = b""
            self._transport.write(held + data)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send what is held (at the end of the turn, or before closing)."""
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    @property
    def unwrapped(self) -> Any:
        return self._transport

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def header_protocol(header_timeout_s: float, access_log: bool = True) -> type[HeaderDeadlineProtocol]:
    """uvicorn's HTTP protocol with this header deadline, logging what it answers itself
    unless `access_log` is off (bentoml_hooks.serve_http_with)."""
    settings = {"header_timeout_s": header_timeout_s, "access_log_on": access_log}
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), settings)


def _refusal(error: ModelServerError) -> Route:
    """A route whose handler answers with `error` (an unknown path, a method not allowed)."""

    async def refuse(request: Request) -> Answer:
        raise error

    return Route("", "", "", refuse)


def _check_media_type(declared: str | None, accepted: tuple[str, ...]) -> None:
    """A body declared as anything the route does not read is refused; none is read as JSON."""
    if declared and declared.split(";")[0].strip().lower() not in accepted:
        raise UnsupportedMediaType(declared, accepted)


def _check_encoding(declared: str | None) -> None:
    """A body declared compressed (gzip, deflate, ...) is refused rather than read as sent:
    every coding listed (`declared` joins repeated headers with commas) must be identity."""
    if declared and any(coding.strip().lower() not in ("identity", "") for coding in declared.split(",")):
        raise UnsupportedContentEncoding(declared)


def _asks_to_close(scope: dict[str, Any], value: str | None) -> bool:
    """Whether the client itself ends the connection after this request (not worth counting)."""
    if value is not None:
        return "close" in value.lower()
    return scope.get("http_version") == "1.0"


# The request headers the front door and the edge read; found in one pass over the headers.
WANTED_HEADERS = frozenset(
    (
        b"authorization",
        b"x-request-id",
        b"content-type",
        b"content-encoding",
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"connection",
        b"traceparent",
    )
)


# Of those, the ones whose repeated headers make one list (RFC 9110, 5.3): their values are
# joined with commas, so that a second header cannot hide behind the first.
LIST_HEADERS = frozenset((b"content-encoding",))


def _wanted_headers(headers: list[tuple[bytes, bytes]]) -> dict[bytes, str]:
    """The first value of each header in WANTED_HEADERS that the request has, or for one
    of LIST_HEADERS all its values joined (names are lower case in ASGI)."""
    found: dict[bytes, str] = {}
    for name, value in headers:
        if name in WANTED_HEADERS:
            if name not in found:
                found[name] = value.decode("latin-1")
            elif name in LIST_HEADERS:
                found[name] += ", " + value.decode("latin-1")
    return found


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None
