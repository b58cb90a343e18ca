"""A no-wait adaptive batcher shared by every front.

When the model is idle a request runs at once; requests that arrive while the model
runs queue up and all run together as the next call (up to `max_rows`). Under load
batches grow by themselves; at low load nobody waits for a timer. BentoML's own
dispatcher instead waits about as long as it has learned requests wait, which after a
burst makes a lone request wait ~90 ms (see README, "Batching").
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

log = logging.getLogger(__name__)

# Called after each model call with the batch's output rows and how many requests it joined.
BatchObserver = Callable[[np.ndarray, int], None]


class NoWaitBatcher:
    """Joins concurrent requests for one model into few model calls, never waiting for a timer."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_rows: int,
        executor: Executor,
        observe: BatchObserver | None = None,
    ) -> None:
        self._run = run
        self._max_rows = max_rows
        self._executor = executor
        self._observe = observe
        self._queue: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, matrix: np.ndarray) -> np.ndarray:
        """The model's output rows for `matrix`, computed in some batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.append((matrix, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await future

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch = self._take()
            if not batch:
                continue
            matrices = [m for m, _ in batch]
            stacked = matrices[0] if len(matrices) == 1 else np.concatenate(matrices)
            try:
                output = await loop.run_in_executor(self._executor, self._run, stacked)
            except Exception:
                if len(batch) == 1:
                    log.exception("model call failed")
                    _fail(batch[0][1])
                else:
                    # One request must not fail its neighbours: run them one by one.
                    await self._run_each(batch)
                continue
            if self._observe is not None:
                self._observe(output, len(batch))
            offset = 0
            for matrix, future in batch:
                rows = matrix.shape[0]
                if not future.done():
                    future.set_result(output[offset : offset + rows])
                offset += rows

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        """Everything queued, up to max_rows (at least one request, however large)."""
        batch = [self._queue.popleft()]
        rows = batch[0][0].shape[0]
        while self._queue and rows + self._queue[0][0].shape[0] <= self._max_rows:
            item = self._queue.popleft()
            batch.append(item)
            rows += item[0].shape[0]
        return [item for item in batch if not item[1].done()]

    async def _run_each(self, batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        loop = asyncio.get_running_loop()
        for matrix, future in batch:
            try:
                output = await loop.run_in_executor(self._executor, self._run, matrix)
            except Exception:
                log.exception("model call failed")
                _fail(future)
                continue
            if self._observe is not None:
                self._observe(output, 1)
            if not future.done():
                future.set_result(output)


class ModelCallFailed(Exception):
    """The model raised; the traceback is in the server log."""


def _fail(future: asyncio.Future[np.ndarray]) -> None:
    if not future.done():
        future.set_exception(ModelCallFailed("the model failed to predict; see the server log"))
