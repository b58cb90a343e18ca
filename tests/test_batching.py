"""The batcher: correct slices, real batching under concurrency, isolation of failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from model_server.core.batching import INLINE_MAX_ROWS, Batcher, ModelCallFailed


class SlowDouble:
    """Doubles its input; records batch sizes; refuses rows holding -1."""

    def __init__(self, delay: float = 0.01) -> None:
        self.calls: list[int] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        with self.lock:
            self.calls.append(matrix.shape[0])
        if (matrix == -1).any():
            raise ValueError("poison row")
        threading.Event().wait(self.delay)
        return matrix[:, 0] * 2


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_lone_request_runs_at_once_and_concurrent_ones_join() -> None:
    model = SlowDouble()
    seen: list[tuple[int, int]] = []
    batcher = Batcher(
        model, max_rows=64, executor=ThreadPoolExecutor(1), observe=lambda out, n: seen.append((out.shape[0], n))
    )

    async def scenario() -> list[np.ndarray]:
        first = await batcher.submit(np.array([[1.0]]))
        assert first.tolist() == [2.0]
        return await asyncio.gather(*(batcher.submit(np.array([[float(i)], [float(i) + 0.5]])) for i in range(40)))

    results = run(scenario())
    for i, out in enumerate(results):
        assert out.tolist() == [2.0 * i, 2.0 * i + 1.0]
    assert model.calls[0] == 1
    assert max(model.calls) > 2, model.calls  # requests were joined
    assert all(rows <= 64 for rows in model.calls)
    assert sum(rows for rows, _ in seen) == 81


def test_failing_request_does_not_fail_its_neighbours() -> None:
    model = SlowDouble()
    batcher = Batcher(model, max_rows=64, executor=ThreadPoolExecutor(1))

    async def scenario() -> list[object]:
        await batcher.submit(np.array([[0.0]]))  # occupy the model so the next ones queue
        jobs = [batcher.submit(np.array([[float(v)]])) for v in (1, -1, 3)]
        return await asyncio.gather(*jobs, return_exceptions=True)

    ok1, bad, ok3 = run(scenario())
    assert isinstance(bad, ModelCallFailed)
    assert ok1.tolist() == [2.0] and ok3.tolist() == [6.0]  # type: ignore[union-attr]


def test_request_larger_than_max_rows_runs_alone() -> None:
    model = SlowDouble(delay=0)
    batcher = Batcher(model, max_rows=4, executor=ThreadPoolExecutor(1))
    out = run(batcher.submit(np.arange(10, dtype=float).reshape(10, 1)))
    assert out.tolist() == [2.0 * i for i in range(10)]
    assert model.calls == [10]


@pytest.mark.parametrize("cancel_index", [0, 3])
def test_cancelled_caller_does_not_break_the_batch(cancel_index: int) -> None:
    model = SlowDouble()
    batcher = Batcher(model, max_rows=64, executor=ThreadPoolExecutor(1))

    async def scenario() -> list[object]:
        tasks = [asyncio.create_task(batcher.submit(np.array([[float(i)]]))) for i in range(6)]
        await asyncio.sleep(0)
        tasks[cancel_index].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(scenario())
    for i, out in enumerate(results):
        if i == cancel_index:
            assert isinstance(out, asyncio.CancelledError)
        else:
            assert out.tolist() == [2.0 * i]  # type: ignore[union-attr]


def test_a_lone_request_never_waits_for_company() -> None:
    batcher = Batcher(SlowDouble(delay=0), max_rows=64, executor=ThreadPoolExecutor(1), max_wait=5.0)

    async def scenario() -> None:
        for value in (1.0, 2.0, 3.0):  # bounded far below the 5 s a batch could wait
            assert (await asyncio.wait_for(batcher.submit(np.array([[value]])), 2.0)).tolist() == [2 * value]

    run(scenario())


class GatedDouble(SlowDouble):
    """SlowDouble whose every call waits until the test lets one through (`release`), so
    that a scenario's steps come in its order, not in the order a busy machine's threads
    happen to run."""

    def __init__(self) -> None:
        super().__init__(delay=0)
        self.gate = threading.Semaphore(0)

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        with self.lock:
            self.calls.append(matrix.shape[0])
        if not self.gate.acquire(timeout=30):
            raise TimeoutError("the test never let this call through")
        return matrix[:, 0] * 2

    def release(self) -> None:
        self.gate.release()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the scenario did not get there"
        await asyncio.sleep(0.001)


def test_under_load_a_batch_waits_for_more_requests() -> None:
    model = GatedDouble()
    batcher = Batcher(model, max_rows=64, executor=ThreadPoolExecutor(1), max_wait=1.0)

    async def scenario() -> None:
        first = asyncio.ensure_future(batcher.submit(np.array([[1.0]])))  # runs at once, alone
        await until(lambda: model.calls == [1])
        pair = asyncio.gather(batcher.submit(np.array([[2.0]])), batcher.submit(np.array([[3.0]])))
        await asyncio.sleep(0.01)  # the pair is queued behind the first call
        model.release()
        await until(lambda: model.calls == [1, 2])  # the pair runs
        early = asyncio.ensure_future(batcher.submit(np.array([[5.0]])))  # queued behind the pair
        await asyncio.sleep(0.01)
        model.release()
        await asyncio.gather(first, pair)  # the pair is done; under load, `early` waits for company
        late = batcher.submit(np.array([[6.0]]))
        model.release()
        assert [r.tolist() for r in await asyncio.gather(early, late)] == [[10.0], [12.0]]

    run(scenario())
    assert model.calls == [1, 2, 2], model.calls


def test_a_full_batch_does_not_wait() -> None:
    model = GatedDouble()
    batcher = Batcher(model, max_rows=4, executor=ThreadPoolExecutor(1), max_wait=5.0)

    async def scenario() -> None:
        first = asyncio.ensure_future(batcher.submit(np.array([[1.0]])))
        await until(lambda: model.calls == [1])
        pair = asyncio.gather(batcher.submit(np.array([[2.0]])), batcher.submit(np.array([[3.0]])))
        await asyncio.sleep(0.01)
        model.release()
        await until(lambda: model.calls == [1, 2])  # the pair is running, so the batcher is under load
        early = asyncio.ensure_future(batcher.submit(np.array([[4.0], [5.0]])))
        await asyncio.sleep(0.01)
        model.release()
        await asyncio.gather(first, pair)  # the pair is done; `early` waits for company (up to 5 s)
        # Two more rows fill the batch (max 4), which then runs at once.
        late = batcher.submit(np.array([[6.0], [7.0]]))
        model.release()
        outs = await asyncio.wait_for(asyncio.gather(early, late), 2.0)
        assert [o.tolist() for o in outs] == [[8.0, 10.0], [12.0, 14.0]]

    run(scenario())
    assert model.calls == [1, 2, 4], model.calls


def test_a_failing_observer_never_strands_the_callers() -> None:
    def broken_observer(output: np.ndarray, requests: int) -> None:
        raise IndexError("a metrics bug")

    batcher = Batcher(SlowDouble(), max_rows=64, executor=ThreadPoolExecutor(1), observe=broken_observer)

    async def scenario() -> list[np.ndarray]:
        jobs = [batcher.submit(np.array([[float(i)]])) for i in range(5)]
        return await asyncio.wait_for(asyncio.gather(*jobs), 5.0)

    assert [out.tolist() for out in run(scenario())] == [[2.0 * i] for i in range(5)]


class ThreadRecorder:
    """Doubles its input, sleeping `delay`; records which thread ran each call."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.threads: list[int] = []
        self.poisoned = False

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        self.threads.append(threading.get_ident())
        if self.poisoned:
            raise ValueError("poison")
        if self.delay:
            threading.Event().wait(self.delay)
        return matrix[:, 0] * 2


def test_a_short_call_runs_inline_once_timed_and_a_long_one_in_the_model_thread() -> None:
    fast, slow = ThreadRecorder(0.0), ThreadRecorder(0.005)
    fast_batcher = Batcher(fast, max_rows=64, executor=ThreadPoolExecutor(1), inline_below=0.002)
    slow_batcher = Batcher(slow, max_rows=64, executor=ThreadPoolExecutor(1), inline_below=0.002)

    async def scenario() -> int:
        for value in range(5):
            assert (await fast_batcher.submit(np.array([[float(value)]]))).tolist() == [2.0 * value]
            assert (await slow_batcher.submit(np.array([[float(value)]]))).tolist() == [2.0 * value]
        return threading.get_ident()

    loop_thread = run(scenario())
    # The first call is timed in the model thread; the short ones after it run on the loop.
    assert fast.threads[0] != loop_thread and fast.threads[1:] == [loop_thread] * 4
    assert fast_batcher.call_seconds is not None and fast_batcher.call_seconds < 0.002
    assert loop_thread not in slow.threads  # 5 ms a call: always the model thread
    # A batch over INLINE_MAX_ROWS rows goes to the model thread even when the model is fast.
    big = np.arange(INLINE_MAX_ROWS + 1, dtype=np.float64).reshape(-1, 1)
    assert run(fast_batcher.submit(big)).tolist() == (big[:, 0] * 2).tolist()
    assert fast.threads[-1] != loop_thread


def test_inline_is_off_at_zero_and_an_inline_failure_is_a_model_call_failure() -> None:
    model = ThreadRecorder(0.0)
    never = Batcher(model, max_rows=64, executor=ThreadPoolExecutor(1), inline_below=0.0)
    inline = Batcher(model, max_rows=64, executor=ThreadPoolExecutor(1), inline_below=1.0)

    async def scenario() -> int:
        for _ in range(3):
            await never.submit(np.array([[1.0]]))
        await inline.submit(np.array([[1.0]]))  # timed in the model thread
        model.poisoned = True
        with pytest.raises(ModelCallFailed):
            await inline.submit(np.array([[1.0]]))
        model.poisoned = False
        assert (await inline.submit(np.array([[3.0]]))).tolist() == [6.0]  # still serving
        return threading.get_ident()

    loop_thread = run(scenario())
    assert loop_thread not in model.threads[:4]
    assert model.threads[4:] == [loop_thread, loop_thread]


def test_inline_requests_of_one_turn_share_one_model_call_on_the_loop() -> None:
    model = SlowDouble(delay=0.0)
    seen: list[tuple[int, int]] = []
    batcher = Batcher(
        model,
        max_rows=1000,
        executor=ThreadPoolExecutor(1),
        observe=lambda out, n: seen.append((out.shape[0], n)),
        inline_below=1.0,
    )

    async def scenario() -> list[np.ndarray]:
        await batcher.submit(np.array([[0.0]]))  # timed in the model thread
        lone = await batcher.submit(np.array([[5.0]]))
        assert lone.tolist() == [10.0]
        # 20 requests started in one turn: one call; 40 more rows than fit inline: the rest another turn.
        together = await asyncio.gather(*(batcher.submit(np.array([[float(i)], [i + 0.5]])) for i in range(20)))
        assert [out.tolist() for out in together] == [[2.0 * i, 2.0 * i + 1.0] for i in range(20)]
        return await asyncio.gather(*(batcher.submit(np.array([[float(i)], [1.0]])) for i in range(40)))

    over = run(scenario())
    assert [out.tolist() for out in over] == [[2.0 * i, 2.0] for i in range(40)]
    assert model.calls[:3] == [1, 1, 40]
    assert sum(model.calls[3:]) == 80 and all(rows <= INLINE_MAX_ROWS for rows in model.calls[3:])
    assert seen[2] == (40, 20)  # the observer hears of one call that served 20 requests


def test_a_poisoned_request_in_a_joined_turn_fails_alone() -> None:
    model = SlowDouble(delay=0.0)
    batcher = Batcher(model, max_rows=64, executor=ThreadPoolExecutor(1), inline_below=1.0)

    async def scenario() -> list[object]:
        await batcher.submit(np.array([[0.0]]))
        rows = [np.array([[float(i)]]) for i in range(5)] + [np.array([[-1.0]])]
        return await asyncio.gather(*(batcher.submit(r) for r in rows), return_exceptions=True)

    results = run(scenario())
    assert [r.tolist() for r in results[:5]] == [[2.0 * i] for i in range(5)]  # type: ignore[union-attr]
    assert isinstance(results[5], ModelCallFailed)
    assert model.calls[1] == 6  # tried together first, then one by one


def test_under_load_an_inline_turn_waits_for_company_and_a_lone_one_does_not() -> None:
    model = SlowDouble(delay=0.0)
    batcher = Batcher(model, max_rows=1000, executor=ThreadPoolExecutor(1), max_wait=5.0, inline_below=1.0)

    async def scenario() -> None:
        await batcher.submit(np.array([[0.0]]))  # timed in the model thread
        # Lone inline calls never wait (bounded far below the 5 s a turn could wait).
        for value in (1.0, 2.0):
            assert (await asyncio.wait_for(batcher.submit(np.array([[value]])), 2.0)).tolist() == [2 * value]
        # Three in one turn: under load, so the next turn waits for company.
        await asyncio.gather(*(batcher.submit(np.array([[float(i)]])) for i in range(3)))
        early = asyncio.ensure_future(batcher.submit(np.array([[5.0]])))
        await asyncio.sleep(0.05)  # several turns later, `early` still waits
        assert not early.done()
        late = batcher.submit(np.array([[6.0]] * (INLINE_MAX_ROWS - 1)))  # fills the inline call: it runs at once
        outs = await asyncio.wait_for(asyncio.gather(early, late), 2.0)
        assert outs[0].tolist() == [10.0] and outs[1].tolist() == [12.0] * (INLINE_MAX_ROWS - 1)

    run(scenario())
    assert model.calls == [1, 1, 1, 3, INLINE_MAX_ROWS], model.calls


def test_a_request_alone_in_flight_runs_at_once_at_low_load_and_joins_under_load() -> None:
    model = SlowDouble(delay=0.0)
    batcher = Batcher(model, max_rows=1000, executor=ThreadPoolExecutor(1), max_wait=5.0, inline_below=1.0)

    def at_once(matrix: np.ndarray) -> np.ndarray:
        """The answer of a submit that never suspends (no turn, no future)."""
        coro = batcher.submit(matrix, alone=True)
        with pytest.raises(StopIteration) as stopped:
            coro.send(None)
        return stopped.value.value  # type: ignore[no-any-return]

    async def scenario() -> None:
        await batcher.submit(np.array([[0.0]]), alone=True)  # timed in the model thread first
        assert at_once(np.array([[1.0]])).tolist() == [2.0]
        await asyncio.sleep(0)  # the next turn
        with pytest.raises(ModelCallFailed):
            at_once(np.array([[-1.0]]))
        await asyncio.sleep(0)
        # Five callers alone in flight in one turn (each answered before the next starts):
        # the first runs at once, the other four share the turn's call.
        five = await asyncio.gather(*(batcher.submit(np.array([[float(i)]]), alone=True) for i in range(5)))
        assert [out.tolist() for out in five] == [[2.0 * i] for i in range(5)]
        # Under load (a turn joined three), a request alone in flight still joins the turn.
        await asyncio.gather(*(batcher.submit(np.array([[float(i)]])) for i in range(3)))
        alone = asyncio.ensure_future(batcher.submit(np.array([[4.0]]), alone=True))
        await asyncio.sleep(0.05)
        assert not alone.done()  # waits for company, up to max_wait
        full = batcher.submit(np.array([[5.0]] * (INLINE_MAX_ROWS - 1)))
        await asyncio.wait_for(asyncio.gather(alone, full), 2.0)
        assert alone.result().tolist() == [8.0]

    run(scenario())
    assert model.calls == [1, 1, 1, 1, 4, 3, INLINE_MAX_ROWS], model.calls
