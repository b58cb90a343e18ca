"""API keys: which callers may use the server."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from .settings import ServerSettings, SettingsError

KEYS_ENV = "MODEL_SERVER_API_KEYS"


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
