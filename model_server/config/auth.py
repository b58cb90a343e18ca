"""API keys: which callers may use the server; the audit fingerprints of admin keys; the
secrets that sign prediction ids."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from model_server.config.settings import ServerSettings, SettingsError

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
        """Whether `presented`, an Authorization value `Bearer <key>`, holds one of the keys.

        A key without the `Bearer` scheme is refused: only the documented form is accepted,
        so a key never works by accident in another header's format. Compares against every
        key in constant time, so timing tells nothing about which key, or how much of one,
        matched.
        """
        if not self._keys:
            return True
        token = bearer_token(presented)
        if token is None:
            return False
        candidate = token.encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        return matched


def bearer_token(presented: str | None) -> str | None:
    """The key in an Authorization value `Bearer <key>` (the scheme in any case), else None."""
    scheme, _, token = (presented or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def without_scheme(presented: str | None) -> bool:
    """Whether an Authorization value was sent, but not as `Bearer <key>` (a bare key)."""
    return bool(presented and presented.strip()) and bearer_token(presented) is None


class KeyFingerprints:
    """Who made an admin change, for the audit log: an HMAC-SHA256 of the key under the
    server's audit secret, never the key.

    The same key gives the same fingerprint in every worker and after a restart, as
    long as the secret is kept; without the secret, a fingerprint in a log tells nothing
    about the key, not even for a short one (a plain hash could be searched).
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def of(self, presented: str | None) -> str:
        token = bearer_token(presented)
        if token is None:
            return "anonymous"
        return "key:" + hmac.new(self._secret, token.encode(), hashlib.sha256).hexdigest()[:16]


def load_fingerprints(settings: ServerSettings) -> KeyFingerprints:
    """The fingerprints under the secret of `audit_secret_file`; without that setting, under
    the secret in BENTOML_HOME/audit-secret, created there (mode 0600) when it is missing."""
    path = settings.audit_secret_path()
    if settings.audit_secret_file is None and not path.exists():
        _create_secret(path)
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise SettingsError(f"Configuration 'audit_secret_file' '{path}' cannot be read: {exc.strerror}.") from None
    if len(secret) < 16:
        raise SettingsError(f"Configuration 'audit_secret_file' '{path}' must hold a secret of 16 bytes or more.")
    return KeyFingerprints(secret)


def load_prediction_secrets(settings: ServerSettings) -> list[bytes]:
    """The secrets of prediction ids: the first line of `prediction_secret_file` signs,
    every line verifies; without that setting, BENTOML_HOME/prediction-secret, created
    there (mode 0600) when it is missing."""
    path = settings.prediction_secret_path()
    if settings.prediction_secret_file is None and not path.exists():
        _create_secret(path, "prediction_secret_file")
    try:
        lines = [line.strip().encode() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not text"
        raise SettingsError(f"Configuration 'prediction_secret_file' '{path}' cannot be read: {reason}.") from None
    if not lines or any(len(line) < 16 for line in lines):
        raise SettingsError(
            f"Configuration 'prediction_secret_file' '{path}' must hold one secret of 16 bytes or more per line."
        )
    return lines


def _create_secret(path: Path, setting: str = "audit_secret_file") -> None:
    """Write a new random secret at `path`, unless another process (a worker starting
    beside this one) has just done so: the file appears whole, and only once."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
        try:
            os.link(draft, path)  # fails if the file exists: the first writer wins
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    except OSError as exc:
        raise SettingsError(
            f"The secret '{path}' cannot be created: {exc.strerror}; set '{setting}' to a file holding one."
        ) from None


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
