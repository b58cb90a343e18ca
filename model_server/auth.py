"""API keys: which callers may use the server."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from .settings import ServerSettings, SettingsError

KEYS_ENV = "MODEL_SERVER_API_KEYS"
ADMIN_KEYS_ENV = "MODEL_SERVER_ADMIN_KEYS"


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


def fingerprint(presented: str | None) -> str:
    """Who made an admin change, for the audit log: a short hash of the key, never the key."""
    if not presented:
        return "anonymous"
    scheme, _, value = presented.partition(" ")
    candidate = (value if scheme.lower() == "bearer" else presented).strip()
    return "key:" + hashlib.blake2b(candidate.encode(), digest_size=6).hexdigest()


def load_api_keys(settings: ServerSettings) -> ApiKeys:
    """Keys from MODEL_SERVER_API_KEYS (comma-separated) and `api_keys_file` (one per line)."""
    return ApiKeys(_keys(KEYS_ENV, settings.api_keys_file, "api_keys_file"))


def load_admin_keys(settings: ServerSettings) -> ApiKeys:
    """Admin keys from MODEL_SERVER_ADMIN_KEYS and `admin_keys_file`; none turns the admin API off."""
    return ApiKeys(_keys(ADMIN_KEYS_ENV, settings.admin_keys_file, "admin_keys_file"))


def _keys(variable: str, file: str | None, setting: str) -> list[str]:
    keys = [k.strip() for k in os.environ.get(variable, "").split(",") if k.strip()]
    if file:
        try:
            text = Path(file).read_text()
        except OSError as exc:
            raise SettingsError(f"Configuration '{setting}' '{file}' cannot be read: {exc.strerror}.") from None
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return keys
