"""A prediction cache per served tag: the model's output row for each input row already
seen, bounded by entries and by bytes, evicting the least recently used.

Off by default (`prediction_cache.max_entries: 0`). It pays where rows repeat (a product
page scored again for every visitor, a retry storm), and costs a dictionary lookup per row
otherwise. A row's key is its canonical form: the float64 bytes of a numeric row, or the
tuple of a row with categories (a missing number as None, so that every NaN is the same
key). Caches live in one serving state, so a routing change (a new tag, a new runtime, a
rollback) starts them empty.

By hand rather than cachetools' LRUCache: one LRUCache bounds either entries or total
size, and this cache bounds both.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import numpy as np

# What one entry costs besides its key and output row: the dictionary slot, the ndarray header.
ENTRY_OVERHEAD_BYTES = 200

# Told of each lookup's hits and misses, and of evictions.
CacheObserver = Callable[[int, int, int], None]


@dataclass(frozen=True)
class CacheLimits:
    max_entries: int
    max_bytes: int

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0


class PredictionCache:
    """Output rows of one tag keyed by input row; least recently used evicted first."""

    def __init__(self, limits: CacheLimits, observe: CacheObserver | None = None) -> None:
        self.limits = limits
        self._observe = observe
        self._entries: OrderedDict[Hashable, tuple[np.ndarray, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def predict(self, matrix: np.ndarray, compute: Callable[[np.ndarray], Awaitable[np.ndarray]]) -> np.ndarray:
        """The output rows for `matrix`: cached ones from the cache, the others from
        `compute` (called once, with only the rows not cached), then cached."""
        keys = [row_key(row) for row in matrix]
        found: list[np.ndarray | None] = []
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                found.append(entry[0])
            else:
                found.append(None)
        missing = [i for i, row in enumerate(found) if row is None]
        evicted = 0
        if missing:
            computed = await compute(matrix[missing] if len(missing) < len(keys) else matrix)
            for position, index in enumerate(missing):
                row = np.array(computed[position : position + 1])  # a copy: the batch's array is not kept
                found[index] = row
                evicted += self._put(keys[index], row)
        if self._observe is not None:
            self._observe(len(keys) - len(missing), len(missing), evicted)
        return np.concatenate(found)  # type: ignore[arg-type]

    def _put(self, key: Hashable, row: np.ndarray) -> int:
        """Store one row; return how many entries were evicted to make room."""
        if key in self._entries:  # computed twice by concurrent requests: keep one
            return 0
        size = _size(key) + row.nbytes + ENTRY_OVERHEAD_BYTES
        if size > self.limits.max_bytes:
            return 0
        self._entries[key] = (row, size)
        self.bytes += size
        evicted = 0
        while len(self._entries) > self.limits.max_entries or self.bytes > self.limits.max_bytes:
            _, (_, freed) = self._entries.popitem(last=False)
            self.bytes -= freed
            evicted += 1
        return evicted


def row_key(row: np.ndarray) -> Hashable:
    """The canonical form of one input row (see the module's docstring)."""
    if row.dtype != object:
        return np.ascontiguousarray(row, dtype=np.float64).tobytes()
    return tuple(None if isinstance(value, float) and value != value else value for value in row.tolist())


def _size(key: Hashable) -> int:
    if isinstance(key, tuple):
        return sys.getsizeof(key) + sum(sys.getsizeof(value) for value in key)
    return len(key)  # type: ignore[arg-type]
