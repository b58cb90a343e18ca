"""Which variant (tag) answers a request for a model name.

With a caller key, the choice is a stable hash of the key mapped onto the cumulative
weights, so the same key keeps its tag while weights stay the same, and a new split
moves only the keys in the band that changed hands. Without a key, a weighted random
choice. An explicit version bypasses the split.
"""

from __future__ import annotations

import bisect
import hashlib
import random

from model_server.config.settings import Variant


class Router:
    """Weighted, sticky choice among the variants of one model name."""

    def __init__(self, variants: list[Variant], shadow: str | None = None, rng: random.Random | None = None) -> None:
        total = sum(v.weight for v in variants)
        self.tags = [v.tag for v in variants]
        # Explicit versions reach every loaded tag of the name, the shadow included.
        self.versions = {v.version: v.tag for v in variants}
        if shadow is not None:
            self.versions.setdefault(shadow.partition(":")[2], shadow)
        self._bounds: list[float] = []
        running = 0.0
        for v in variants:
            running += v.weight / total
            self._bounds.append(running)
        self._bounds[-1] = 1.0
        self._rng = rng or random.Random()

    def choose(self, key: str | None = None) -> str:
        """The tag for a caller key (sticky), or a weighted random tag without one."""
        if len(self.tags) == 1:
            return self.tags[0]
        point = key_point(key) if key else self._rng.random()
        index = bisect.bisect_right(self._bounds, point)
        return self.tags[min(index, len(self.tags) - 1)]

    def tag_for_version(self, version: str) -> str | None:
        return self.versions.get(version)


def key_point(key: str) -> float:
    """A point in [0, 1) fixed by the key (BLAKE2b, the same in every process and release)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
