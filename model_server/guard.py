"""What every front checks before the core sees a request: API keys, the concurrency
limit, and request ids; plus the structured access log. HTTP (fast_path.py) and gRPC
(oip_grpc.py) use the same objects, so the rules are the same on both."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from .settings import ServerSettings, SettingsError

KEYS_ENV = "MODEL_SERVER_API_KEYS"
access_log = logging.getLogger("model_server.access")


class ApiKeys:
    """Accepted API keys; several at once so that keys can be rotated without downtime."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys if k]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def accepts(self, presented: str | None) -> bool:
        """Whether `presented` (a bare key or `Bearer <key>`) is one of the keys.

        Compares against every key in constant time, so timing tells nothing about
        which key, or how much of one, matched.
        """
        if not self._keys:
            return True
        if not presented:
            return False
        scheme, _, value = presented.partition(" ")
        candidate = (value if scheme.lower() == "bearer" else presented).strip().encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        return matched


def load_api_keys(settings: ServerSettings) -> ApiKeys:
    """Keys from MODEL_SERVER_API_KEYS (comma-separated) and `api_keys_file` (one per line)."""
    keys = [k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip()]
    if settings.api_keys_file:
        try:
            text = Path(settings.api_keys_file).read_text()
        except OSError as exc:
            raise SettingsError(
                f"Configuration 'api_keys_file' '{settings.api_keys_file}' cannot be read: {exc.strerror}."
            ) from None
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return ApiKeys(keys)


class ConcurrencyGate:
    """Counts requests in flight in this worker and refuses those beyond the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def try_enter(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1


def request_id(presented: str | None) -> str:
    """The caller's id when it looks like one (printable, at most 128 chars), else a new one.

    New ids are a random per-process prefix and a counter: unique across workers and
    restarts like a UUID, without a system call per request.
    """
    if presented and len(presented) <= 128 and presented.isprintable():
        return presented
    return f"{_ids.prefix}{next(_ids.counter):08x}"


class _RequestIds:
    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(1)


_ids = _RequestIds()


class AccessLog:
    """One JSON line per request, in the format of `JsonFormatter`, written in bulk.

    Lines produced in one turn of the event loop are written together at the end of
    that turn, in writes of at most 4 kB (atomic on a pipe), so under load the log costs
    a few microseconds per request rather than a locked, flushed write each (which was
    a seventh of the CPU per request). Outside an event loop a line is written at once.
    Lines go to stderr, not through `logging` handlers.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._pending: list[str] = []
        self.dropped = 0
        self._second = -1
        self._stamp = ""

    def record(self, fields: dict[str, Any]) -> None:
        now = time.time()
        if int(now) != self._second:
            self._second = int(now)
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))
        entry = {"time": self._stamp, "level": "INFO", "logger": access_log.name, "message": "access", **fields}
        self._pending.append(json.dumps(entry))
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        lines, self._pending = self._pending, []
        if not lines:
            return
        stream = self._stream or sys.stderr
        try:
            for chunk in _chunks(lines, ATOMIC_WRITE_BYTES):
                stream.write(chunk)
                stream.flush()
        except (OSError, ValueError):
            # A closed or broken log stream must not fail requests; the lines are lost.
            self.dropped += len(lines)


# Workers share stderr; a write of at most PIPE_BUF bytes to a pipe is never interleaved
# with another process's, so lines from two workers cannot mix mid-line.
ATOMIC_WRITE_BYTES = 4096


def _chunks(lines: list[str], limit: int) -> list[str]:
    """Whole lines, newline-terminated, joined into pieces of at most `limit` characters
    (a longer line is a piece on its own)."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        if current and size + len(line) + 1 > limit:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(line + "\n")
        size += len(line) + 1
    if current:
        pieces.append("".join(current))
    return pieces


ACCESS_LOG = AccessLog()


def log_access(transport: str, rid: str, target: str, status: int | str, tag: str | None, started: float) -> None:
    """One JSON line per request to a front: which request, where, which tag, how it ended, how long.

    Turned off by the `access_log` setting, or by raising the level of the
    `model_server.access` logger above INFO.
    """
    if access_log.isEnabledFor(logging.INFO):
        ACCESS_LOG.record(
            {
                "request_id": rid,
                "transport": transport,
                "target": target,
                "tag": tag,
                "status": status,
                "latency_ms": round(1000 * (time.perf_counter() - started), 3),
            }
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's fields, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging() -> None:
    """JSON lines on stderr for this server's loggers (BentoML keeps its own format)."""
    logger = logging.getLogger("model_server")
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
