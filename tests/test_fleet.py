"""A fleet: three `bentoml serve` replicas sharing one store folder, behind nginx (round
robin). Under 16 clients through nginx, a tag pushed to replica 1 goes live through
changes made on replicas 2 and 3, a replica killed and started again comes back on the
current routing, and every answer's tag belongs to the routing of its revision; pushes
that must be refused store nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from model_server.local_server import (
    ONE_WORKER,
    RunningServer,
    free_ports,
    launch,
    ready_on_free_ports,
    wait_until_ready,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "fleet-admin-key"
API_KEY = "fleet-api-key"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
API = {"authorization": f"Bearer {API_KEY}"}
ROW = [5.1, 3.5, 1.4, 0.2]
CLIENTS = 16
PUSHED = "iris:v9"  # trained by the test, pushed to the fleet
MAX_PUSH_BYTES = 8_000_000


@dataclass
class Fleet:
    replicas: list[RunningServer]
    config: Path
    shared: Path
    env: list[dict[str, str]]
    balancer: str  # nginx's URL
    nginx: subprocess.Popen[bytes]
    restarted: list[RunningServer] = field(default_factory=list)

    def restart(self, index: int) -> RunningServer:
        """Kill replica `index` (SIGKILL, every process of it) and start it again on its ports.

        BentoML's workers run in process groups of their own, so killing the arbiter's group
        would leave them running, orphaned and still accepting on the replica's port."""
        old = self.replicas[index]
        workers = psutil.Process(old.process.pid).children(recursive=True)
        os.killpg(old.process.pid, signal.SIGKILL)
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        psutil.wait_procs(workers, timeout=10)
        old.process.wait()
        new = launch(self.config, self.env[index], ports=(old.port, old.grpc_port))
        self.replicas[index] = new
        self.restarted.append(old)
        return new


@pytest.fixture(scope="module")
def fleet(trained_default_models: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        # Failing, not skipping: a silent skip would pass CI without a fleet ever tested.
        pytest.fail("nginx is missing: install the Debian package nginx (tests/system_tools.sh does)")
    from training.recipes import DEFAULT_SEED
    from training.register import tag_exists, train_and_register

    if not tag_exists(PUSHED):  # in this test process's store only: the fleet gets it by a push
        train_and_register("iris", PUSHED.split(":")[1], "logistic_regression", DEFAULT_SEED + 1)
    folder = tmp_path_factory.mktemp("fleet")
    shared = folder / "shared"
    # The shared folder starts empty: the replicas fill it with the configured tags from
    # their own store (as a fleet's first pods do from the image), not with PUSHED.
    config = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    service = config["services"]["TabularModelServer"]
    service["model_server"]["models"] = {"iris": service["model_server"]["models"]["iris"]}
    config_path = folder / "configuration.yaml"
    config_path.write_text(yaml.safe_dump(config))
    envs = [
        {
            "MODEL_SERVER_SHARED_STORE": str(shared),
            "MODEL_SERVER_REPLICA_NAME": f"replica-{index + 1}",
            "MODEL_SERVER_ADMIN_KEYS": ADMIN_KEY,
            "MODEL_SERVER_API_KEYS": API_KEY,
            "MODEL_SERVER_MAX_PUSH_BYTES": str(MAX_PUSH_BYTES),
            # Replica 1 runs configuration.yaml's two workers, the others one each: a fleet
            # of replicas with one and with several workers, four workers in all.
            **(ONE_WORKER if index else {}),
        }
        for index in range(3)
    ]
    ports = free_ports(2 * len(envs))  # distinct: none is bound before all start
    # started together, ready in about one start's time
    launched = [launch(config_path, env, ports=(ports[2 * i], ports[2 * i + 1])) for i, env in enumerate(envs)]
    started = list(launched)  # every server started, stopped at the end

    def start_again(index: int) -> RunningServer:
        started.append(launch(config_path, envs[index]))  # on new free ports
        return started[-1]

    process: subprocess.Popen[bytes] | None = None
    running: Fleet | None = None
    try:
        replicas = [ready_on_free_ports(server, partial(start_again, i), 120) for i, server in enumerate(launched)]
        balancer_port = free_ports(1)[0]  # picked once the replicas hold theirs, and bound at once
        process = _start_nginx(nginx, folder / "nginx", balancer_port, [r.port for r in replicas])
        running = Fleet(replicas, config_path, shared, envs, f"http://127.0.0.1:{balancer_port}", process)
        yield running
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
        for server in started + (running.replicas if running is not None else []):
            server.stop()


def _start_nginx(nginx: str, prefix: Path, port: int, upstreams: list[int]) -> subprocess.Popen[bytes]:
    """nginx in the foreground as this test's own process, round robin over the replicas.
    A replica that refuses connections, answers 503 (starting, stopping) or does not answer
    in 15 s is skipped, so a request is retried on another replica, POST included."""
    (prefix / "logs").mkdir(parents=True)
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in upstreams)
    (prefix / "nginx.conf").write_text(
        f"""
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 64m;
    upstream fleet {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fleet;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 3;
            # A replica that starts again listens before its workers accept: a request
            # waiting there goes to another replica after this, not after nginx's 60 s.
            proxy_read_timeout 15s;
        }}
    }}
}}
"""
    )
    process = subprocess.Popen(
        [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=(prefix / "logs" / "stderr.log").open("wb"),
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert process.poll() is None, (prefix / "logs" / "stderr.log").read_text()
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError("nginx did not answer")


def admin(url: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, f"{url}{path}", json=body, headers=ADMIN, timeout=120)


def _view_once_workers_load(url: str, replica: str, workers: int, timeout: float = 60) -> dict[str, Any]:
    """The admin view once `workers` workers of `replica` have loaded a revision (not -1)."""
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = admin(url, "GET", "/v1/admin/models").json()
        mine = [w for w in view["workers"] if w["replica"] == replica]
        if len(mine) == workers and all(w["revision"] >= 0 for w in mine):
            return view
        assert time.monotonic() < deadline, f"{replica}'s workers after {timeout} s: {mine}"
        time.sleep(0.2)


def push(url: str, tag: str, *extra: str, key: str | None = ADMIN_KEY) -> subprocess.CompletedProcess[str]:
    """`python -m model_server.admin push TAG --url URL`, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if k != "MODEL_SERVER_ADMIN_KEY"}
    if key is not None:
        env["MODEL_SERVER_ADMIN_KEY"] = key
    command = [sys.executable, "-m", "model_server.admin", "push", tag, "--url", url, *extra]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def audit_lines(fleet: Fleet, message: str) -> list[dict[str, Any]]:
    lines = []
    for server in fleet.replicas + fleet.restarted:
        for line in server.log().splitlines():
            if '"logger": "model_server.audit"' in line and message in line:
                lines.append(json.loads(line))
    return lines


def stored(shared: Path) -> list[str]:
    """Every name/version folder in the shared store."""
    models = shared / "models"
    return sorted(f"{n.name}/{v.name}" for n in models.iterdir() if n.is_dir() for v in n.iterdir() if v.is_dir())


@dataclass
class Answer:
    sent: float
    status: int
    tag: str | None
    revision: int | None
    error: str = ""


async def _client(url: str, stop: asyncio.Event, answers: list[Answer]) -> None:
    # Longer than nginx's read timeout and retries: an answer that comes late is late, not lost.
    async with httpx.AsyncClient(timeout=120, headers=API) as client:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = await client.post(f"{url}/v1/models/iris/predict", json={"instances": [ROW]})
                revision = response.headers.get("x-routing-revision")
                answers.append(
                    Answer(
                        sent,
                        response.status_code,
                        response.headers.get("x-model-tag"),
                        None if revision is None else int(revision),
                        "" if response.status_code == 200 else response.text[:200],
                    )
                )
            except httpx.HTTPError as exc:
                answers.append(Answer(sent, 0, None, None, repr(exc)))


def _all_replicas_at(result: dict[str, Any], revision: int) -> None:
    replicas = {r["replica"]: r["revision"] for r in result["replicas"]}
    assert replicas == {f"replica-{i}": revision for i in (1, 2, 3)}, result["replicas"]
    assert len(result["workers"]) == 4 and result["workers_behind"] == []


def test_push_canary_promote_and_rollback_across_replicas_under_load_fail_no_request(fleet: Fleet) -> None:
    r1, r2, r3 = (server.url for server in fleet.replicas)
    assert stored(fleet.shared) == ["iris/v1", "iris/v2"]
    start = admin(r1, "GET", "/v1/admin/models").json()
    assert {r["replica"] for r in start["replicas"]} == {"replica-1", "replica-2", "replica-3"}
    revisions: dict[int, set[str]] = {start["revision"]: {"iris:v1", "iris:v2"}}
    answers: list[Answer] = []
    changes: list[tuple[str, int]] = []
    pushed: dict[str, str] = {}

    async def change(name: str, url: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = await asyncio.to_thread(admin, url, method, path, body)
        assert response.status_code == 200, f"{name}: {response.status_code} {response.text}"
        result: dict[str, Any] = response.json()
        _all_replicas_at(result, result["revision"])
        revisions[result["revision"]] = {v["tag"] for v in result["routing"]["variants"]}
        changes.append((name, result["revision"]))
        return result

    async def scenario() -> None:
        stop = asyncio.Event()
        clients = [asyncio.create_task(_client(fleet.balancer, stop, answers)) for _ in range(CLIENTS)]
        try:
            await asyncio.sleep(1.0)
            done = await asyncio.to_thread(push, r1, PUSHED)
            assert done.returncode == 0, done.stderr
            pushed["output"] = done.stdout
            canary = {"variants": [{"tag": "iris:v1", "weight": 90}, {"tag": PUSHED, "weight": 10}]}
            await change("canary", r2, "PUT", "/v1/admin/models/iris", canary)
            await asyncio.sleep(1.0)
            # Killed and started again: it comes back on the current routing, from the shared store.
            restarted = await asyncio.to_thread(fleet.restart, 0)
            await asyncio.to_thread(wait_until_ready, restarted, 120)
            # Ready means one worker answers; the other may still be loading its models.
            view = await asyncio.to_thread(_view_once_workers_load, restarted.url, "replica-1", 2)
            pushed["after_restart"] = json.dumps(view)
            await change("promote", r3, "POST", "/v1/admin/models/iris/promote", {"tag": PUSHED})
            await asyncio.sleep(1.0)
            await change("rollback", r2, "POST", "/v1/admin/models/iris/rollback")
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            await asyncio.gather(*clients)

    asyncio.run(scenario())

    print(f"{len(answers)} answers through nginx over revisions {sorted({a.revision or 0 for a in answers})}")
    failed = [a for a in answers if a.status != 200]
    assert failed == [], f"{len(failed)} failed requests of {len(answers)}, first {failed[:3]}"
    assert len(answers) > 300
    # Every answer's tag belongs to the routing of the revision in its header.
    wrong = [a for a in answers if a.tag not in revisions[a.revision]]  # type: ignore[index]
    assert wrong == [], wrong[:3]
    by_revision: dict[int, set[str]] = {}
    for answer in answers:
        by_revision.setdefault(answer.revision, set()).add(answer.tag)  # type: ignore[arg-type]
    (_, canary), (_, promoted), (_, rolled_back) = changes
    assert [r for _, r in changes] == [start["revision"] + 1, start["revision"] + 2, start["revision"] + 3]
    assert by_revision[promoted] == {PUSHED}
    assert revisions[rolled_back] == {"iris:v1", PUSHED}
    # The push: in the shared store, audited with the archive's sha256 by replica 1.
    assert (fleet.shared / "models" / "iris" / "v9").is_dir()
    [line] = audit_lines(fleet, "model pushed")
    assert line["tag"] == PUSHED and line["replica"] == "replica-1"
    assert line["sha256"] in pushed["output"] and len(line["sha256"]) == 64
    # The restarted replica came back on the canary's revision, serving the pushed tag.
    view = json.loads(pushed["after_restart"])
    assert view["revision"] == canary
    mine = [w for w in view["workers"] if w["replica"] == "replica-1"]
    assert len(mine) == 2 and all(w["revision"] == canary and PUSHED in w["loaded_tags"] for w in mine)


def test_pushes_that_must_be_refused_store_nothing(fleet: Fleet, tmp_path: Path) -> None:
    import bentoml
    from sklearn.dummy import DummyClassifier

    url = fleet.replicas[1].url
    before, audited = stored(fleet.shared), len(audit_lines(fleet, "model pushed"))
    archive = Path(bentoml.models.export_model("iris:v1", str(tmp_path / "iris.bentomodel"))).read_bytes()
    # A scikit-learn model that `python -m training` did not register: no input schema.
    model = DummyClassifier().fit([[0.0], [1.0]], [0, 1])
    bentoml.sklearn.save_model("fleet-foreign:v1", model)
    try:
        exported = bentoml.models.export_model("fleet-foreign:v1", str(tmp_path / "foreign.bentomodel"))
        foreign = Path(exported).read_bytes()
    finally:
        bentoml.models.delete("fleet-foreign:v1")
    octet = {"content-type": "application/octet-stream"}

    def post(body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{url}/v1/admin/store", content=body, headers={**octet, **headers}, timeout=60)

    cases = [
        ("no key", archive, {}, 401, None),
        ("an API key", archive, API, 401, None),
        ("a foreign archive", foreign, ADMIN, 400, "foreign_archive"),
        ("not an archive", b"PK\x03\x04 not a model at all", ADMIN, 400, "not_an_archive"),
        ("oversized", b"\0" * (MAX_PUSH_BYTES + 1), ADMIN, 413, "too_large"),
        ("an existing tag", archive, ADMIN, 409, "tag_exists"),
        ("a serving tag, forced", archive, {**ADMIN, "x-force": "true"}, 409, "tag_serving"),
    ]
    for name, body, headers, status, kind in cases:
        response = post(body, headers)
        assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
        if kind is not None:
            assert response.json()["detail"][0]["type"] == kind, f"{name}: {response.text}"
    assert "max_push_bytes" in post(b"\0" * (MAX_PUSH_BYTES + 1), ADMIN).json()["error"]
    # The command line says why, and fails.
    refused = push(url, "iris:v1")
    assert refused.returncode == 1 and "already in the model store" in refused.stderr
    without_key = push(url, "iris:v1", key=None)
    assert without_key.returncode == 1 and "HTTP 401" in without_key.stderr
    assert stored(fleet.shared) == before
    assert list((fleet.shared / ".incoming").iterdir()) == []
    assert len(audit_lines(fleet, "model pushed")) == audited
