"""DeviceExecutor (engine/executor.py): one thread, round-robin turns over work sources."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator

import pytest

from squeezer.engine.executor import DeviceExecutor, Later, Work
from squeezer.errors import UnavailableError


class ListSource:
    """A work source with a fixed list of units, each recording its name when run."""

    def __init__(self, name: str, units: int, log: list[str], gate: threading.Event) -> None:
        self.name = name
        self.left = units
        self.log = log
        self.gate = gate

    def poll(self, now: float) -> Work | Later | None:
        if self.left == 0:
            return None
        self.left -= 1

        def work() -> None:
            self.gate.wait(5)
            self.log.append(self.name)

        return work


class LaterSource:
    """Holds one unit back until the fake clock reaches ``at``."""

    def __init__(self, clock: list[float], at: float, done: threading.Event) -> None:
        self.clock, self.at, self.done = clock, at, done
        self.fired = False

    def poll(self, now: float) -> Work | Later | None:
        if self.fired:
            return None
        if now < self.at:
            return Later(self.at)
        self.fired = True
        return self.done.set


@pytest.fixture
async def executor() -> AsyncIterator[DeviceExecutor]:
    ex = DeviceExecutor("test")
    yield ex
    ex.close()
    await asyncio.to_thread(ex.join, 5)


async def test_call_runs_on_the_device_thread_and_returns_its_value(
    executor: DeviceExecutor,
) -> None:
    executor.start()
    name = await executor.call(lambda: threading.current_thread().name)
    assert name == "squeezer-test"


async def test_call_exception_reaches_the_caller_and_the_thread_lives_on(
    executor: DeviceExecutor,
) -> None:
    executor.start()

    def boom() -> None:
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        await executor.call(boom)
    assert await executor.call(lambda: 7) == 7


async def test_call_before_start_or_after_close_is_unavailable(executor: DeviceExecutor) -> None:
    with pytest.raises(UnavailableError):
        await executor.call(lambda: 1)
    executor.start()
    executor.close()
    with pytest.raises(UnavailableError):
        await executor.call(lambda: 1)


async def test_sources_take_turns_one_unit_each() -> None:
    log: list[str] = []
    gate = threading.Event()
    ex = DeviceExecutor("rr")
    a, b = ListSource("a", 4, log, gate), ListSource("b", 2, log, gate)
    ex.add_source(a)
    ex.add_source(b)
    ex.start()
    gate.set()
    await ex.call(lambda: None)  # queued behind whatever turns were already due
    for _ in range(5000):  # bounded wait for the thread to finish all six units
        if len(log) == 6:
            break
        await asyncio.sleep(0.001)
    ex.close()
    await asyncio.to_thread(ex.join, 5)
    assert log == ["a", "b", "a", "b", "a", "a"]


async def test_later_wakes_the_thread_when_the_clock_reaches_it() -> None:
    clock = [0.0]
    done = threading.Event()
    ex = DeviceExecutor("later", clock=lambda: clock[0])
    ex.add_source(LaterSource(clock, at=0.02, done=done))
    ex.start()
    assert not done.is_set()
    clock[0] = 0.02  # the thread's timed wait (0.02 s real) ends and it polls again
    assert await asyncio.to_thread(done.wait, 5)
    ex.close()
    await asyncio.to_thread(ex.join, 5)


async def test_cancelled_call_that_is_still_queued_never_runs(executor: DeviceExecutor) -> None:
    executor.start()
    release = threading.Event()
    entered = threading.Event()
    ran: deque[str] = deque()

    def blocker() -> None:
        entered.set()
        release.wait(5)

    first = asyncio.create_task(executor.call(blocker))
    assert await asyncio.to_thread(entered.wait, 5)
    second = asyncio.create_task(executor.call(lambda: ran.append("second")))
    await asyncio.sleep(0)  # let it queue
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    release.set()
    await first
    await executor.call(lambda: None)
    assert list(ran) == []


async def test_close_fails_calls_still_queued(executor: DeviceExecutor) -> None:
    executor.start()
    release = threading.Event()
    entered = threading.Event()

    def blocker() -> None:
        entered.set()
        release.wait(5)

    first = asyncio.create_task(executor.call(blocker))
    assert await asyncio.to_thread(entered.wait, 5)
    queued = asyncio.create_task(executor.call(lambda: 1))
    await asyncio.sleep(0)
    executor.close()
    with pytest.raises(UnavailableError):
        await queued
    release.set()
    await first


async def test_in_fresh_thread_returns_raises_and_its_thread_ends() -> None:
    """Model loading runs on a thread that ends with it (libgomp frees that thread's
    worker pool, which would otherwise throttle the compute thread's)."""
    from squeezer.engine.executor import in_fresh_thread

    seen: list[threading.Thread] = []

    def load(x: int) -> int:
        seen.append(threading.current_thread())
        return x + 1

    assert await in_fresh_thread(load, 41) == 42
    assert seen[0] is not threading.main_thread()
    seen[0].join(timeout=5)
    assert not seen[0].is_alive()

    def broken() -> None:
        raise ValueError("not a model")

    with pytest.raises(ValueError, match="not a model"):
        await in_fresh_thread(broken)
