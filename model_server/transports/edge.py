"""The edge: what happens to every request on every transport before and after the core.

`Edge.run` is the one guarded call. HTTP (http_front_door.py) and gRPC (oip_grpc.py)
each describe a request as a `Call` and hand over a handler; the edge then, in order:
  1. gives the request its id (the caller's X-Request-ID when it looks like one),
  2. checks the API key (unless the route is open, like the health probes), or for an
     admin route the admin key (403 while no admin key is configured),
  3. reads what the request still has to receive (`before_gate`: the HTTP body, within
     its size and time limits), so a slow client never holds a slot,
  4. enters the concurrency gate (refused at once with 503 beyond the limit) and runs
     the handler,
  5. maps any error to a `ModelServerError` (a bug of ours becomes a logged 500),
  6. writes the access log line.
The transports only convert their wire format to a `Call` and the `Outcome` back.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from model_server.config.auth import ApiKeys, without_scheme
from model_server.errors import AdminDisabled, InternalError, ModelServerError, Overloaded, Unauthorized
from model_server.monitoring.logs import log_access
from model_server.monitoring.tracing import TRACING

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Access:
    """Who may make a call and how the edge treats it: one policy, written once, that HTTP
    routes and gRPC methods both name."""

    key: str = "api"  # "none": answered without a key; "api": an API key; "admin": an admin key
    gated: bool = True  # counted against max_concurrent_requests
    quiet: bool = False  # no access log line (probes and scrapes)


# The policies in use. Admin calls are never gated: operators must get through at the limit.
PREDICTION = Access()  # prediction and model routes: an API key, gated, logged
PROBE = Access(key="none", gated=False, quiet=True)  # health and readiness
DOCUMENT = Access(gated=False)  # documents and BentoML's page: an API key, not gated
PUBLIC_FILE = Access(key="none", gated=False)  # the web page's own files
ADMIN = Access(key="admin", gated=False)  # the admin API and the model repository calls


def scrape(needs_key: bool) -> Access:
    """/metrics: quiet and never gated; a key only when the settings ask for one."""
    return Access(key="api" if needs_key else "none", gated=False, quiet=True)


@dataclass(slots=True)
class Call:
    """One request as the edge sees it, whatever the transport (made per request, never
    changed: slotted rather than frozen, which costs about four times as much to make)."""

    transport: str  # "http" or "grpc"
    target: str  # "POST /v1/models/iris/predict", "ModelInfer"
    credentials: str | None  # the Authorization header or metadata
    presented_id: str | None  # the caller's X-Request-ID
    access: Access = PREDICTION
    traceparent: str | None = None  # the caller's W3C trace context, read only while tracing is on


@dataclass(slots=True)
class Outcome(Generic[T]):
    """The handler's result, or the error to answer with; and the request's id."""

    request_id: str
    result: T | None = None
    error: ModelServerError | None = None

    @property
    def status(self) -> int:
        if self.error is not None:
            return self.error.status
        return int(getattr(self.result, "status", 200))


class ConcurrencyGate:
    """Counts requests in flight in this worker and refuses those beyond the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def try_enter(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1


class Edge:
    """API keys, the concurrency gate, request ids, error mapping and the access log."""

    def __init__(
        self, keys: ApiKeys, gate: ConcurrencyGate, access_log: bool = True, admin_keys: ApiKeys | None = None
    ) -> None:
        self.keys = keys
        self.gate = gate
        self.access_log = access_log
        self.admin_keys = admin_keys or ApiKeys([])

    async def run(
        self,
        call: Call,
        handler: Callable[[str], Awaitable[T]],
        before_gate: Callable[[], Awaitable[None]] | None = None,
    ) -> Outcome[T]:
        """Run `before_gate()` then `handler(request_id)` under the edge's rules; never raises."""
        started = time.perf_counter()
        outcome: Outcome[T] = Outcome(request_id(call.presented_id))
        trace = TRACING.begin(call.transport, call.target, call.traceparent, started) if TRACING.on else None
        try:
            if call.access.key == "admin":
                if not self.admin_keys.enabled:
                    raise AdminDisabled()
                if not self.admin_keys.accepts(call.credentials):
                    raise Unauthorized("admin key", without_scheme(call.credentials))
            elif call.access.key == "api" and not self.keys.accepts(call.credentials):
                raise Unauthorized(without_scheme=without_scheme(call.credentials))
            if before_gate is not None:
                await before_gate()
            if trace is not None:
                trace.handler_started = time.perf_counter()
            if call.access.gated:
                if not self.gate.try_enter():
                    raise Overloaded(self.gate.limit)
                try:
                    outcome.result = await handler(outcome.request_id)
                finally:
                    self.gate.leave()
            else:
                outcome.result = await handler(outcome.request_id)
        except ModelServerError as exc:
            outcome.error = exc
            if exc.status >= 500:
                log.error("request %s: %s failed: %s", outcome.request_id, call.target, exc.message)
        except Exception:
            log.exception("request %s: %s failed", outcome.request_id, call.target)
            outcome.error = InternalError()
        if trace is not None:
            TRACING.end(trace, outcome.request_id, outcome.status)
        if self.access_log and not call.access.quiet:
            tag = getattr(outcome.result, "tag", None)
            log_access(call.transport, outcome.request_id, call.target, outcome.status, tag, started)
        return outcome


def request_id(presented: str | None) -> str:
    """The caller's id when it looks like one (printable, at most 128 chars), else a new one.

    New ids are a random per-process prefix and a counter: unique across workers and
    restarts like a UUID, without a system call per request.
    """
    if presented and len(presented) <= 128 and presented.isprintable():
        return presented
    return f"{_ids.prefix}{next(_ids.counter):08x}"


class _RequestIds:
    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(1)


_ids = _RequestIds()
