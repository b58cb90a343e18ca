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
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .settings import ServedModel, ServerSettings


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
    models: dict[str, ServedModel] = Field(description="Model name -> the variants that serve it.")
    changes: dict[str, Change] = Field(default_factory=dict, description="The last change of each name.")

    @classmethod
    def initial(cls, settings: ServerSettings) -> Routing:
        """The routing configuration.yaml gives, at revision 0."""
        return cls(revision=0, models=dict(settings.models))

    def tags(self) -> list[str]:
        """Every tag to load: the variants and the shadows, each once, in order."""
        tags: list[str] = []
        for served in self.models.values():
            for tag in served.tags():
                if tag not in tags:
                    tags.append(tag)
        return tags

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

    def read(self) -> Routing | None:
        """The routing in the file, or None when there is no file yet."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RoutingFileError(f"Routing file '{self.path}' cannot be read: {exc.strerror}.") from None
        return Routing.from_text(text, str(self.path))

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

    def update(self, change: Callable[[Routing], Routing], initial: Routing) -> Routing:
        """Apply `change` to the current routing (the file's, else `initial`) and write the
        result with the next revision, all under the lock. Blocking: call it in a thread."""
        if not self.writable:
            raise PermissionError("the routing file is read-only")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            current = self.read() or initial
            changed = change(current).model_copy(update={"revision": current.revision + 1})
            self._write(changed)
        return changed

    def replace(self, routing: Routing) -> None:
        """Write `routing` as it is (the admin CLI's file mode, and tests)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._write(routing)

    def _write(self, routing: Routing) -> None:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            os.fchmod(descriptor, 0o644)  # mkstemp's 0600 would hide it from a server run as another user
            with os.fdopen(descriptor, "w") as out:
                out.write(routing.to_text())
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


class WorkerStatus:
    """The revision each worker serves, one small file per worker process.

    The files live in a directory of the machine's temporary space named after the
    routing file, so that every worker sharing a routing file reports to the same place
    even when the routing file itself is read-only (a mounted ConfigMap). Files of
    processes that no longer exist are ignored and removed.
    """

    def __init__(self, routing_path: Path) -> None:
        # absolute(), not resolve(): a mounted ConfigMap's file is a symlink into a dated
        # directory that changes with each update, and every worker must report to one place.
        digest = hashlib.blake2b(str(routing_path.absolute()).encode(), digest_size=6).hexdigest()
        self.directory = Path(tempfile.gettempdir()) / f"model-server-routing-{digest}"

    def report(self, revision: int, worker: str, tags: list[str]) -> None:
        """This worker serves `revision`, with `tags` loaded."""
        self.directory.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        path = self.directory / f"{pid}.json"
        temporary = path.with_suffix(".tmp")
        report = {"pid": pid, "worker": worker, "revision": revision, "at": now(), "loaded_tags": tags}
        temporary.write_text(json.dumps(report))
        os.replace(temporary, path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{os.getpid()}.json").unlink()

    def workers(self) -> list[dict[str, Any]]:
        """Every live worker's last report."""
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                report = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not _alive(int(report.get("pid", 0))):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found.append(report)
        return found

    def starting(self, worker: str) -> None:
        """Report a worker that is still loading its models (revision -1), so that a change
        made meanwhile waits for it too."""
        self.report(-1, worker, [])

    def wait_for(self, revision: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until every live worker serves `revision` or later; the workers that do not
        after `timeout` seconds (empty when all do). Blocking: call it in a thread."""
        deadline = time.monotonic() + timeout
        while True:
            behind = [w for w in self.workers() if w["revision"] < revision]
            if not behind or time.monotonic() >= deadline:
                return behind
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
