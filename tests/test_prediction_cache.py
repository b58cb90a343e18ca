"""The prediction cache: cached rows equal computed ones, only missing rows reach the
model, and the entries and bytes bounds hold by evicting the least recently used."""

from __future__ import annotations

import asyncio

import numpy as np

from model_server.core.prediction_cache import ENTRY_OVERHEAD_BYTES, CacheLimits, PredictionCache, row_key


class Model:
    """Two probability columns from the first feature; records the rows it was asked for."""

    def __init__(self) -> None:
        self.asked: list[list[float]] = []

    async def __call__(self, matrix: np.ndarray) -> np.ndarray:
        self.asked.append([float(v) for v in matrix[:, 0]])
        first = np.asarray(matrix[:, 0], dtype=np.float64) / 10
        return np.column_stack([first, 1 - first])


def counting() -> tuple[list[tuple[int, int, int]], PredictionCache]:
    seen: list[tuple[int, int, int]] = []
    return seen, PredictionCache(CacheLimits(3, 10**6), lambda h, m, e: seen.append((h, m, e)))


def test_cached_rows_equal_computed_ones_and_only_missing_rows_are_computed() -> None:
    seen, cache = counting()
    model = Model()
    first = asyncio.run(cache.predict(np.array([[1.0, 0.5], [2.0, 0.5]]), model))
    again = asyncio.run(cache.predict(np.array([[2.0, 0.5], [3.0, 0.5], [1.0, 0.5]]), model))
    assert model.asked == [[1.0, 2.0], [3.0]]  # the second call computed only the new row
    assert again.tolist() == [first[1].tolist(), [0.3, 0.7], first[0].tolist()]
    assert seen == [(0, 2, 0), (2, 1, 0)]
    assert len(cache) == 3


def test_least_recently_used_rows_are_evicted_at_the_entry_bound() -> None:
    seen, cache = counting()
    model = Model()
    for value in (1.0, 2.0, 3.0, 1.0, 4.0):  # 1.0 used again, so 2.0 is the oldest when 4.0 arrives
        asyncio.run(cache.predict(np.array([[value]]), model))
    assert seen[-1] == (0, 1, 1) and len(cache) == 3
    asyncio.run(cache.predict(np.array([[1.0], [3.0], [4.0], [2.0]]), model))
    assert model.asked[-1] == [2.0]  # 1, 3 and 4 stayed; 2 was evicted
    assert seen[-1] == (3, 1, 1)


def test_the_byte_bound_holds() -> None:
    one_entry = len(row_key(np.array([1.0]))) + np.zeros((1, 2)).nbytes + ENTRY_OVERHEAD_BYTES
    cache = PredictionCache(CacheLimits(1000, 2 * one_entry + 1))
    model = Model()
    asyncio.run(cache.predict(np.array([[1.0], [2.0], [3.0], [4.0]]), model))
    assert len(cache) == 2 and cache.bytes == 2 * one_entry <= cache.limits.max_bytes


def test_regression_outputs_and_keys_of_missing_values_and_categories() -> None:
    cache = PredictionCache(CacheLimits(10, 10**6))
    calls: list[int] = []

    async def values(matrix: np.ndarray) -> np.ndarray:
        calls.append(matrix.shape[0])
        return np.arange(matrix.shape[0], dtype=np.float64) + 100

    rows = np.array([["1st", float("nan"), 3.0], ["2nd", 1.0, 3.0]], dtype=object)
    first = asyncio.run(cache.predict(rows, values))
    # A NaN parsed from another request is another object, and still the same key.
    same = np.array([["1st", float("nan"), 3.0]], dtype=object)
    assert asyncio.run(cache.predict(same, values)).tolist() == [first[0]]
    assert calls == [2]
    assert row_key(np.array([np.nan, 1.0])) == row_key(np.array([float("nan"), 1.0]))
    assert row_key(np.array([1.0, 2.0])) != row_key(np.array([2.0, 1.0]))


def test_off_unless_both_bounds_are_positive() -> None:
    assert not CacheLimits(0, 10**6).enabled
    assert CacheLimits(1, 1).enabled
