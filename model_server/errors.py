"""One error hierarchy for every transport; each error knows its HTTP status.

`error_body` renders the one error body, `{"error": message, "detail": [...]}`, for
every HTTP route; `GRPC_CODES` maps the same statuses to gRPC codes in one table.
Messages are safe to show to callers: they never carry stack traces, and a value the
caller sent (a feature name, a category, a tensor name, a shape) is echoed at most
MAX_ECHO characters long: `echo` and `shorten` cut it, and `problem` cuts every name in
a `loc`, so an error answer stays small whatever the request held.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Details beyond this count are summarised, so error bodies stay small.
MAX_DETAILS = 20
# A value the caller sent is echoed up to this many characters, then cut with an ellipsis.
MAX_ECHO = 100
ELLIPSIS = "\u2026"

# The one table from statuses to gRPC status code names (grpc.StatusCode members).
GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "FAILED_PRECONDITION",
    499: "CANCELLED",
    503: "UNAVAILABLE",
}


class ModelServerError(Exception):
    """Base of every error a caller can receive."""

    status = 500

    def __init__(self, message: str, detail: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or []

    def http_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers the HTTP answer carries besides the body (Allow, Retry-After, ...)."""
        return []


class InvalidInput(ModelServerError):
    """The request does not match the model's input schema or the API's shape."""

    status = 400

    @classmethod
    def at(cls, loc: list[Any], msg: str, kind: str) -> InvalidInput:
        """One problem: where (`loc`), what is wrong (`msg`) and which rule (`kind`)."""
        return cls.from_problems([problem(loc, msg, kind)])

    @classmethod
    def from_problems(cls, problems: list[dict[str, Any]], total: int | None = None) -> InvalidInput:
        """The problems found (`total` of them when `problems` holds only the first)."""
        first = problems[0]
        where = format_location(first["loc"])
        found = max(total or 0, len(problems))
        more = f" (and {found - 1} more)" if found > 1 else ""
        error = cls(f"invalid input: {where}: {first['msg']}{more}", problems[:MAX_DETAILS])
        error.total = found
        return error

    total = 1  # problems found; `detail` holds the first MAX_DETAILS

    def relocated(self, where: Callable[[list[Any]], list[Any]]) -> InvalidInput:
        """The same problems, each `loc` as `where` gives it (a door naming its own fields)."""
        if not self.detail:
            return self
        return InvalidInput.from_problems([{**p, "loc": where(list(p["loc"]))} for p in self.detail], self.total)


class Unauthorized(ModelServerError):
    """API keys are on and the request has none, a wrong one, or one without `Bearer`."""

    status = 401

    def __init__(self, kind: str = "API key", without_scheme: bool = False) -> None:
        message = f"unauthorized: send 'Authorization: Bearer <key>' with a valid {kind}"
        if without_scheme:
            message += "; the Authorization header must start with 'Bearer ', a bare key is not accepted"
        super().__init__(message)

    def http_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"www-authenticate", b"Bearer")]


class AdminDisabled(ModelServerError):
    """An admin route, while no admin key is configured: never open by default."""

    status = 403

    def __init__(self) -> None:
        super().__init__(
            "the admin API is off: no admin key is configured (MODEL_SERVER_ADMIN_KEYS or admin_keys_file)"
        )


class RoutingReadOnly(ModelServerError):
    """An admin change while the routing file is managed outside the server."""

    status = 409

    def __init__(self, path: str) -> None:
        super().__init__(
            f"the routing of this server follows '{path}', which is managed outside it (routing_file_writable: "
            "false, such as a mounted ConfigMap); change that file instead, for example with "
            "`python -m model_server.admin --routing-file FILE ...`"
        )


class RoutingChanged(ModelServerError):
    """Another change of the same name was written while this one was being prepared."""

    status = 409

    def __init__(self, name: str) -> None:
        super().__init__(f"the routing of '{name}' changed while this change was prepared; read it again and retry")


class StoreConflict(ModelServerError):
    """A pushed model cannot be stored as it is: its tag is there already (and serves, or
    no force was given), or the server has no shared store to push to."""

    status = 409

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message, [problem(["body"], message, kind)])


class PromotionRefused(ModelServerError):
    """A guarded promotion (`if_not_worse`) whose candidate is worse, or not yet known not
    to be; the detail carries the verdict's figures."""

    status = 409

    def __init__(self, message: str, kind: str, verdict: dict[str, Any]) -> None:
        detail = {**problem(["if_not_worse"], message, kind), "verdict": verdict}
        super().__init__(f"promotion refused: {message}", [detail])


class RoutingUnavailable(ModelServerError):
    """The routing file cannot be read or written; the message says why."""

    status = 503


class ModelLoadFailed(ModelServerError):
    """A stored tag could not be loaded or failed its warm-up call; nothing was changed."""

    status = 422


class NotExplainable(ModelServerError):
    """An explanation was asked of a model whose pipeline has no exact explanation here."""

    status = 422

    def __init__(self, tag: str, reason: str) -> None:
        super().__init__(f"model '{tag}' cannot be explained: {reason}", [problem(["explain"], reason, "explain")])
        self.reason = reason


class NoDriftReference(ModelServerError):
    """A tag has no drift reference (stored before references existed), or counting is off."""

    status = 409


class NotFound(ModelServerError):
    """No route has this path."""

    status = 404


class ModelNotFound(NotFound):
    """No served model has this name, or the model has no such version."""

    def __init__(self, name: str, version: str | None = None) -> None:
        if version is None:
            super().__init__(f"model {echo(name)} is not served here")
        else:
            super().__init__(f"model {echo(name)} has no served version {echo(version)}")


class MethodNotAllowed(ModelServerError):
    """The path exists, but not for this HTTP method."""

    status = 405

    def __init__(self, method: str, allowed: list[str]) -> None:
        super().__init__(f"method {method} is not allowed here; use {' or '.join(allowed)}")
        self.allowed = allowed

    def http_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"allow", ", ".join(self.allowed).encode())]


class PayloadTooLarge(ModelServerError):
    """The request body exceeds the configured size limit."""

    status = 413

    def __init__(self, size: str, limit: int, setting: str = "max_body_bytes") -> None:
        message = f"the body has {size}; at most {limit} bytes are allowed ({setting})"
        super().__init__(message, [problem(["body"], message, "too_large")])


class RequestTimeout(ModelServerError):
    """The request's headers or body did not arrive within the configured time."""

    status = 408

    def __init__(self, part: str, setting: str, seconds: float, idle: bool = False) -> None:
        late = f"paused for more than {seconds:g} s" if idle else f"did not arrive in full within {seconds:g} s"
        message = f"the request's {part} {late} ({setting}); send the whole request without pauses"
        super().__init__(message, [problem([part], message, "timeout")])


class ClientDisconnected(ModelServerError):
    """The client closed the connection before its body was complete; nothing is answered.

    499 is nginx's status for a request the client closed; it shows in the access log only.
    """

    status = 499

    def __init__(self) -> None:
        super().__init__("the client closed the connection before its body was complete")


class UnsupportedMediaType(ModelServerError):
    """The body is declared as a media type the route does not read."""

    status = 415

    def __init__(self, declared: str, accepted: tuple[str, ...]) -> None:
        super().__init__(f"Content-Type {echo(declared)} is not supported here; send {' or '.join(accepted)}")


class UnsupportedContentEncoding(ModelServerError):
    """The body is declared compressed: the server reads bodies as sent, uncompressed."""

    status = 415

    def __init__(self, declared: str) -> None:
        super().__init__(f"Content-Encoding {echo(declared)} is not supported here; send the body uncompressed")


class ModelNotReady(ModelServerError):
    """The models are still loading."""

    status = 503


class ExplanationsBusy(ModelServerError):
    """Every explanation slot of this worker is taken; plain predictions still answer."""

    status = 503

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this worker is already explaining {limit} requests (max_concurrent_explanations); "
            "retry shortly, or ask without explain"
        )

    def http_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


class Overloaded(ModelServerError):
    """Too many requests in flight in this worker; refused at once."""

    status = 503

    def __init__(self, limit: int) -> None:
        super().__init__(f"the server is at its limit of {limit} requests in flight; retry shortly")

    def http_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


class PredictionFailed(ModelServerError):
    """The model raised while predicting; the cause is logged, not returned."""

    status = 500


class InternalError(ModelServerError):
    """A bug of ours; the traceback is logged with the request id, never returned."""

    status = 500

    def __init__(self) -> None:
        super().__init__("internal error; see the server log")


def error_body(exc: ModelServerError, request_id: str) -> dict[str, Any]:
    """The one error body; a 5xx or a 408 carries the request id to quote in a report."""
    body: dict[str, Any] = {"error": exc.message, "detail": exc.detail}
    if exc.status >= 500 or exc.status == 408:
        body["request_id"] = request_id
    return body


def problem(loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
    """One entry of an error's `detail`; names in `loc` longer than MAX_ECHO are cut."""
    return {"loc": [shorten(part) if isinstance(part, str) else part for part in loc], "msg": msg, "type": kind}


def shorten(text: str) -> str:
    """`text` as an error shows it: at most MAX_ECHO characters, then an ellipsis."""
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + ELLIPSIS


def echo(value: Any) -> str:
    """A value the caller sent, quoted as Python quotes it (escapes show control and
    direction marks), cut after MAX_ECHO characters; a cut one says its full length."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= MAX_ECHO:
        return repr(text)
    quoted = repr(text[:MAX_ECHO])
    return f"{quoted[:-1]}{ELLIPSIS}{quoted[-1]} ({len(text)} characters)"


def format_location(loc: list[Any] | tuple[Any, ...]) -> str:
    """Render ["instances", 3, "mean radius"] as instances[3]['mean radius']."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f"['{part}']" if out else str(part)
    return out or "body"
