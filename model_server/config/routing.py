"""What serves each model name, as one revisioned document that every worker applies.

The routing is `{name: variants (tag, weight), shadow}` for every served name, with a
revision number that grows by one with each change. configuration.yaml gives the
initial routing (revision 0). A change made on the running server (the admin API) is
written to the routing file atomically, under a lock, so two workers never write the
same revision; every worker watches the file and applies what it finds there, and
reports the revision it serves in a status file, so that the worker that made a change
can wait until all of them serve it.

The routing file is YAML (JSON is YAML too). It is also what a Kubernetes ConfigMap
mounted in every pod can carry: then the file is read-only, the pods follow it, and
the admin API refuses writes with 409 (`routing_file_writable: false`).

The last good routing read from the file, and the highest revision seen, are kept beside
it (`.routing.yaml.last-good`; for a read-only file, in the workers' status directory).
A file that disappears or turns invalid then leaves every worker, also one that starts
meanwhile, on that routing (logged, and shown by GET /v1/admin/models), and the next
change gets a revision above every one seen, so that a revision never names two routings.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model_server.config.settings import ModelName, ServedModel, ServerSettings, tags_of
from model_server.files import write_atomically
from model_server.processes import is_running, start_mark

log = logging.getLogger(__name__)


class RoutingFileError(Exception):
    """The routing file cannot be read or parsed; the message says where and why."""


class Change(BaseModel):
    """When and by whom a name's routing last changed, and what it was before (for rollback)."""

    model_config = ConfigDict(extra="forbid")

    at: str = Field(description="UTC time of the change, ISO 8601.")
    by: str = Field(description="Who made it: the admin key's fingerprint, or 'configuration'.")
    revision: int = Field(description="The routing revision the change made.")
    previous: ServedModel | None = Field(default=None, description="The name's routing before the change.")


class Routing(BaseModel):
    """Every served name's variants and shadow, at one revision."""

    model_config = ConfigDict(extra="forbid")

    revision: int = Field(default=0, ge=0, description="Grows by one with each change.")
    models: dict[ModelName, ServedModel] = Field(description="Model name -> the variants that serve it.")
    changes: dict[ModelName, Change] = Field(default_factory=dict, description="The last change of each name.")

    @classmethod
    def initial(cls, settings: ServerSettings) -> Routing:
        """The routing configuration.yaml gives, at revision 0."""
        return cls(revision=0, models=dict(settings.models))

    def tags(self) -> list[str]:
        """Every tag to load: the variants and the shadows, each once, in order."""
        return tags_of(self.models)

    def window(self) -> str:
        """This routing's revision and a short digest of what it serves: two routings
        with one revision but other variants (a routing file edited by hand without
        raising its revision) get different windows, and every worker the same one."""
        served = {name: model.model_dump(mode="json") for name, model in self.models.items()}
        digest = hashlib.sha256(json.dumps(served, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.revision}-{digest}"

    def describe(self, name: str) -> dict[str, Any]:
        """A served name's routing and last change, as the admin API and CLI show it."""
        served, change = self.models[name], self.changes.get(name)
        return {
            "name": name,
            **served.model_dump(mode="json", exclude_none=True),
            "shadow": served.shadow,
            "changed_at": change.at if change else None,
            "changed_by": change.by if change else "configuration",
            "changed_in_revision": change.revision if change else 0,
            "rollback_to": None
            if change is None or change.previous is None
            else change.previous.model_dump(mode="json", exclude_none=True),
        }

    def to_text(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)

    @classmethod
    def from_text(cls, text: str, where: str) -> Routing:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RoutingFileError(f"Routing file '{where}' is not valid YAML: {exc}") from None
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise RoutingFileError(f"Routing file '{where}': '{key}' is invalid: {first['msg']}.") from None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class FileState:
    """What the routing file gives a worker to serve, and what is wrong with it."""

    routing: Routing | None  # the file's; else the last good one kept; None: neither exists
    problem: str | None = None  # why it is not the file's own routing (missing, invalid, unreadable)
    missing: bool = False  # the problem is that the file is gone (not that it cannot be used)


@dataclass(frozen=True)
class _Kept:
    routing: Routing  # the last good routing the file held
    highest: int  # the highest revision the file ever held


class RoutingFile:
    """The routing file: read, changed atomically under a lock, and watched.

    Readers never see a half-written file: a change is written to a temporary file in
    the same directory and renamed over the old one. Writers take an exclusive lock on
    a lock file beside it, so concurrent changes from several workers are serialized
    and each gets its own revision.
    """

    def __init__(self, path: Path, writable: bool = True) -> None:
        self.path = path
        self.writable = writable
        self._seen: tuple[int, int, int] | None = None
        # The last good routing and the highest revision: beside the file, where every
        # worker and replica sharing it sees them and they outlive a restart; for a
        # read-only file (a mounted ConfigMap), in the workers' status directory.
        where = path.parent if writable else state_directory(path)
        self._kept_path = where / (f".{path.name}.last-good" if writable else "last-good-routing")
        self._lock_path = where / (f".{path.name}.lock" if writable else "lock")
        # Why this worker does not serve the file's own routing (the last state() read).
        self.problem: str | None = None

    def read(self) -> Routing | None:
        """The routing in the file, or None when there is no file yet."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RoutingFileError(f"Routing file '{self.path}' cannot be read: {exc.strerror}.") from None
        return Routing.from_text(text, str(self.path))

    def state(self) -> FileState:
        """The routing to serve: the file's; else, when the file is missing after one existed
        or cannot be used, the last good routing it held, with the problem; else none."""
        try:
            routing = self.read()
        except RoutingFileError as exc:
            kept = self._kept()
            if kept is None:
                state = FileState(None, f"{exc} No good routing from it was kept to serve instead.")
            else:
                keeps = f"Serving the last good routing it held (revision {kept.routing.revision}) until it is fixed."
                state = FileState(kept.routing, f"{exc} {keeps}")
        else:
            kept = None if routing is not None else self._kept()
            if kept is None:
                state = FileState(routing)
            else:
                again = "an admin change or reset writes it again" if self.writable else "restore it"
                state = FileState(
                    kept.routing,
                    f"Routing file '{self.path}' is missing, but it existed (up to revision {kept.highest}). "
                    f"Serving the last routing it held (revision {kept.routing.revision}); {again}.",
                    missing=True,
                )
        self.problem = state.problem
        return state

    def serving(self, initial: Routing) -> Routing:
        """What a worker that starts now serves: `state()`'s routing, else `initial`.
        RoutingFileError when the file cannot be used and no good routing was kept."""
        state = self.state()
        if state.problem is not None:
            if state.routing is None:
                raise RoutingFileError(state.problem)
            log.warning("%s", state.problem)
        return state.routing or initial

    def remember(self) -> None:
        """Keep the file's routing, read again under the lock, as the last good one, and
        its revision if it is the highest seen. Call it once a worker serves the file's
        routing. Blocking: call it in a thread."""
        try:
            with self._locked():
                routing = self.read()
                if routing is not None:
                    self._keep(routing)
        except RoutingFileError:
            return  # changed meanwhile into something unusable: the follower reads it next
        except OSError as exc:  # serving goes on; only a later disappearance would lack it
            log.warning("cannot keep the last good routing in %s: %s", self._kept_path, exc.strerror or exc)

    def changed(self) -> bool:
        """Whether the file differs from when this was last called (cheap: one stat)."""
        try:
            info = self.path.stat()
            seen = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._seen:
            return False
        self._seen = seen
        return True

    def update(self, change: Callable[[Routing], Routing], initial: Routing) -> tuple[Routing, Routing]:
        """Apply `change` to the current routing (the file's, else the last good one it
        held, else `initial`) and write the result with a revision above every one the
        file held, all under the lock: the routing before and after. Blocking: call it in
        a thread."""
        if not self.writable:
            raise PermissionError("the routing file is read-only")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            kept = self._kept()
            current = self.read() or (kept.routing if kept else initial)
            highest = max(current.revision, kept.highest if kept else 0)
            current = current.model_copy(update={"revision": highest})
            changed = change(current).model_copy(update={"revision": highest + 1})
            self._write(changed)
            self._keep(changed)
        return current, changed

    def forget(self) -> None:
        """Look at the file again at the next `changed()` (after a failed apply)."""
        self._seen = None

    def replace(self, routing: Routing) -> None:
        """Write `routing` as it is (the admin CLI's file mode, and tests)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._write(routing)
            self._keep(routing)

    def _kept(self) -> _Kept | None:
        """The last good routing kept, or None (none yet, or unreadable: then it is rewritten)."""
        try:
            kept = json.loads(self._kept_path.read_text())
            return _Kept(Routing.model_validate(kept["routing"]), int(kept["highest_revision"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s, which cannot be read: %s", self._kept_path, exc)
            return None

    def _keep(self, routing: Routing) -> None:
        """Keep `routing` as the last good one (under the lock)."""
        kept = self._kept()
        highest = max(routing.revision, kept.highest if kept else 0)
        if kept is not None and (kept.routing, kept.highest) == (routing, highest):
            return
        text = json.dumps({"highest_revision": highest, "routing": routing.model_dump(mode="json")})
        write_atomically(self._kept_path, text)

    def _write(self, routing: Routing) -> None:
        write_atomically(self.path, routing.to_text())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.writable:
            private_directory(self._lock_path.parent)
        # Read-only is enough for flock, and works whoever created the lock file.
        lock = os.open(self._lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)  # closing releases the lock


def state_directory(routing_path: Path) -> Path:
    """The directory in the machine's temporary space where the workers sharing a routing
    file report (WorkerStatus), named after the file, so that it is one place even when
    the file itself is read-only (a mounted ConfigMap)."""
    # absolute(), not resolve(): a mounted ConfigMap's file is a symlink into a dated
    # directory that changes with each update, and every worker must report to one place.
    digest = hashlib.blake2b(str(routing_path.absolute()).encode(), digest_size=6).hexdigest()
    return Path(tempfile.gettempdir()) / f"model-server-routing-{os.getuid()}-{digest}"


def private_directory(directory: Path) -> None:
    """Make `directory` (mode 0700), and refuse one that belongs to another user."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_uid != os.getuid():
        raise PermissionError(f"'{directory}' belongs to another user")


class WorkerStatus:
    """The revision each worker serves, one small file per worker process.

    By default the files live in a directory of the machine's temporary space named after
    the routing file, so that every worker sharing a routing file reports to the same place
    even when the routing file itself is read-only (a mounted ConfigMap). Files of processes
    that no longer exist are ignored and removed.

    In a fleet (`directory` on the shared store) every worker of every replica reports
    there, in a file named after its replica and pid, and rewrites it every
    `HEARTBEAT_S`: a report of this host whose process is gone is removed at once; one of
    another host is ignored once it is older than `STALE_S` (its replica died, or lost
    the volume) and removed later.
    """

    HEARTBEAT_S = 5.0
    STALE_S = 30.0
    FORGET_S = 3600.0

    def __init__(self, routing_path: Path, directory: Path | None = None, replica: str | None = None) -> None:
        self.shared = directory is not None
        self.directory = directory if directory is not None else state_directory(routing_path)
        self.host = socket.gethostname()
        self.replica = replica or self.host
        self.reported_at = 0.0  # time.monotonic() of this process's last report

    def report(self, revision: int, worker: str, tags: list[str]) -> None:
        """This worker serves `revision`, with `tags` loaded."""
        if self.shared:
            self.directory.mkdir(parents=True, exist_ok=True)
        else:
            private_directory(self.directory)
        pid = os.getpid()
        report = {
            "pid": pid,
            "started": start_mark(pid),
            "worker": worker,
            "revision": revision,
            "at": now(),
            "loaded_tags": tags,
            "replica": self.replica,
            "host": self.host,
            "heartbeat": time.time(),
        }
        # Rewritten every few seconds and worthless after a reboot: atomic, not durable.
        mode = 0o644 if self.shared else 0o600
        write_atomically(self.directory / self._file_name(pid), json.dumps(report), mode=mode, durable=False)
        self.reported_at = time.monotonic()

    def due(self) -> bool:
        """Whether this worker should report again to stay live (shared store only)."""
        return self.shared and time.monotonic() - self.reported_at >= self.HEARTBEAT_S

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / self._file_name(os.getpid())).unlink()

    def _file_name(self, pid: int) -> str:
        if not self.shared:
            return f"{pid}.json"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.replica)
        return f"{safe}-{pid}.json"

    def workers(self) -> list[dict[str, Any]]:
        """Every live worker's last report. Reports of processes that ended (or whose pid a
        new process now has) are removed; malformed ones are skipped."""
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                report = json.loads(path.read_text())
                pid, revision, started = int(report["pid"]), int(report["revision"]), report["started"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not self._live(report, pid, started, path):
                continue
            found.append({**report, "revision": revision})
        return found

    def _live(self, report: dict[str, Any], pid: int, started: Any, path: Path) -> bool:
        """Whether a report is of a live worker; dead ones are removed."""
        if report.get("host", self.host) == self.host:
            if started is not None and is_running(pid, started):
                return True
            with contextlib.suppress(OSError):
                path.unlink()
            return False
        # Another host's worker: its pid means nothing here; its heartbeat tells.
        try:
            age = time.time() - float(report["heartbeat"])
        except (KeyError, TypeError, ValueError):
            return False
        if age > self.FORGET_S:
            with contextlib.suppress(OSError):
                path.unlink()
        return age <= self.STALE_S

    def starting(self, worker: str) -> None:
        """Report a worker that is still loading its models (revision -1), so that a change
        made meanwhile waits for it too."""
        self.report(-1, worker, [])

    async def wait_for(self, revision: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until every live worker serves `revision` or later; the workers that do not
        after `timeout` seconds (empty when all do)."""
        deadline = time.monotonic() + timeout
        while True:
            behind = [w for w in self.workers() if w["revision"] < revision]
            if not behind or time.monotonic() >= deadline:
                return behind
            await asyncio.sleep(0.05)


def replicas_of(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The replicas of these workers' reports: each one's name, its workers' pids and the
    lowest revision they serve (a replica serves a revision once all its workers do)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for worker in workers:
        grouped.setdefault(str(worker.get("replica") or socket.gethostname()), []).append(worker)
    return [
        {
            "replica": name,
            "revision": min(w["revision"] for w in members),
            "workers": sorted(w["pid"] for w in members),
        }
        for name, members in sorted(grouped.items())
    ]
