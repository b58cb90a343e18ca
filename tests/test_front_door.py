"""The front door's pieces without a server: route tables, request ids, the access log."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from model_server.config.auth import ApiKeys
from model_server.errors import ClientDisconnected, MethodNotAllowed, RequestTimeout
from model_server.monitoring.logs import AccessLog
from model_server.transports.edge import Call, ConcurrencyGate, Edge, request_id
from model_server.transports.http_front_door import (
    BodyLimits,
    CoalescingTransport,
    ConnectionRecycler,
    RequestBody,
    _wanted_headers,
)
from model_server.transports.route_table import Answer, Request, Route, RouteTable


async def _answer(request: Request) -> Answer:
    return Answer(b"{}")


ROUTES = RouteTable(
    [
        Route("POST", "/models/{name}/predict", "predict", _answer),
        Route("POST", "/models/{name}/versions/{version}/predict", "predict one version", _answer),
        Route("GET", "/static", "assets", prefix=True),
    ]
)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/models/iris/predict", {"name": "iris"}),
        ("/models/iris/versions/v2/predict", {"name": "iris", "version": "v2"}),
    ],
)
def test_direct_routes_match_templates_and_bind_parameters(path: str, params: dict[str, str]) -> None:
    matched = ROUTES.match("POST", path)
    assert matched is not None
    route, bound = matched
    assert route.handler is _answer and bound == params


@pytest.mark.parametrize(
    "path",
    [
        "/models",
        "/models/iris",
        "/models//predict",
        "/models/iris/predict/more",
        "/models/iris/predict/",
        "//models/iris/predict",
        "",
    ],
)
def test_direct_routes_leave_other_paths_to_the_app(path: str) -> None:
    assert ROUTES.match("POST", path) is None


def test_known_path_with_another_method_is_405_naming_the_allowed_one() -> None:
    with pytest.raises(MethodNotAllowed) as raised:
        ROUTES.match("GET", "/models/iris/predict")
    assert raised.value.status == 405 and raised.value.allowed == ["POST"]
    assert "GET" in raised.value.message and "POST" in raised.value.message
    assert raised.value.http_headers() == [(b"allow", b"POST")]


def test_prefix_routes_match_everything_below_them_only() -> None:
    matched = ROUTES.match("GET", "/static/css/page.css")
    assert matched is not None and matched[0].path == "/static"
    assert ROUTES.match("GET", "/static") is None and ROUTES.match("GET", "/statics/x") is None


def test_request_ids_keep_the_callers_and_are_unique_otherwise() -> None:
    assert request_id("trace-1") == "trace-1"
    fresh = {request_id(None) for _ in range(10_000)}
    assert len(fresh) == 10_000
    assert request_id("x" * 129) != "x" * 129 and request_id("bad\nid") != "bad\nid"


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    @property
    def writes(self) -> int:
        return len(self.sizes)

    def write(self, text: str) -> int:
        self.sizes.append(len(text.encode()))
        return super().write(text)


def test_access_log_writes_one_turn_of_the_event_loop_at_once() -> None:
    stream = CountingStream()
    log = AccessLog(stream)

    async def scenario() -> None:
        for i in range(10):
            log.record({"request_id": f"r{i}", "status": 200})
        assert stream.writes == 0  # not yet: at the end of this turn
        await asyncio.sleep(0)
        log.record({"request_id": "late", "status": 404})
        await asyncio.sleep(0)

    asyncio.run(scenario())
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert stream.writes == 2
    assert [line["request_id"] for line in lines] == [f"r{i}" for i in range(10)] + ["late"]
    assert all(line["logger"] == "model_server.access" and line["message"] == "access" for line in lines)


def test_access_log_writes_whole_lines_in_pieces_of_at_most_4_kb() -> None:
    stream = CountingStream()
    log = AccessLog(stream)

    async def scenario() -> None:
        for i in range(200):
            log.record({"request_id": f"r{i}", "status": 200})
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert stream.writes > 1 and max(stream.sizes) <= 4096
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [f"r{i}" for i in range(200)]


def test_access_log_outside_an_event_loop_writes_at_once() -> None:
    stream = CountingStream()
    AccessLog(stream).record({"request_id": "now", "status": 200})
    assert json.loads(stream.getvalue())["request_id"] == "now"


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError("the log reader went away")


def test_a_broken_log_stream_drops_lines_instead_of_failing() -> None:
    log = AccessLog(BrokenStream())
    log.record({"request_id": "lost", "status": 200})
    log.record({"request_id": "lost-too", "status": 200})
    assert log.dropped == 2


def test_connections_are_closed_after_the_limit_and_counted_apart() -> None:
    recycler = ConnectionRecycler(3)
    a, b = {"client": ("127.0.0.1", 50001)}, {"client": ("127.0.0.1", 50002)}
    assert [recycler.should_close(a) for _ in range(7)] == [False, False, True, False, False, True, False]
    assert [recycler.should_close(b) for _ in range(3)] == [False, False, True]
    assert not recycler.should_close({"client": None})
    assert not any(recycler.should_close({"client": ("10.0.0.7", 0)}) for _ in range(5))  # from X-Forwarded-For
    closing = {"client": ("127.0.0.1", 50003)}
    assert not any(recycler.should_close(closing, "close") for _ in range(5))  # the client closes it anyway
    assert not any(ConnectionRecycler(0).should_close(a) for _ in range(10))


_LIMITS = BodyLimits(1000, timeout_s=1.0, idle_timeout_s=0.2)


def _post_scope(length: int) -> dict[bytes, str]:
    """The headers of a JSON POST with a body of `length` bytes, as the front door passes them on."""
    return _wanted_headers([(b"content-length", str(length).encode()), (b"content-type", b"application/json")])


def _receiving(*messages: dict[str, object]) -> object:
    """An ASGI `receive` that gives `messages`, then waits for good (a client gone quiet)."""
    queue = list(messages)

    async def receive() -> dict[str, object]:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


def _read(body: RequestBody) -> bytes:
    return asyncio.run(body.read())


def test_a_body_that_pauses_too_long_is_a_408_naming_the_idle_limit() -> None:
    body = RequestBody(_post_scope(100), _receiving({"type": "http.request", "body": b"{", "more_body": True}), _LIMITS)
    with pytest.raises(RequestTimeout) as raised:
        _read(body)
    assert raised.value.status == 408 and "body_idle_timeout_s" in raised.value.message
    assert raised.value.detail == [{"loc": ["body"], "msg": raised.value.message, "type": "timeout"}]
    assert body.abandoned and not body.complete
    asyncio.run(body.discard())  # returns at once: nothing more is read from a late body


def test_a_body_that_trickles_past_the_total_limit_is_a_408_naming_it() -> None:
    async def trickle() -> dict[str, object]:
        await asyncio.sleep(0.05)  # always within the idle limit
        return {"type": "http.request", "body": b" ", "more_body": True}

    # The idle limit is far above the trickle's pauses, so a busy machine's late turn cannot reach it.
    body = RequestBody(_post_scope(10_000), trickle, BodyLimits(10_000, timeout_s=0.3, idle_timeout_s=2.0))
    with pytest.raises(RequestTimeout) as raised:
        _read(body)
    assert "body_timeout_s" in raised.value.message and "0.3 s" in raised.value.message


def test_a_route_with_a_time_of_its_own_reads_past_body_timeout_s_and_names_its_own_limit() -> None:
    """A model archive (POST /v1/admin/store) may take longer than a prediction's body."""

    async def trickle() -> dict[str, object]:
        await asyncio.sleep(0.05)  # always within the idle limit
        return {"type": "http.request", "body": b" ", "more_body": True}

    chunks = [{"type": "http.request", "body": b" ", "more_body": True}] * 9 + [{"type": "http.request", "body": b" "}]
    sent = iter(chunks)

    async def slow_but_in_time() -> dict[str, object]:
        await asyncio.sleep(0.05)
        return next(sent)

    limits = BodyLimits(10_000, timeout_s=0.2, idle_timeout_s=2.0)
    body = RequestBody(_post_scope(10), slow_but_in_time, limits)  # 0.5 s in all: past body_timeout_s
    assert asyncio.run(body.read(None, (5.0, "push_timeout_s"))) == b" " * 10
    late = RequestBody(_post_scope(10_000), trickle, limits)
    with pytest.raises(RequestTimeout) as raised:
        asyncio.run(late.read(None, (0.4, "push_timeout_s")))
    assert "push_timeout_s" in raised.value.message and "0.4 s" in raised.value.message


def test_a_client_that_disconnects_mid_body_gets_no_truncated_body() -> None:
    whole_request = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'  # valid JSON, but Content-Length says more
    body = RequestBody(
        _post_scope(100),
        _receiving({"type": "http.request", "body": whole_request, "more_body": True}, {"type": "http.disconnect"}),
        _LIMITS,
    )
    with pytest.raises(ClientDisconnected) as raised:
        _read(body)
    assert raised.value.status == 499 and body.abandoned


def test_a_body_that_arrives_in_time_is_read_whole() -> None:
    chunks = [{"type": "http.request", "body": b'{"a":', "more_body": True}, {"type": "http.request", "body": b"1}"}]
    assert _read(RequestBody(_post_scope(7), _receiving(*chunks), _LIMITS)) == b'{"a":1}'


def test_the_body_is_read_before_the_gate_so_a_slow_one_holds_no_slot() -> None:
    edge = Edge(ApiKeys([]), ConcurrencyGate(1), access_log=False)
    call = Call("http", "POST /x", None, None)
    seen_while_reading: list[int] = []

    async def read() -> None:
        seen_while_reading.append(edge.gate.active)
        raise RequestTimeout("body", "body_idle_timeout_s", 2, idle=True)

    async def handler(rid: str) -> str:
        raise AssertionError("a late body never reaches the handler")

    outcome = asyncio.run(edge.run(call, handler, read))
    assert seen_while_reading == [0] and edge.gate.active == 0
    assert outcome.error is not None and outcome.status == 408


class RecordingTransport:
    """What a connection's transport was asked to do, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7


def test_a_response_head_goes_out_with_its_body_and_a_lone_write_at_the_end_of_the_turn() -> None:
    async def scenario() -> list[tuple[str, bytes]]:
        raw = RecordingTransport()
        transport = CoalescingTransport(raw, asyncio.get_running_loop())
        transport.write(b"HEAD ")
        assert raw.calls == []  # held for the body
        transport.write(b"BODY")
        transport.write(b" MORE")  # later writes of the turn go straight out
        await asyncio.sleep(0)
        transport.write(b"100 Continue")  # a new turn, nothing after it
        assert raw.calls[-1] == ("write", b" MORE")
        await asyncio.sleep(0)
        transport.write(b"LAST ")
        transport.close()  # what is held goes first
        assert transport.get_write_buffer_size() == 7  # the rest is the transport's own
        return raw.calls

    assert asyncio.run(scenario()) == [
        ("write", b"HEAD BODY"),
        ("write", b" MORE"),
        ("write", b"100 Continue"),
        ("write", b"LAST "),
        ("close", b""),
    ]


def test_nothing_is_written_to_a_closing_transport() -> None:
    async def scenario() -> list[tuple[str, bytes]]:
        raw = RecordingTransport()
        transport = CoalescingTransport(raw, asyncio.get_running_loop())
        transport.write(b"HEAD ")
        raw.closing = True  # the client went away before the end of the turn
        await asyncio.sleep(0)
        return raw.calls

    assert asyncio.run(scenario()) == []
