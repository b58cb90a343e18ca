"""Variant choice: weighted, sticky per key, explicit version."""

from __future__ import annotations

import hashlib
import random

from model_server.config.settings import Variant
from model_server.core.ab_split import Router, key_point


def router(*weights: float) -> Router:
    return Router([Variant(tag=f"m:v{i + 1}", weight=w) for i, w in enumerate(weights)], rng=random.Random(0))


def test_shadow_is_reachable_by_explicit_version_only() -> None:
    r = Router([Variant(tag="m:v1")], shadow="m:v3")
    assert r.tag_for_version("v3") == "m:v3"
    assert {r.choose(f"k{i}") for i in range(100)} == {"m:v1"}


def test_single_variant_always_answers() -> None:
    assert {router(1).choose(k) for k in ("a", "b", None)} == {"m:v1"}


def test_same_key_same_tag_and_split_follows_weights() -> None:
    r = router(90, 10)
    keys = [f"user-{i}" for i in range(10_000)]
    first = [r.choose(k) for k in keys]
    assert first == [r.choose(k) for k in keys]
    share = first.count("m:v2") / len(keys)
    assert abs(share - 0.10) < 0.02


def test_new_split_moves_only_the_band_that_changed() -> None:
    keys = [f"user-{i}" for i in range(10_000)]
    before = [router(90, 10).choose(k) for k in keys]
    after = [router(80, 20).choose(k) for k in keys]
    moved = sum(a != b for a, b in zip(before, after, strict=True))
    assert 0.08 < moved / len(keys) < 0.12
    assert all(b == "m:v2" for a, b in zip(before, after, strict=True) if a != b)


def test_key_point_is_stable_across_processes() -> None:
    # BLAKE2b of the key, not Python's salted hash(): the same value in every run.
    digest = hashlib.blake2b(b"user-1", digest_size=8).digest()
    assert key_point("user-1") == int.from_bytes(digest, "big") / 2**64
    assert 0 <= key_point("") < 1 and key_point("user-1") != key_point("user-2")


def test_explicit_version_lookup() -> None:
    r = router(1, 0)
    assert r.tag_for_version("v2") == "m:v2" and r.tag_for_version("v9") is None
    assert {r.choose(None) for _ in range(50)} == {"m:v1"}
