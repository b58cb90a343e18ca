"""Shared fixtures. Every test process gets its own BentoML model store in a temporary
directory, so the tests never read or change the user's models, and parallel test
processes (pytest-xdist, `make test`) never see each other's tags.

The default models are trained once per run into a seed store shared by the run, which
every process copies them from. In a parallel run of the whole suite (`make test`) the
first process starts that training in the background (tests/seed_store.py) and the unit
test files are handed out first, so training overlaps with tests that need no models;
otherwise the first process that needs the models trains them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

# BentoML reads BENTOML_HOME when its store is first used; set it before anything imports
# it. The seed store is made by the first process (pytest's, or xdist's controller) and
# inherited by the worker processes it starts.
_SEED = Path(os.environ.setdefault("MODEL_SERVER_TEST_SEED_STORE", tempfile.mkdtemp(prefix="model-server-seed-")))
_STORE = tempfile.mkdtemp(prefix="model-server-tests-")
os.environ["BENTOML_HOME"] = _STORE
os.environ["BENTOML_DO_NOT_TRACK"] = "True"

import httpx._transports.default  # noqa: E402
import hypothesis  # noqa: E402
import pytest  # noqa: E402

from model_server.config.settings import ServerSettings, load_settings  # noqa: E402
from model_server.local_server import RunningServer, start_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Property tests: the cases are hypothesis' choice, but how fast they are made is the
# machine's (shared, and busy with servers in the other test processes), so that is no failure.
hypothesis.settings.register_profile(
    "shared-machine", suppress_health_check=[hypothesis.HealthCheck.too_slow], deadline=None
)
hypothesis.settings.load_profile("shared-machine")


def _one_default_ssl_context() -> None:
    """The tests call `httpx.get/post(...)` thousands of times, and each call makes a client
    whose default SSL context parses certifi's bundle again: 25 ms of CPU, for plain-HTTP
    servers too. The default context (verify=True, no client certificate) is made once per
    process and shared; a test that passes its own context (TLS, `server.verify`) or other
    arguments gets httpx's own function as before."""
    make = httpx._transports.default.create_ssl_context
    shared: dict[bool, ssl.SSLContext] = {}

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> ssl.SSLContext:
        if verify is True and cert is None:
            if trust_env not in shared:
                shared[trust_env] = make(verify=True, trust_env=trust_env)
            return shared[trust_env]
        return make(verify=verify, cert=cert, trust_env=trust_env)

    httpx._transports.default.create_ssl_context = create_ssl_context  # type: ignore[assignment]


_one_default_ssl_context()


# The files that need servers, longest first as measured in a whole run (`make test`,
# then `python -m tests.durations`): handed out longest first, the short ones fill the
# end, and the run does not end with one process still on a long file. Files not named
# come after these.
LONGEST_FILES = (
    "test_container.py",
    "test_fuzz.py",
    "test_scoring_spark.py",
    "test_rollout.py",
    "test_web_page.py",
    "test_operations.py",
    "test_inference_log_server.py",
    "test_admin_cli.py",
    "test_titanic.py",
    "test_fleet.py",
    "test_repository.py",
    "test_ab.py",
    "test_explain_server.py",
    "test_monitoring.py",
    "test_outcomes_server.py",
    "test_onnx_runtime.py",
)


_trainer: subprocess.Popen[bytes] | None = None


def pytest_configure(config: pytest.Config) -> None:
    """In the first process of a parallel run of the integration tests, train the default
    models in the background (tests/seed_store.py), holding the seed store's lock."""
    if "PYTEST_XDIST_WORKER" in os.environ or not getattr(config.option, "numprocesses", None):
        return
    if "not integration" in (config.option.markexpr or "") or (_SEED / "models").is_dir():
        return
    _SEED.mkdir(parents=True, exist_ok=True)
    global _trainer
    trainer = _trainer = subprocess.Popen(
        [sys.executable, "-m", "tests.seed_store"],
        cwd=ROOT,
        env={**os.environ, "BENTOML_HOME": str(_SEED)},
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (_SEED / ".training-started").exists() and trainer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the lock is held before the test processes start


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Unit test files first, then the longest files that need servers, then the rest; the
    tests of one file stay together and in order (`--dist loadfile` hands out files)."""
    needs_server: dict[str, bool] = {}
    for item in items:
        path = item.path.name
        marked = item.get_closest_marker("integration") or item.get_closest_marker("container")
        needs_server[path] = needs_server.get(path, False) or marked is not None

    def order(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if not needs_server[name]:
            return (0, 0)
        return (1, LONGEST_FILES.index(name)) if name in LONGEST_FILES else (2, 0)

    items.sort(key=order)  # stable: files stay in collection order within each group


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_STORE, ignore_errors=True)
    if "PYTEST_XDIST_WORKER" not in os.environ:  # the process that made the seed store
        if _trainer is not None and _trainer.poll() is None:  # a run that needed no models
            _trainer.kill()
            _trainer.wait()
        shutil.rmtree(_SEED, ignore_errors=True)


@pytest.fixture(scope="session")
def store_home() -> str:
    return _STORE


@pytest.fixture(scope="module", autouse=True)
def _store_names_left_as_found() -> Iterator[None]:
    """Model names a test file adds to its process's store are removed at its end: test
    files share a process, and some list the whole store (the OIP repository index)."""
    import bentoml

    from model_server.models import registry  # folders, not bentoml.models.list(): no YAML parsed

    before = set(registry.stored_names())
    yield
    for name in set(registry.stored_names()) - before - _CONFIGURED_NAMES:
        for tag in registry.stored_versions(name):
            bentoml.models.delete(tag)


# The names configuration.yaml serves: trained once per process, never removed.
_CONFIGURED_NAMES = frozenset(load_settings(ROOT / "configuration.yaml").models)


@pytest.fixture(scope="session")
def project_settings() -> ServerSettings:
    return load_settings(ROOT / "configuration.yaml")


@pytest.fixture(scope="session")
def trained_default_models(project_settings: ServerSettings) -> list[str]:
    """Every tag configuration.yaml serves, in this process's store: trained by its default
    recipe once per run, copied from the seed store after that."""
    from training.recipes import DEFAULT_RECIPES, DEFAULT_SEED
    from training.register import tag_exists, train_and_register

    tags = project_settings.tags()
    with _locked(_SEED / ".lock"):
        for tag in tags:
            if tag_exists(tag):
                continue
            name, version = tag.split(":")
            seeded = _SEED / "models" / name / version
            if seeded.is_dir():
                shutil.copytree(seeded, Path(_STORE) / "models" / name / version)
                continue
            command = f"python -m training {name} --version {version} --algorithm {DEFAULT_RECIPES[tag]}"
            train_and_register(name, version, DEFAULT_RECIPES[tag], DEFAULT_SEED, command=command)
            shutil.copytree(Path(_STORE) / "models" / name / version, seeded)
    return tags


@pytest.fixture(scope="session")
def server(trained_default_models: list[str]) -> Iterator[RunningServer]:
    """The real `bentoml serve` with the project's configuration.yaml, on a free port."""
    running = start_server(ROOT / "configuration.yaml")
    try:
        yield running
    finally:
        running.stop()


AdminServerFactory = Callable[..., AbstractContextManager[RunningServer]]


@pytest.fixture(scope="session")
def admin_server_factory(
    trained_default_models: list[str], tmp_path_factory: pytest.TempPathFactory
) -> AdminServerFactory:
    """Starts the real server with an admin key and a routing file of its own, as a context
    manager that stops it: `with admin_server_factory(KEY) as server: ...`. `config` is
    configuration.yaml unless given; `env` adds settings (MODEL_SERVER_*)."""

    @contextmanager
    def start(
        key: str, config: Path | None = None, routing_file: Path | None = None, env: dict[str, str] | None = None
    ) -> Iterator[RunningServer]:
        routing = routing_file or tmp_path_factory.mktemp("routing") / "routing.yaml"
        settings = {"MODEL_SERVER_ADMIN_KEYS": key, "MODEL_SERVER_ROUTING_FILE": str(routing), **(env or {})}
        running = start_server(config or ROOT / "configuration.yaml", settings)
        try:
            yield running
        finally:
            running.stop()

    return start


class _locked:
    """An exclusive lock on a file, held by one test process at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = self.path.open("a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
