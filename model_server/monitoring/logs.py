"""Structured logs: JSON lines for this server's loggers, and the access log that the
edge (edge.py) writes once per request on every transport."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any, TextIO

import orjson

access_log = logging.getLogger("model_server.access")


class AccessLog:
    """One JSON line per request, with the fields of `JsonFormatter`'s lines, written in bulk
    (compact JSON by orjson: a line costs well under a microsecond to make).

    Lines produced in one turn of the event loop are written together at the end of
    that turn, in writes of at most 4 kB (atomic on a pipe), so under load the log costs
    a few microseconds per request rather than a locked, flushed write each (a visible
    share of the CPU per request under load). Outside an event loop a line is written at once.
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
        self._pending.append(orjson.dumps(entry, default=str).decode())
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


def log_access(transport: str, rid: str, target: str, status: int, tag: str | None, started: float) -> None:
    """One JSON line per request: which request, where, which tag, how it ended, how long.

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
