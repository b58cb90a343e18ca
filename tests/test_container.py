"""The Bento and its OCI image, for real: `container/build_image.sh` builds both from this
tree and the test model store; the image runs under podman (or Docker where a daemon
answers) on free host ports and must answer like the in-process models over HTTP JSON
and OIP gRPC. It runs with a read-only root filesystem, as a non-root user, and its health
check passes. The Bento is also exported, imported into an empty store and served.

Needs root (buildah, podman, debootstrap) or a Docker daemon. The first run on a machine
installs the tools and builds the base image (a few minutes); later runs reuse both and
the image's cached layers. Build time and image size go to test-output/container.md
(`make container-report` writes bench/results/container.md).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from sklearn import datasets

from model_server.config.settings import ServerSettings
from model_server.local_server import ONE_WORKER, free_ports
from tests.test_http_api import expected

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parent.parent
BENTOML = str(Path(sys.executable).parent / "bentoml")
# bench/results/container.md only when asked for (make container-report): a test run
# never rewrites tracked files.
REPORT = Path(os.environ.get("MODEL_SERVER_CONTAINER_REPORT") or ROOT / "test-output" / "container.md")
TEST_REPOSITORY = "tabular-model-server-test"  # never the developer's tabular-model-server tags
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
MAX_IMAGE_BYTES = 720e6  # the lean image's budget (docs/container.md says what fills it)
CANCER = np.asarray(datasets.load_breast_cancer().data[:3], dtype=np.float64)


def _docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def built(
    trained_default_models: list[str], store_home: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    """The Bento and image that container/build_image.sh builds from the test store."""
    if os.geteuid() != 0 and not _docker_daemon():
        # Failing, not skipping: a silent skip would pass CI without an image ever built.
        pytest.fail("building the image needs root (buildah, podman, debootstrap) or a Docker daemon")
    out = tmp_path_factory.mktemp("image")
    env = {**os.environ, "BENTOML_HOME": store_home, "PYTHON": sys.executable, "IMAGE_REPOSITORY": TEST_REPOSITORY}
    env.pop("BENTOML_CONFIG", None)  # the build reads the project's configuration.yaml
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(ROOT / "container" / "build_image.sh"), "--output-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    wall = time.monotonic() - started
    print(result.stdout, result.stderr, sep="\n")
    assert result.returncode == 0, f"build_image.sh failed:\n{result.stdout}\n{result.stderr[-5000:]}"
    info = json.loads((out / "build.json").read_text())
    info["wall_seconds"] = wall
    info["engine"] = "docker" if info["backend"] == "docker" else "podman"
    _write_report(info)
    try:
        yield info
    finally:
        # The version tag goes; `latest` keeps the newest test image, and so buildah's cached
        # layers (apt, uv pip install) for the next run. Older test images are pruned.
        engine = info["engine"]
        subprocess.run([engine, "rmi", info["image"]], capture_output=True)
        label = f"label=org.opencontainers.image.title={TEST_REPOSITORY}"
        subprocess.run([engine, "image", "prune", "--force", "--filter", label], capture_output=True)
        shutil.rmtree(out, ignore_errors=True)


def _previous_report_row() -> str:
    """The image size and date of the report this run replaces, so each report shows the change."""
    if not REPORT.exists():
        return "none"
    rows = dict(line.strip("|").split("|", 1) for line in REPORT.read_text().splitlines() if line.count("|") == 3)
    rows = {key.strip(): value.strip() for key, value in rows.items()}
    size, date, revision = rows.get("image size"), rows.get("date (UTC)"), rows.get("git revision", "")
    return f"{size} ({date}, {revision})" if size and date else "none"


def _write_report(info: dict) -> None:
    seconds = info["seconds"]
    first = "yes" if seconds["base_image"] > 30 else "no (base image and layer cache reused)"
    previous = _previous_report_row()
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(
        "# Bento and OCI image build\n\n"
        "Written by `tests/test_container.py` (`container/build_image.sh` on this machine: "
        "2 cores; no Docker daemon or registry, so buildah and a debootstrap base image, unless a daemon answers).\n\n"
        "| | |\n| --- | --- |\n"
        f"| date (UTC) | {datetime.now(UTC):%Y-%m-%d %H:%M} |\n"
        f"| git revision | `{info['git_revision']}` |\n"
        f"| Bento | `{info['bento']}` |\n"
        f"| backend | {info['backend']} |\n"
        f"| image size | {info['image_size_bytes'] / 1e6:.0f} MB |\n"
        f"| image size budget | {MAX_IMAGE_BYTES / 1e6:.0f} MB |\n"
        f"| image size in the previous report | {previous} |\n"
        f"| archive size | {info['archive_size_bytes'] / 1e6:.0f} MB (`{Path(info['archive']).name}`) |\n"
        f"| build time, total | {seconds['total']:.0f} s |\n"
        f"| of which Bento | {seconds['bento']:.0f} s |\n"
        f"| of which base image (debootstrap on a machine's first build) | {seconds['base_image']:.0f} s |\n"
        f"| of which image (buildah; unchanged steps come from its layer cache) | {seconds['image']:.0f} s |\n"
        f"| of which saving the archive | {seconds['save']:.0f} s |\n"
        f"| first build on this machine | {first} |\n"
    )


@dataclass
class Container:
    engine: str
    name: str
    http_port: int
    grpc_port: int
    max_rows: int  # a per-container setting, so an answer proves which server it came from

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def inspect(self, template: str) -> str:
        return _run([self.engine, "inspect", "--format", template, self.name]).strip()

    def logs(self) -> str:
        return subprocess.run([self.engine, "logs", self.name], capture_output=True, text=True).stdout[-4000:]


def _run(command: list[str], timeout: float = 120) -> str:
    """Run an engine command; retried when podman hits the sandbox's transient error
    ("sealing memfd copy: Device or resource busy", see container/common.sh)."""
    for attempt in range(3):
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode == 0 or "sealing memfd" not in result.stderr or attempt == 2:
            break
        if command[1] == "run":  # it may have been created: free its name
            name = command[command.index("--name") + 1]
            subprocess.run([command[0], "rm", "--force", name], capture_output=True)
        time.sleep(2)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _run_options(engine: str) -> list[str]:
    """podman here needs runc and ulimits within the hard limits (container/common.sh)."""
    if engine != "podman":
        return []
    script = f"source {ROOT / 'container' / 'common.sh'} && podman_run_options"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split()


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_ready(container: Container, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if container.inspect("{{.State.Running}}") != "true":
            raise AssertionError(f"container stopped:\n{container.logs()}")
        try:
            ready = httpx.get(f"{container.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            ready = False
        if ready and _accepts(container.grpc_port):
            return
        time.sleep(0.5)
    raise AssertionError(f"container not ready after {timeout} s:\n{container.logs()}")


@pytest.fixture(scope="module")
def container(built: dict) -> Iterator[Container]:
    """The image, started read-only on free host ports for 3000 (HTTP) and 3001 (gRPC)."""
    engine = built["engine"]
    max_rows = 900 + secrets.randbelow(99)
    for attempt in range(3):  # a free port may be taken by another process before the engine binds it
        http_port, grpc_port = free_ports(2)
        running = Container(
            engine=engine,
            name=f"tabular-model-server-test-{secrets.token_hex(4)}",
            http_port=http_port,
            grpc_port=grpc_port,
            max_rows=max_rows,
        )
        try:
            _run(
                [engine, "run", "--detach", "--name", running.name, "--read-only", *_run_options(engine)]
                + ["--publish", f"127.0.0.1:{http_port}:3000", "--publish", f"127.0.0.1:{grpc_port}:3001"]
                + ["--env", f"MODEL_SERVER_MAX_ROWS_PER_REQUEST={max_rows}", built["image"]]
            )
            break
        except AssertionError as failed:
            subprocess.run([engine, "rm", "--force", running.name], capture_output=True)
            taken = ("address already in use", "port is already allocated")  # podman's, Docker's words
            if not any(words in str(failed).lower() for words in taken) or attempt == 2:
                raise
    try:
        _wait_ready(running)
        yield running
    finally:
        subprocess.run([engine, "rm", "--force", "--volumes", "--time", "10", running.name], capture_output=True)


def test_image_metadata(built: dict) -> None:
    engine, image = built["engine"], built["image"]
    inspected = json.loads(_run([engine, "image", "inspect", image]))[0]
    config = inspected["Config"]
    assert set(config["ExposedPorts"]) == {"3000/tcp", "3001/tcp"}  # HTTP (and metrics), OIP gRPC
    assert config["Labels"]["org.opencontainers.image.ports.grpc"] == "3001"
    assert config["User"] == "bentoml"  # BentoML's template: not root
    assert set(config["Volumes"]) == {"/tmp"}  # the only writable path a read-only root needs
    health = config.get("Healthcheck") or inspected["Healthcheck"]  # Docker has it in Config, podman beside it
    assert "/readyz" in " ".join(health["Test"])
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["BENTOML_CONFIG"] == "/home/bentoml/bento/src/configuration.yaml"
    assert env["OMP_NUM_THREADS"] == "1" and env["BENTOML_DO_NOT_TRACK"] == "True"
    assert config["Labels"]["bentoml.bento"] == built["bento"]
    assert config["Labels"]["org.opencontainers.image.revision"] == built["git_revision"]
    assert built["archive_size_bytes"] > 100e6


def test_image_is_lean(built: dict) -> None:
    """At most the budget, and no compiler, git, curl, uv or package caches inside."""
    print(f"image size: {built['image_size_bytes'] / 1e6:.0f} MB (budget {MAX_IMAGE_BYTES / 1e6:.0f} MB)")
    assert built["image_size_bytes"] <= MAX_IMAGE_BYTES
    engine, image = built["engine"], built["image"]
    script = (
        "for tool in gcc cc g++ make git curl uv; do command -v $tool; done; "
        "ls -d /root/.cache /home/bentoml/.cache /app/.venv/lib/python3.11/site-packages/*/tests 2>/dev/null; "
        "ls /app/.venv/lib/python3.11/site-packages/sklearn/__pycache__ | grep -c '[.]pyc$'"
    )
    found = subprocess.run(
        [engine, "run", "--rm", "--network", "none", *_run_options(engine), "--entrypoint", "sh", image, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split()
    *unwanted, compiled = found
    assert unwanted == []
    assert int(compiled) > 5  # byte-compiled at build time: a read-only root cannot write caches


def test_bento_holds_every_configured_tag(built: dict, project_settings: ServerSettings, store_home: str) -> None:
    env = {**os.environ, "BENTOML_HOME": store_home}
    info = json.loads(_run_with_env([BENTOML, "get", built["bento"], "-o", "json"], env))
    packed = {model["tag"] for service in info["services"] for model in service["models"]}
    assert packed == set(project_settings.tags())
    assert info["labels"]["git_revision"] == built["git_revision"]
    assert info["labels"]["project"] == "tabular-model-server"


def _run_with_env(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_container_runs_as_non_root_with_the_bentos_configuration(container: Container) -> None:
    assert _run([container.engine, "exec", container.name, "id", "-u"]).strip() != "0"
    assert "Applying user config override from path: /home/bentoml/bento/src/configuration.yaml" in container.logs()


def test_root_filesystem_is_read_only_and_the_health_check_passes(container: Container) -> None:
    assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    attempt = subprocess.run(
        [container.engine, "exec", container.name, "touch", "/home/bentoml/bento/src/written"],
        capture_output=True,
        text=True,
    )
    assert attempt.returncode != 0 and "Read-only file system" in attempt.stderr
    if container.engine == "podman":
        # podman runs the image's HEALTHCHECK on demand: exit 0 means healthy.
        health = subprocess.run(["podman", "healthcheck", "run", container.name], capture_output=True, text=True)
        assert health.returncode == 0, health.stdout + health.stderr
    else:
        deadline = time.monotonic() + 60
        while container.inspect("{{.State.Health.Status}}") != "healthy":
            assert time.monotonic() < deadline, container.inspect("{{json .State.Health}}")
            time.sleep(1)


def test_http_prediction_equals_in_process_model(container: Container, project_settings: ServerSettings) -> None:
    response = httpx.post(
        f"{container.url}/v1/models/iris/versions/v1/predict", json={"instances": [IRIS_ROW]}, timeout=30
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tag"] == response.headers["x-model-tag"] == "iris:v1"
    want = expected("iris:v1", np.asarray([IRIS_ROW], dtype=np.float64))
    assert {key: body[key] for key in want} == want
    served = {m["name"] for m in httpx.get(f"{container.url}/v1/models", timeout=10).json()["models"]}
    assert served == set(project_settings.models)


def test_grpc_prediction_equals_in_process_model(container: Container) -> None:
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{container.grpc_port}")
    assert client.is_server_ready()
    tensor = triton_grpc.InferInput("features", list(CANCER.shape), "FP64")
    tensor.set_data_from_numpy(CANCER)
    result = client.infer("breast_cancer", [tensor], request_id="container-1")
    want = expected("breast_cancer:v1", CANCER)
    assert [x.decode() for x in result.as_numpy("predict")] == want["predictions"]
    assert np.array_equal(result.as_numpy("predict_proba"), np.asarray(want["probabilities"]))
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("breast_cancer", "v1", "container-1")


def test_answers_come_from_the_container_started(container: Container) -> None:
    """The published ports are this container's, and its own setting shows in the answers."""
    ports = _run([container.engine, "port", container.name])
    assert f"127.0.0.1:{container.http_port}" in ports and f"127.0.0.1:{container.grpc_port}" in ports
    too_many = {"instances": [IRIS_ROW] * (container.max_rows + 1)}
    response = httpx.post(f"{container.url}/v1/models/iris/predict", json=too_many, timeout=30)
    assert response.status_code == 400
    assert f"at most {container.max_rows} are allowed" in response.json()["detail"][0]["msg"]


def test_starts_without_network(built: dict) -> None:
    """With no network at all (no DNS, no route out), the image still loads and serves."""
    engine = built["engine"]
    name = f"tabular-model-server-offline-{secrets.token_hex(4)}"
    # One worker: what is checked is that the image serves offline, not how many workers.
    one_worker = [f"--env={key}={value}" for key, value in ONE_WORKER.items()]
    _run(
        [
            engine,
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            "none",
            *one_worker,
            *_run_options(engine),
            built["image"],
        ]
    )
    probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:3000/readyz', timeout=2).status)"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            result = subprocess.run([engine, "exec", name, "python", "-c", probe], capture_output=True, text=True)
            if result.stdout.strip() == "200":
                break
            assert _run([engine, "inspect", "--format", "{{.State.Running}}", name]).strip() == "true"
            time.sleep(1)
        else:
            raise AssertionError("offline container never became ready")
    finally:
        subprocess.run([engine, "rm", "--force", "--volumes", "--time", "10", name], capture_output=True)


def test_stopping_the_container_stops_the_answers(container: Container) -> None:
    """Last: once the container stops, nothing answers on its ports (so nothing else did)."""
    _run([container.engine, "stop", "--time", "10", container.name])
    assert not _accepts(container.http_port) and not _accepts(container.grpc_port)


def test_exported_bento_serves_from_a_fresh_store(built: dict, store_home: str, tmp_path: Path) -> None:
    """`bentoml export` -> `bentoml import` into an empty BENTOML_HOME -> `bentoml serve <tag>`."""
    archive = tmp_path / "bento.bento"
    _run_with_env([BENTOML, "export", built["bento"], str(archive)], {**os.environ, "BENTOML_HOME": store_home})
    fresh = tmp_path / "fresh-home"
    env = {**os.environ, "BENTOML_HOME": str(fresh)}
    env.pop("BENTOML_CONFIG", None)
    _run_with_env([BENTOML, "import", str(archive)], env)
    models = _run_with_env([BENTOML, "models", "list", "-o", "json"], env)
    assert {m["tag"] for m in json.loads(models)} >= {"iris:v1", "breast_cancer:v1", "diabetes:v1"}

    name, version = built["bento"].split(":")
    port, grpc_port = free_ports(2)
    env |= {
        "BENTOML_CONFIG": str(fresh / "bentos" / name / version / "src" / "configuration.yaml"),
        "MODEL_SERVER_GRPC_HOST": "127.0.0.1",
        "MODEL_SERVER_GRPC_PORT": str(grpc_port),
        **ONE_WORKER,
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        # Outside the work tree, so that only the imported Bento's code can be imported.
        process = subprocess.Popen(
            [BENTOML, "serve", built["bento"], "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        body = _first_prediction(process, port, log)
        assert body["tag"] == "iris:v1"
        assert body["predictions"] == expected("iris:v1", np.asarray([IRIS_ROW]))["predictions"]
        assert str(fresh / "bentos" / name / version) in log.read_text(errors="replace")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _first_prediction(process: subprocess.Popen[bytes], port: int, log: Path) -> Any:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, f"bentoml serve exited:\n{log.read_text(errors='replace')[-3000:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                url = f"http://127.0.0.1:{port}/v1/models/iris/versions/v1/predict"
                response = httpx.post(url, json={"instances": [IRIS_ROW]}, timeout=30)
                assert response.status_code == 200, response.text
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"bentoml serve not ready:\n{log.read_text(errors='replace')[-3000:]}")
