"""Start-up of the real server: a configuration naming an absent tag, a port taken meanwhile."""

from __future__ import annotations

import socket

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


def test_a_server_whose_port_was_taken_meanwhile_starts_again_on_free_ones(
    trained_default_models: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between picking a free port and binding it, another process may take it (it happened
    in CI with a Spark worker). The first pick here is a port this test holds open."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    picks = iter([[taken.getsockname()[1], local_server.free_port()]])
    monkeypatch.setattr(local_server, "free_ports", lambda count: next(picks, None) or free_ports(count))
    launched: list[local_server.RunningServer] = []
    monkeypatch.setattr(local_server, "launch", lambda *args: launched.append(launch(*args)) or launched[-1])
    try:
        server = local_server.start_server(ROOT / "configuration.yaml", local_server.ONE_WORKER)
        assert [s.process.poll() is not None for s in launched] == [True, False]
        assert "Address already in use" in launched[0].log()
        assert server.port != taken.getsockname()[1]
        assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
    finally:
        taken.close()
        for each in launched:
            each.stop()
