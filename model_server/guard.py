"""What every front checks before the core sees a request: API keys, the concurrency
limit, and request ids; plus the structured access log. HTTP (fast_path.py) and gRPC
(oip_grpc.py) use the same objects, so the rules are the same on both."""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
import uuid
from pathlib import Path

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
    """The caller's id when it looks like one (printable, at most 128 chars), else a new one."""
    if presented and len(presented) <= 128 and presented.isprintable():
        return presented
    return uuid.uuid4().hex


def log_access(transport: str, rid: str, target: str, status: int | str, tag: str | None, started: float) -> None:
    """One JSON line per request to a front: which request, where, which tag, how it ended, how long."""
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "access",
            extra={
                "fields": {
                    "request_id": rid,
                    "transport": transport,
                    "target": target,
                    "tag": tag,
                    "status": status,
                    "latency_ms": round(1000 * (time.perf_counter() - started), 3),
                }
            },
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
