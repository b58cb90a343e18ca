"""Shared fixtures. Every test run gets its own BentoML model store in a temporary
directory, so the tests never read or change the user's models."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# BentoML reads BENTOML_HOME when its store is first used; set it before anything imports it.
_STORE = tempfile.mkdtemp(prefix="model-server-tests-")
os.environ["BENTOML_HOME"] = _STORE
os.environ["BENTOML_DO_NOT_TRACK"] = "True"

import pytest  # noqa: E402

from model_server.local_server import RunningServer, start_server  # noqa: E402
from model_server.settings import ServerSettings, load_settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_STORE, ignore_errors=True)


@pytest.fixture(scope="session")
def store_home() -> str:
    return _STORE


@pytest.fixture(scope="session")
def project_settings() -> ServerSettings:
    return load_settings(ROOT / "configuration.yaml")


@pytest.fixture(scope="session")
def trained_default_models(project_settings: ServerSettings) -> list[str]:
    """Every tag configuration.yaml serves, trained into the test store by its default recipe."""
    from training.recipes import DEFAULT_RECIPES, DEFAULT_SEED
    from training.register import _exists, train_and_register

    for tag in project_settings.tags():
        if not _exists(tag):
            name, version = tag.split(":")
            command = f"python -m training {name} --version {version} --algorithm {DEFAULT_RECIPES[tag]}"
            train_and_register(name, version, DEFAULT_RECIPES[tag], DEFAULT_SEED, command=command)
    return project_settings.tags()


@pytest.fixture(scope="session")
def server(trained_default_models: list[str]) -> Iterator[RunningServer]:
    """The real `bentoml serve` with the project's configuration.yaml, on a free port."""
    running = start_server(ROOT / "configuration.yaml")
    try:
        yield running
    finally:
        running.stop()
