"""The batcher shared by every door: it never makes a lone request wait, and under load
it waits briefly for company.

When the model is idle a request runs at once; requests that arrive while the model
runs queue up and all run together as the next call (up to `max_rows`). At low load
nobody waits for a timer. BentoML's own dispatcher instead waits about as long as it
has learned requests wait, which after a burst makes a lone request wait tens of
milliseconds (docs/performance.md, "Batching").

Under load (the last call joined several requests, or left some queued) a batch may
also wait for more requests, until its oldest request has waited `max_wait` seconds
or the batch is full: the same rule as Triton's max queue delay. On small models a
call costs about the same for 1 row as for 64, so on a machine whose cores are all
busy every request that joins a batch saves a model call's worth of CPU. Time a
request spends queued behind a running call counts towards its wait. At one client
every call is a lone request, so nothing waits; the first request after a burst may
wait `max_wait` once.

A call that is known to be short (a compiled ONNX model answers a few rows in tens of
microseconds) runs inline, on the event loop: handing it to the model thread and back
would cost more than the call itself. The batcher times its calls and runs a batch of
at most `INLINE_MAX_ROWS` rows inline while its recent calls took under `inline_below`
seconds; a scikit-learn pipeline (about a millisecond a call) keeps running in the model
thread, so the event loop never stalls behind it (docs/performance.md, "Inline calls").
Inline requests are joined per turn of the event loop: the first queues a callback,
every request that arrives before it runs (all those a turn's reads began) joins it,
and the callback makes one model call for them all; under load (the last inline call
joined several), the call waits up to `max_wait` for more, unless its rows fill up first.
So under load one call, one drift count and one batch metric serve many requests. A
request the caller knows to be alone in flight (`submit(..., alone=True)`) at low load
makes its call at once, with no callback and no future. Either way the drift count and
the observer run after the callers have their answers. A preempted call (a busy machine)
counts at most twice the running estimate, so one slow measurement does not send every
later call to the model thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

log = logging.getLogger(__name__)

# Called after each model call with the batch's output rows and how many requests it joined.
BatchObserver = Callable[[np.ndarray, int], None]
# Called after each successful model call with its input and output rows (the drift count).
BatchCounter = Callable[[np.ndarray, np.ndarray], None]

# The largest batch that may run inline, and how fast the running estimate of a call's
# time follows new calls (an exponentially weighted mean).
INLINE_MAX_ROWS = 64
CALL_TIME_WEIGHT = 0.1
FAILED = "the model failed to predict; see the server log"


class Batcher:
    """Joins concurrent requests for one model into few model calls; a lone request never waits."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_rows: int,
        executor: Executor,
        observe: BatchObserver | None = None,
        max_wait: float = 0.0,
        inline_below: float = 0.0,
        count: BatchCounter | None = None,
    ) -> None:
        self._run = run
        self._count = count
        self._max_rows = max_rows
        self._executor = executor
        self._observe = observe
        self._max_wait = max_wait
        self._queue: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self._queued_rows = 0
        self._oldest = 0.0  # when the oldest queued request arrived (perf_counter)
        self._under_load = False
        self._full: asyncio.Future[None] | None = None  # set while a batch waits to fill
        self._drainer: asyncio.Task[None] | None = None
        self._inline_below = inline_below  # seconds; 0 never runs inline
        self._call_seconds: float | None = None  # running estimate of one call's time; None until timed
        # Inline requests of this turn of the event loop, answered together by `_run_turn`.
        self._turn: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        self._turn_rows = 0
        self._turn_timer: asyncio.TimerHandle | None = None  # set while an inline turn waits for company
        self._inline_under_load = False  # the last inline call joined several requests
        # A call was made at once for a lone request in this turn: the turn's next requests
        # join a turn's call, since one made at once never lets `alone` callers overlap.
        self._alone_this_turn = False
        # The last model call: start and end (perf_counter) and rows, for a traced request.
        self.last_call: tuple[float, float, int] = (0.0, 0.0, 0)

    async def submit(self, matrix: np.ndarray, alone: bool = False) -> np.ndarray:
        """The model's output rows for `matrix`, computed in some batch. `alone`: the caller
        knows no other request is in flight, so at low load (the last inline call was lone) an
        idle inline call runs at once, without waiting for the end of the turn."""
        loop = asyncio.get_running_loop()
        if (
            alone
            and not self._inline_under_load
            and not self._alone_this_turn
            and not self._turn
            and not self._queue
            and (self._drainer is None or self._drainer.done())
            and self._runs_inline(matrix)
        ):
            return self._run_alone(loop, matrix)
        future: asyncio.Future[np.ndarray] = loop.create_future()
        if (
            not self._queue
            and (self._drainer is None or self._drainer.done())
            and self._runs_inline(matrix)
            and self._turn_rows + matrix.shape[0] <= INLINE_MAX_ROWS
        ):
            # The model is idle and the call short: join this turn's inline call. Under load
            # (the last inline call joined several requests) the call waits up to max_wait
            # for more to join, unless it fills up first; else it runs at the end of the turn.
            if not self._turn:
                if self._inline_under_load and self._max_wait > 0:
                    self._turn_timer = loop.call_later(self._max_wait, self._run_turn)
                else:
                    loop.call_soon(self._run_turn)
            self._turn.append((matrix, future))
            self._turn_rows += matrix.shape[0]
            if self._turn_timer is not None and self._turn_rows >= INLINE_MAX_ROWS:
                self._turn_timer.cancel()
                self._turn_timer = None
                loop.call_soon(self._run_turn)
            return await future
        if not self._queue:
            self._oldest = time.perf_counter()
        self._queue.append((matrix, future))
        self._queued_rows += matrix.shape[0]
        if self._full is not None and self._queued_rows >= self._max_rows and not self._full.done():
            self._full.set_result(None)
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await future

    def _run_turn(self) -> None:
        """One inline model call for the requests of this turn (callers that went away are skipped)."""
        if self._turn_timer is not None:
            self._turn_timer.cancel()
            self._turn_timer = None
        batch = [item for item in self._turn if not item[1].done()]
        self._turn, self._turn_rows = [], 0
        if not batch:
            return
        self._inline_under_load = len(batch) > 1
        matrices = [m for m, _ in batch]
        stacked = matrices[0] if len(matrices) == 1 else np.concatenate(matrices)
        loop = asyncio.get_running_loop()
        try:
            output = self._timed_run(stacked)
        except Exception:
            if len(batch) == 1:
                log.exception("model call failed")
                _fail(batch[0][1])
                return
            # One request must not fail its neighbours: each again, alone.
            for matrix, future in batch:
                try:
                    single = self._timed_run(matrix)
                except Exception:
                    log.exception("model call failed")
                    _fail(future)
                    continue
                future.set_result(single)
                loop.call_soon(self._after, matrix, single, 1)
            return
        _answer(batch, output)
        # The callers' answers first: their tasks were woken above and run before this.
        loop.call_soon(self._after, stacked, output, len(batch))

    def _run_alone(self, loop: asyncio.AbstractEventLoop, matrix: np.ndarray) -> np.ndarray:
        """One inline call for a lone request, made at once; its bookkeeping after the answer."""
        self._alone_this_turn = True
        try:
            output = self._timed_run(matrix)
        except Exception:
            loop.call_soon(self._end_alone_turn)
            log.exception("model call failed")
            raise ModelCallFailed(FAILED) from None
        loop.call_soon(self._after_alone, matrix, output)
        return output

    def _end_alone_turn(self) -> None:
        self._alone_this_turn = False

    def _after_alone(self, matrix: np.ndarray, output: np.ndarray) -> None:
        self._alone_this_turn = False
        self._after(matrix, output, 1)

    def _after(self, matrix: np.ndarray, output: np.ndarray, requests: int) -> None:
        """What an inline call leaves for after its answers: the drift count and the observer
        (in the turn after the call's)."""
        self._counted(matrix, output)
        self._report(output, requests)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def call_seconds(self) -> float | None:
        """The running estimate of one model call's time, once a call was timed."""
        return self._call_seconds

    def _runs_inline(self, matrix: np.ndarray) -> bool:
        estimate = self._call_seconds
        return estimate is not None and estimate < self._inline_below and matrix.shape[0] <= INLINE_MAX_ROWS

    def _counted(self, matrix: np.ndarray, output: np.ndarray) -> None:
        """Count a call's rows (drift); a failed count is logged, never the callers' failure."""
        if self._count is None:
            return
        try:
            self._count(matrix, output)
        except Exception:
            log.exception("counting a batch failed")

    def _run_counted(self, matrix: np.ndarray) -> np.ndarray:
        """A timed model call and its count, in the model thread."""
        output = self._timed_run(matrix)
        self._counted(matrix, output)
        return output

    def _timed_run(self, matrix: np.ndarray) -> np.ndarray:
        """One model call (in whichever thread), timed into the running estimate."""
        started = time.perf_counter()
        output = self._run(matrix)
        seconds = time.perf_counter() - started
        self.last_call = (started, started + seconds, matrix.shape[0])
        estimate = self._call_seconds
        if estimate is None:
            self._call_seconds = seconds
        else:  # a preempted call counts at most twice the estimate
            self._call_seconds = estimate + CALL_TIME_WEIGHT * (min(seconds, 2 * estimate) - estimate)
        return output

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if self._under_load and self._max_wait > 0:
                await self._wait_to_fill(loop)
            batch = self._take()
            self._under_load = len(batch) > 1 or bool(self._queue)
            if not batch:
                continue
            matrices = [m for m, _ in batch]
            stacked = matrices[0] if len(matrices) == 1 else np.concatenate(matrices)
            try:
                if self._runs_inline(stacked):
                    output = self._run_counted(stacked)
                else:
                    output = await loop.run_in_executor(self._executor, self._run_counted, stacked)
            except Exception:
                if len(batch) == 1:
                    log.exception("model call failed")
                    _fail(batch[0][1])
                else:
                    # One request must not fail its neighbours: run them one by one.
                    await self._run_each(batch)
                continue
            _answer(batch, output)
            self._report(output, len(batch))

    def _report(self, output: np.ndarray, requests: int) -> None:
        """Tell the observer about a call; its failure must never strand the callers."""
        if self._observe is None:
            return
        try:
            self._observe(output, requests)
        except Exception:
            log.exception("batch observer failed")

    async def _wait_to_fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the oldest queued request has waited max_wait, or the batch is full."""
        remaining = self._oldest + self._max_wait - time.perf_counter()
        if remaining <= 0 or self._queued_rows >= self._max_rows:
            return
        self._full = loop.create_future()
        try:
            await asyncio.wait_for(self._full, remaining)
        except TimeoutError:
            pass
        finally:
            self._full = None

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        """Everything queued, up to max_rows (at least one request, however large)."""
        batch = [self._queue.popleft()]
        rows = batch[0][0].shape[0]
        while self._queue and rows + self._queue[0][0].shape[0] <= self._max_rows:
            item = self._queue.popleft()
            batch.append(item)
            rows += item[0].shape[0]
        self._queued_rows -= rows
        self._oldest = time.perf_counter()  # the ones left now wait for the model, not for a batch
        return [item for item in batch if not item[1].done()]

    async def _run_each(self, batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        loop = asyncio.get_running_loop()
        for matrix, future in batch:
            try:
                output = await loop.run_in_executor(self._executor, self._run_counted, matrix)
            except Exception:
                log.exception("model call failed")
                _fail(future)
                continue
            self._report(output, 1)
            if not future.done():
                future.set_result(output)


class ModelCallFailed(Exception):
    """The model raised; the traceback is in the server log."""


def _answer(batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]], output: np.ndarray) -> None:
    """Each request its rows of the batch's output."""
    if len(batch) == 1:
        if not batch[0][1].done():
            batch[0][1].set_result(output)
        return
    offset = 0
    for matrix, future in batch:
        rows = matrix.shape[0]
        if not future.done():
            future.set_result(output[offset : offset + rows])
        offset += rows


def _fail(future: asyncio.Future[np.ndarray]) -> None:
    if not future.done():
        future.set_exception(ModelCallFailed(FAILED))
