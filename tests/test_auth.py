"""API keys and the audit fingerprints of admin keys (model_server/config/auth.py)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from model_server.config.auth import ApiKeys, KeyFingerprints, load_fingerprints, without_scheme
from model_server.config.settings import ServerSettings, SettingsError
from model_server.errors import Unauthorized

ROOT = Path(__file__).resolve().parent.parent
SHORT_KEY = "k7"  # short enough that a plain hash of it could be searched for in a log


def test_only_bearer_keys_are_accepted() -> None:
    keys = ApiKeys(["key-one", "key-two"])
    assert keys.accepts("Bearer key-one") and keys.accepts("bearer key-two") and keys.accepts(" Bearer  key-one ")
    for refused in ("key-one", "Basic key-one", "Bearer", "Bearer ", "Bearer key-three", "", None):
        assert not keys.accepts(refused), refused
    assert without_scheme("key-one") and without_scheme("Token key-one")
    assert not without_scheme("Bearer key-one") and not without_scheme(None) and not without_scheme("")
    assert ApiKeys([]).accepts("key-one")  # no keys configured: everything passes


def test_a_bare_key_is_refused_with_how_to_send_it() -> None:
    message = Unauthorized(without_scheme=True).message
    assert message.startswith("unauthorized: send 'Authorization: Bearer <key>' with a valid API key")
    assert "a bare key is not accepted" in message
    assert "bare key" not in Unauthorized().message


def test_fingerprints_are_hmacs_under_the_secret_not_plain_hashes() -> None:
    secret = b"s" * 32
    got = KeyFingerprints(secret).of(f"Bearer {SHORT_KEY}")
    assert got == "key:" + hmac.new(secret, SHORT_KEY.encode(), hashlib.sha256).hexdigest()[:16]
    plain = [hashlib.new(name, SHORT_KEY.encode()).hexdigest() for name in ("sha256", "sha1", "md5", "blake2b")]
    plain.append(hashlib.blake2b(SHORT_KEY.encode(), digest_size=6).hexdigest())  # the fingerprint before
    assert not any(digest.startswith(got.removeprefix("key:")[:12]) for digest in plain)
    assert KeyFingerprints(b"t" * 32).of(f"Bearer {SHORT_KEY}") != got
    assert KeyFingerprints(secret).of(f"bearer {SHORT_KEY}") == got and KeyFingerprints(secret).of(None) == "anonymous"


FINGERPRINT_SCRIPT = """
import sys
from model_server.config.auth import load_fingerprints
from model_server.config.settings import ServerSettings
settings = ServerSettings.model_validate({"models": {}})
print(load_fingerprints(settings).of("Bearer " + sys.argv[1]))
"""


def _fingerprints_in_processes(home: Path, count: int) -> list[str]:
    """`count` processes (as a server's workers) start at once on one BENTOML_HOME."""
    env = {**os.environ, "BENTOML_HOME": str(home)}
    command = [sys.executable, "-c", FINGERPRINT_SCRIPT, SHORT_KEY]
    processes = [subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    return [process.communicate(timeout=60)[0].strip() for process in processes]


def test_the_secret_is_made_once_in_bentoml_home_shared_and_kept_across_restarts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = _fingerprints_in_processes(home, 4)
    secret_file = home / "audit-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_bytes().strip()
    assert len(secret) == 64 and first == [KeyFingerprints(secret).of(f"Bearer {SHORT_KEY}")] * 4
    assert sorted(p.name for p in home.iterdir()) == ["audit-secret"]  # no drafts left behind
    assert _fingerprints_in_processes(home, 1) == first[:1]  # a restart reads the same secret
    assert _fingerprints_in_processes(tmp_path / "another-home", 1) != first[:1]


def test_a_configured_secret_is_used_and_must_be_readable_and_long_enough(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("a configured secret of some length\n")
    settings = ServerSettings.model_validate({"models": {}, "audit_secret_file": str(secret_file)})
    expected = KeyFingerprints(b"a configured secret of some length").of(f"Bearer {SHORT_KEY}")
    assert load_fingerprints(settings).of(f"Bearer {SHORT_KEY}") == expected
    secret_file.write_text("short\n")
    with pytest.raises(SettingsError, match="'audit_secret_file' .* must hold a secret of 16 bytes or more"):
        load_fingerprints(settings)
    missing = ServerSettings.model_validate({"models": {}, "audit_secret_file": str(tmp_path / "absent")})
    with pytest.raises(SettingsError, match="'audit_secret_file' .* cannot be read"):
        load_fingerprints(missing)
    assert not (tmp_path / "absent").exists()  # a configured file is never made up
