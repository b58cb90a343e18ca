"""Route tables: one per API, read by the HTTP front door to dispatch and by openapi.py
to describe, so the document lists exactly the routes the server answers.

A route's path is a template such as `/v1/models/{name}/predict`, one segment per
parameter. Its handler turns a `Request` into an `Answer`; a route without a handler
is answered by BentoML's own app (health probes, /metrics, BentoML's page).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from model_server.errors import MethodNotAllowed
from model_server.transports.edge import PREDICTION, Access

JSON_TYPE = b"application/json"


@dataclass(slots=True)
class Request:
    """What a route handler sees: path parameters, headers, the whole body, the request id."""

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


@dataclass(slots=True)
class Answer:
    """A successful answer: the body, the tag and routing revision that produced it, any
    further headers."""

    body: bytes
    tag: str | None = None
    content_type: bytes = JSON_TYPE
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    status: int = 200
    revision: int | None = None


Handler = Callable[[Request], Awaitable[Answer]]


class RequestBody(StrEnum):
    """The request bodies openapi.py describes; each has its builder there (a test checks)."""

    PREDICT = "predict_request"  # /v1 predict: instances, version, explain
    PINNED_PREDICT = "pinned_predict_request"  # the same, the version in the path
    BENTOML_PREDICT = "bentoml_predict_request"  # BentoML's form: the model in the body
    INFER = "infer_request"  # an OIP infer request for the model's tensors
    FEEDBACK = "feedback_request"  # outcomes by prediction id


class AnswerBody(StrEnum):
    """The answer bodies openapi.py describes; each has its builder there (a test checks)."""

    PREDICTION = "prediction"
    ANY_PREDICTION = "any_prediction"  # /predict: the answer of whichever model was named
    MODEL_LIST = "model_list"
    MODEL_DESCRIPTION = "model_description"
    DRIFT = "drift"
    OIP_SERVER = "oip_server"
    OIP_MODEL = "oip_model"
    INFER = "infer_response"
    FEEDBACK = "feedback"
    OUTCOMES = "outcomes"


@dataclass(frozen=True)
class Route:
    """One method on one path template, and how it is answered and documented."""

    method: str
    path: str
    summary: str
    handler: Handler | None = None  # None: BentoML's own app answers
    access: Access = PREDICTION  # who may call it, gated or not, logged or not (edge.py)
    body: tuple[str, ...] = ()  # media types the body may be declared as; () reads no body
    request_schema: RequestBody | None = None  # the request body, as openapi.py describes it
    response_schema: AnswerBody | None = None  # the answer, as openapi.py describes it; None: a JSON object
    listed: bool = True  # in the OpenAPI document
    prefix: bool = False  # matches the path and everything below it
    max_body: tuple[int, str] | None = None  # a body limit of its own and its setting's name (else max_body_bytes)
    body_timeout: tuple[float, str] | None = None  # a time for the body of its own, its setting (else body_timeout_s)

    def segments(self) -> list[str]:
        return self.path[1:].split("/")


class RouteTable:
    """Routes matched by method and path; a known path with another method is a 405."""

    # Matches remembered by method and path, so that a busy path is matched once, not on
    # every request; emptied when full (paths name models, so a client could vary them).
    MAX_REMEMBERED = 4096

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = list(routes)
        self._compiled = [(route, route.segments()) for route in self.routes]
        self._matched: dict[tuple[str, str], tuple[Route, dict[str, str]]] = {}

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.routes)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route and its parameters; None when no route has this path.

        Exact: a trailing or doubled slash is no match. HEAD is answered as GET where BentoML answers.
        """
        remembered = self._matched.get((method, path))
        if remembered is not None:
            return remembered[0], dict(remembered[1])
        found = self._match(method, path)
        if found is not None:
            if len(self._matched) >= self.MAX_REMEMBERED:
                self._matched.clear()
            self._matched[(method, path)] = (found[0], dict(found[1]))
        return found

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        if not path.startswith("/"):
            return None
        segments = path[1:].split("/")
        allowed: list[str] = []
        for route, template in self._compiled:
            params = _match(template, segments, route.prefix)
            if params is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET" and route.handler is None):
                return route, params
            if route.method not in allowed:
                allowed.append(route.method)
        if allowed:
            raise MethodNotAllowed(method, allowed)
        return None


def join(*tables: RouteTable) -> RouteTable:
    """One table of several APIs' routes, in order."""
    return RouteTable(route for table in tables for route in table)


def _match(template: list[str], segments: list[str], prefix: bool) -> dict[str, str] | None:
    if prefix:
        return {} if segments[: len(template)] == template and len(segments) > len(template) else None
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
