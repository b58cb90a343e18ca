"""Prediction ids: every answered row carries one, and feedback names it.

An id holds what feedback needs to be counted by any worker of any replica without a
shared database: the served name and the tag that answered, the routing window it was
answered in, when, the unit of assignment (the caller key's fingerprint, else the
request), the row's place in its request, and what was predicted (the class and the
positive probability of a binary classifier, the class and every probability of a
multi-class one, the value of a regressor). It is signed with the server's secret:
HMAC-SHA256, cut to 16 bytes, over the compact binary encoding, one HMAC per row (the
request's part is hashed once and copied for each row). An altered id, or one signed
with another secret, fails the check; after a rotation the previous secrets still verify.

The text form is URL-safe base64 without padding (about 90 characters for Titanic).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import os
import struct
from dataclasses import dataclass

import numpy as np

VERSION = 1
MAC_BYTES = 16
MAX_CACHED_KEYS = 65536  # caller keys whose fingerprint is kept (then the cache starts again)
# version, window, time (ms), request nonce, unit; then per row: row index.
_HEAD = struct.Struct("<BIQ8s8s")
_ROW = struct.Struct("<I")
# What the prediction part holds (its first byte); KEYED marks a unit that is a caller key.
REGRESSION, BINARY, MULTICLASS = 0, 1, 2
KEYED = 0x80
_BINARY = struct.Struct("<Bd")  # class index, positive probability
_BINARY_PART = struct.Struct("<BBd")  # kind, class index, positive probability
_VALUE = struct.Struct("<d")


@dataclass(frozen=True)
class PredictionId:
    """What a verified id says about its row."""

    window: int  # the routing window's digest (window_digest)
    time_ms: int
    request: bytes  # 8 random bytes of the request
    unit: int  # the unit of assignment: the caller key's fingerprint, else the request
    keyed: bool  # whether `unit` is a caller key
    row: int
    name: str
    tag: str
    kind: int  # REGRESSION, BINARY or MULTICLASS
    predicted: int  # the class index (classifiers)
    probabilities: tuple[float, ...]  # every class's (multi-class) or (1 - p, p) (binary)
    value: float  # the regressor's prediction (NaN for classifiers)
    digest: bytes  # what replay protection records: the MAC, unique per id

    def probability_of(self, index: int) -> float:
        return self.probabilities[index]


class InvalidId(ValueError):
    """The id is not one of this server's (malformed, altered, or another secret's)."""


def window_digest(window: str) -> int:
    """A routing window's name (Routing.window) as the 4 bytes an id carries."""
    return int.from_bytes(hashlib.sha256(window.encode()).digest()[:4], "little")


class PredictionIds:
    """Signs the ids of answered rows and verifies ids sent back; `secrets[0]` signs,
    every secret verifies (the ones after it are the previous secrets of a rotation)."""

    def __init__(self, secrets: list[bytes]) -> None:
        if not secrets:
            raise ValueError("at least one secret is needed")
        self._secrets = list(secrets)
        # HMAC by hand over hashlib's states, copied per id: half the cost of hmac.copy().
        key = secrets[0] if len(secrets[0]) <= 64 else hashlib.sha256(secrets[0]).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        # Request nonces: a random start per process, then a counter (os.urandom per
        # request costs a system call); unique per process, and across processes by chance.
        self._nonces = itertools.count(int.from_bytes(os.urandom(8), "little"))
        self._names: dict[tuple[str, str], bytes] = {}
        self._units: dict[str, int] = {}  # caller key -> its fingerprint, the recent ones

    @classmethod
    def ephemeral(cls) -> PredictionIds:
        """Ids under a random secret of this process only (a core built outside a server)."""
        return cls([os.urandom(32)])

    def unit_of(self, key: str | None, request: bytes) -> tuple[int, bool]:
        """The unit of assignment: a keyed fingerprint of the caller key (never the key),
        else the request's nonce."""
        if key is None:
            return int.from_bytes(request, "little"), False
        unit = self._units.get(key)
        if unit is None:
            if len(self._units) >= MAX_CACHED_KEYS:
                self._units.clear()
            digest = hmac.new(self._secrets[0], b"unit:" + key.encode(), hashlib.sha256).digest()
            unit = self._units[key] = int.from_bytes(digest[:8], "little")
        return unit, True

    def sign(
        self,
        name: str,
        tag: str,
        window: int,
        time_ms: int,
        output: np.ndarray,
        classifier: bool,
        key: str | None = None,
    ) -> tuple[str, ...]:
        """The ids of every row of `output` (probabilities of a classifier, values of a regressor)."""
        request = (next(self._nonces) & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")
        keyed = key is not None
        unit = self.unit_of(key, request)[0].to_bytes(8, "little") if keyed else request
        names = self._names.get((name, tag))
        if names is None:
            names = self._names[(name, tag)] = _short(name) + _short(tag)
        head = _HEAD.pack(VERSION, window, time_ms, request, unit) + names
        inner = self._inner.copy()
        inner.update(head)
        outer = self._outer
        flag = KEYED if keyed else 0
        values = output.tolist()
        if not classifier:
            parts = [bytes([REGRESSION | flag]) + _VALUE.pack(v) for v in values]
        elif output.shape[1] == 2:
            kind = BINARY | flag  # argmax: a tie goes to the first class
            parts = [_BINARY_PART.pack(kind, int(p > q), p) for q, p in values]
        else:
            classes = output.shape[1]
            layout = struct.Struct(f"<BHH{classes}d")
            kind = MULTICLASS | flag
            parts = [layout.pack(kind, row.index(max(row)), classes, *row) for row in values]
        ids = []
        encode = base64.urlsafe_b64encode
        for row, part in enumerate(parts):
            tail = _ROW.pack(row) + part
            mac = inner.copy()
            mac.update(tail)
            signed = outer.copy()
            signed.update(mac.digest())
            ids.append(encode(head + tail + signed.digest()[:MAC_BYTES]).rstrip(b"=").decode())
        return tuple(ids)

    def verify(self, text: object) -> PredictionId:
        """The content of a valid id, else InvalidId saying why."""
        if not isinstance(text, str) or not 40 <= len(text) <= 4096:
            raise InvalidId("is not a prediction id (a string as the answer gave it)")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise InvalidId("is not a prediction id (not URL-safe base64)") from None
        body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if len(body) < _HEAD.size or body[0] != VERSION:
            raise InvalidId("is not a prediction id of this server")
        if not any(
            hmac.compare_digest(hmac.new(secret, body, hashlib.sha256).digest()[:MAC_BYTES], mac)
            for secret in self._secrets
        ):
            raise InvalidId("does not carry this server's signature (altered, or from another server)")
        return _parse(body, mac)


def _short(text: str) -> bytes:
    """`text` as UTF-8 after its length in one byte (names and tags are at most 127 characters)."""
    data = text.encode()
    return bytes([len(data)]) + data


def _parse(body: bytes, mac: bytes) -> PredictionId:
    """The fields of a signed id (its signature already checked: the layout is ours)."""
    _, window, time_ms, request, unit = _HEAD.unpack_from(body)
    at = _HEAD.size
    name = body[at + 1 : at + 1 + body[at]].decode()
    at += 1 + body[at]
    tag = body[at + 1 : at + 1 + body[at]].decode()
    at += 1 + body[at]
    (row,) = _ROW.unpack_from(body, at)
    at += _ROW.size
    kind, keyed = body[at] & ~KEYED, bool(body[at] & KEYED)
    predicted, value = 0, float("nan")
    probabilities: tuple[float, ...] = ()
    if kind == REGRESSION:
        (value,) = _VALUE.unpack_from(body, at + 1)
    elif kind == BINARY:
        predicted, positive = _BINARY.unpack_from(body, at + 1)
        probabilities = (1.0 - positive, positive)
    else:
        predicted, classes = struct.unpack_from("<HH", body, at + 1)
        probabilities = struct.unpack_from(f"<{classes}d", body, at + 5)
    return PredictionId(
        window,
        time_ms,
        request,
        int.from_bytes(unit, "little"),
        keyed,
        row,
        name,
        tag,
        kind,
        predicted,
        tuple(probabilities),
        value,
        mac,
    )
