"""Start-up of the real server: a configuration naming an absent tag, a port taken meanwhile."""

from __future__ import annotations

import socket

import grpc
import httpx
import pytest

from model_server import local_server
from model_server.local_server import ROOT, free_ports, launch
from tests.payloads import CONFIGURATIONS

pytestmark = pytest.mark.integration


def test_missing_tag_fails_startup_with_the_fix(trained_default_models: list[str]) -> None:
    server = launch(CONFIGURATIONS / "missing_tag.yaml")
    try:
        server.process.wait(timeout=180)
    finally:
        server.stop()
    assert server.process.returncode != 0
    assert "Model 'iris:v404' is not in the model store" in server.log()
    assert "python -m training iris --version v404" in server.log()


@pytest.mark.parametrize("door", ["HTTP", "gRPC", "gRPC, with SO_REUSEPORT"])
def test_a_server_whose_port_was_taken_meanwhile_starts_again_on_free_ones(
    trained_default_models: list[str], monkeypatch: pytest.MonkeyPatch, door: str
) -> None:
    """Between picking a free port and binding it, another process may take it (it happened
    in CI with a Spark worker). The first pick here is a port this test holds open: the
    HTTP port, which the arbiter binds at once, or the gRPC port, which a worker binds
    once its models are loaded; or the gRPC port held as grpcio holds it (SO_REUSEPORT),
    which the worker binds too, without an error."""
    taken = socket.socket()
    if door == "gRPC, with SO_REUSEPORT":
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    first = [taken.getsockname()[1], local_server.free_port()]
    picks = iter([first if door == "HTTP" else first[::-1]])
    monkeypatch.setattr(local_server, "free_ports", lambda count: next(picks, None) or free_ports(count))
    launched: list[local_server.RunningServer] = []
    monkeypatch.setattr(local_server, "launch", lambda *args: launched.append(launch(*args)) or launched[-1])
    try:
        server = local_server.start_server(ROOT / "configuration.yaml", local_server.ONE_WORKER)
        assert [s.process.poll() is not None for s in launched] == [True, False]
        if door == "gRPC, with SO_REUSEPORT":
            assert "Address already in use" not in launched[0].log()  # found by who listens, not by the log
        else:
            assert "Address already in use" in launched[0].log()
        assert taken.getsockname()[1] not in (server.port, server.grpc_port)
        assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=10)
        assert live == b"\x08\x01"  # ServerLiveResponse(live=True)
    finally:
        taken.close()
        for each in launched:
            each.stop()
