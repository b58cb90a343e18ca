"""Start-up of the real server with a configuration naming an absent tag."""

from __future__ import annotations

import pytest

from model_server.local_server import launch
from tests.payloads import CONFIGURATIONS

pytestmark = pytest.mark.integration


def test_missing_tag_fails_startup_with_the_fix(trained_default_models: list[str]) -> None:
    server = launch(CONFIGURATIONS / "missing_tag.yaml")
    try:
        server.process.wait(timeout=60)
    finally:
        server.stop()
    assert server.process.returncode != 0
    assert "Model 'iris:v404' is not in the model store" in server.log()
    assert "python -m training iris --version v404" in server.log()
