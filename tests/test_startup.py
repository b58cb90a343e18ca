"""Start-up of the real server with a configuration naming an absent tag."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_server.local_server import launch

pytestmark = pytest.mark.integration


def test_missing_tag_fails_startup_with_the_fix(tmp_path: Path, trained_default_models: list[str]) -> None:
    config = tmp_path / "configuration.yaml"
    config.write_text(
        "services:\n  TabularModelServer:\n    workers: 1\n    model_server:\n"
        "      models:\n        iris:\n          variants: [{tag: 'iris:v404'}]\n"
    )
    server = launch(config)
    try:
        server.process.wait(timeout=60)
    finally:
        server.stop()
    assert server.process.returncode != 0
    assert "Model 'iris:v404' is not in the model store" in server.log()
    assert "python -m training iris --version v404" in server.log()
