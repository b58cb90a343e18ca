"""One error hierarchy for every front; each error knows its HTTP status.

The HTTP fronts map `status` to the response code and the body
`{"error": message, "detail": [...]}`; the gRPC front maps the same status to a
gRPC code in one table. Messages are safe to show to callers: they never carry
stack traces or input values beyond the offending field name.
"""

from __future__ import annotations

from typing import Any

# Details beyond this count are summarised, so error bodies stay small.
MAX_DETAILS = 20


class ModelServerError(Exception):
    """Base of every error a caller can receive."""

    status = 500

    def __init__(self, message: str, detail: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or []

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "detail": self.detail}


class InvalidInput(ModelServerError):
    """The request does not match the model's input schema or the API's shape."""

    status = 400

    @classmethod
    def at(cls, loc: list[Any], msg: str, kind: str) -> InvalidInput:
        """One problem: where (`loc`), what is wrong (`msg`) and which rule (`kind`)."""
        return cls.from_problems([problem(loc, msg, kind)])

    @classmethod
    def from_problems(cls, problems: list[dict[str, Any]]) -> InvalidInput:
        first = problems[0]
        where = format_location(first["loc"])
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        detail = problems[:MAX_DETAILS]
        return cls(f"invalid input: {where}: {first['msg']}{more}", detail)


class PayloadTooLarge(ModelServerError):
    """The request body exceeds the configured size limit."""

    status = 413


class MethodNotAllowed(ModelServerError):
    """The path exists, but not for this HTTP method."""

    status = 405

    def __init__(self, method: str, allowed: list[str]) -> None:
        super().__init__(f"method {method} is not allowed here; use {' or '.join(allowed)}")
        self.allowed = allowed


class UnsupportedMediaType(ModelServerError):
    """The body is declared as something other than JSON."""

    status = 415


class ModelNotFound(ModelServerError):
    """No served model has this name, or the model has no such version."""

    status = 404

    def __init__(self, name: str, version: str | None = None) -> None:
        if version is None:
            super().__init__(f"model '{name}' is not served here")
        else:
            super().__init__(f"model '{name}' has no served version '{version}'")


class ModelNotReady(ModelServerError):
    """The models are still loading."""

    status = 503


class PredictionFailed(ModelServerError):
    """The model raised while predicting; the cause is logged, not returned."""

    status = 500


def problem(loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
    """One entry of an error's `detail`."""
    return {"loc": loc, "msg": msg, "type": kind}


def format_location(loc: list[Any] | tuple[Any, ...]) -> str:
    """Render ["instances", 3, "mean radius"] as instances[3]['mean radius']."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f"['{part}']" if out else str(part)
    return out or "body"
