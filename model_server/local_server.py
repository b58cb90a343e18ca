"""Start and stop a real `bentoml serve` of this project on free ports (tests, benchmark, soak)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from model_server.constants import SERVICE_NAME

ROOT = Path(__file__).resolve().parent.parent
BENTOML = str(Path(sys.executable).parent / "bentoml")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1. Every probe stays bound until all are
    chosen: probes closed one by one may be handed the same port twice."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    grpc_port: int
    log_path: Path
    ca_file: Path | None = None  # the server speaks TLS with a certificate this file verifies
    home: Path | None = None  # its BENTOML_HOME

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client needs to trust this server."""
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        # BentoML's workers run in process groups of their own: an arbiter that had to be
        # killed leaves them running, so they are found now and ended after it.
        workers = _descendants(self.process.pid) if self.process.poll() is None else []
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        _reap_group(self.process.pid)
        _reap(workers)
        return self.process.returncode


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _reap(processes: list[psutil.Process], grace_s: float = 5.0) -> None:
    """Kill those of `processes` still running `grace_s` after their server stopped."""
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_s)


def _reap_group(group: int, grace_s: float = 5.0) -> None:
    """Kill what is left of a stopped server's process group: a worker still starting when
    the server was told to stop can outlive it, and nothing else would end it."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


SERVICE = f"service:{SERVICE_NAME}"
# Settings that start one worker instead of configuration.yaml's two, for a server whose
# test does not need two (BentoML reads BENTOML_CONFIG_OPTIONS over BENTOML_CONFIG).
ONE_WORKER = {"BENTOML_CONFIG_OPTIONS": f"services.{SERVICE_NAME}.workers=1"}


def launch(
    config: Path,
    extra_env: dict[str, str] | None = None,
    service: str = SERVICE,
    ports: tuple[int, int] | None = None,
    checkout: Path = ROOT,
) -> RunningServer:
    """Start `bentoml serve` without waiting for it, on `ports` (HTTP, gRPC) or free ones,
    with the code of `checkout` (this project's tree, or another commit's worktree)."""
    port, grpc_port = ports or free_ports(2)
    log_path = Path(tempfile.mkstemp(prefix="bentoml-serve-", suffix=".log")[1])
    env = {
        **os.environ,
        "BENTOML_HOME": _private_home(),
        "BENTOML_CONFIG": str(config),
        "MODEL_SERVER_GRPC_PORT": str(grpc_port),
        **(extra_env or {}),
    }
    command = [BENTOML, "serve", service, "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    home = Path(env["BENTOML_HOME"])
    return RunningServer(process=process, port=port, grpc_port=grpc_port, log_path=log_path, home=home)


PORT_ATTEMPTS = 3  # starts of a server on free ports, when another process takes one first
PORT_TAKEN = "Address already in use"  # what the arbiter (HTTP) and grpcio (gRPC) log


class ServerExited(RuntimeError):
    """The server's process ended before it was ready (its log's end is the message)."""


class PortTaken(ServerExited):
    """The server could not have its HTTP or gRPC port to itself: another process holds it."""


def start_server(
    config: Path,
    extra_env: dict[str, str] | None = None,
    timeout: float = 90,
    service: str = SERVICE,
    ca_file: Path | None = None,
    ports: tuple[int, int] | None = None,
    checkout: Path = ROOT,
) -> RunningServer:
    """Start `bentoml serve` and wait until /readyz answers 200 from the process we started
    (and, for this project's service, until its gRPC port accepts connections). Free ports
    are picked when `ports` is None; if another process takes one before the server binds
    it, the server is started again on new ones."""

    def start() -> RunningServer:
        server = launch(config, extra_env, service, ports, checkout)
        server.ca_file = ca_file
        return server

    attempts = 1 if ports is not None else PORT_ATTEMPTS
    return ready_on_free_ports(start(), start, timeout, wait_for_grpc=service == SERVICE, attempts=attempts)


def ready_on_free_ports(
    server: RunningServer,
    start_again: Callable[[], RunningServer],
    timeout: float = 90,
    wait_for_grpc: bool = True,
    attempts: int = PORT_ATTEMPTS,
) -> RunningServer:
    """A launched server once ready; while another process took one of its ports first
    (PortTaken), the one `start_again` launches on new free ports, `attempts` in all."""
    for _ in range(attempts - 1):
        try:
            return wait_until_ready(server, timeout, wait_for_grpc)
        except PortTaken:
            server = start_again()
    return wait_until_ready(server, timeout, wait_for_grpc)


def wait_until_ready(server: RunningServer, timeout: float = 90, wait_for_grpc: bool = True) -> RunningServer:
    """Wait until a launched server's /readyz answers 200 (and its gRPC port accepts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = server.process.poll() is not None
        log = server.log()
        if exited or PORT_TAKEN in log:
            # A worker whose gRPC port is taken fails its start-up; the arbiter lives on.
            server.stop()
            failure = PortTaken if PORT_TAKEN in log else ServerExited
            how = f"exited with {server.process.returncode}" if exited else "could not bind a port"
            raise failure(f"server {how}:\n{log[-3000:]}")
        try:
            ready = httpx.get(f"{server.url}/readyz", timeout=2, verify=server.verify).status_code == 200
            if ready and (not wait_for_grpc or _accepts(server.grpc_port)):
                shared = _listened_by_others(server)
                if shared:
                    server.stop()
                    raise PortTaken(f"other processes listen on the server's ports too: {shared}")
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"server not ready after {timeout} s:\n{server.log()[-3000:]}")


def _private_home() -> str:
    """A BENTOML_HOME for one server that shares the test model store.

    BentoML empties $BENTOML_HOME/prometheus_multiproc_dir when a server starts, so two
    servers on one home would wipe each other's metrics.
    """
    shared = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml") / "models"
    shared.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="bentoml-home-"))
    (home / "models").symlink_to(shared)
    return str(home)


def _listened_by_others(server: RunningServer) -> list[tuple[int, int | None]]:
    """(port, pid) of sockets that listen on the server's ports outside its processes. gRPC
    binds with SO_REUSEPORT, so a port that another server of the same kind had taken is
    bound without an error, and the kernel would share its connections between the two."""
    ours = {server.process.pid, *(p.pid for p in _descendants(server.process.pid))}
    try:
        found = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:  # other users' sockets are not visible: nothing to say
        return []
    return [
        (c.laddr.port, c.pid)
        for c in found
        if c.status == psutil.CONN_LISTEN
        and c.laddr.port in (server.port, server.grpc_port)
        and c.pid is not None  # a socket whose process is not visible says nothing
        and c.pid not in ours
    ]


def _accepts(port: int) -> bool:
    """Whether something listens on the port (the gRPC server starts just after HTTP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0
