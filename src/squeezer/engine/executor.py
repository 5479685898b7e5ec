"""One compute thread per device, taking turns among the work sources that use it.

Why one thread per device: two forward passes on one device at once only fight over
the same cores or GPU (and most runtimes are not re-entrant), so all models placed on a
device share a single thread and never compute at the same time. Why *turns*: a model
with a deep queue must not starve a model with one request, so the thread goes
round-robin over its **work sources**, running at most one unit of work per turn.

A work source is anything with ``poll(now)``: the per-model batch queue, the queue of
``run_on_device`` calls, and later the generation scheduler's decode steps. The executor
knows nothing of batches; a source hands it a ready-to-run closure, or says when it
will have one (a batch held back by ``max_wait_ms``), or that it has nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from squeezer.backends.heap import trim_heap
from squeezer.errors import UnavailableError

log = logging.getLogger(__name__)
#: Seconds of work between two heap trims on a device thread.
TRIM_EVERY_S = 10.0

T = TypeVar("T")

#: One unit of work, run on the compute thread; it delivers its own results and errors.
Work = Callable[[], None]


async def in_fresh_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a thread of its own that ends with it: model loading.

    Loading runs torch's (and llama.cpp's) OpenMP kernels, and libgomp keeps a pool of
    worker threads for every thread that ever ran a parallel region, for as long as
    that thread lives. ``asyncio.to_thread``'s threads live on, so their idle pool
    stayed counted; with more libgomp threads than cores, libgomp throttles every
    barrier's spin to ~100 iterations, so the compute thread's workers sleep and wake
    between the hundreds of parallel regions of each decode step. One stream of
    SmolLM2 decoded at 35 tok/s instead of 88 on llama.cpp and 16.5 instead of 26 on
    torch (2 cores, docs/benchmarks.md). A thread that ends frees its pool."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as e:  # delivered to the awaiting task
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="squeezer-load", daemon=True).start()
    return await done


@dataclass(frozen=True, slots=True)
class Later:
    """A source's answer when it holds work back until clock time ``at``."""

    at: float


class WorkSource(Protocol):
    """Something that hands the compute thread work, one unit per turn."""

    def poll(self, now: float) -> Work | Later | None:
        """Called on the compute thread. Returns work to run now, ``Later`` if work will
        be ready at a known time without further wake-ups, or ``None`` if idle. Sources
        call ``DeviceExecutor.wake`` when new work arrives."""
        ...


def settle_threadsafe(
    fut: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None
) -> None:
    """Resolve a future owned by an event loop from any thread; no-op if already done.

    A future cancelled meanwhile (client went away) or a loop already closed (shutdown)
    just means nobody is waiting for this answer any more.
    """

    def _settle() -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    with contextlib.suppress(RuntimeError):  # loop closed
        fut.get_loop().call_soon_threadsafe(_settle)


@dataclass(slots=True)
class _Call:
    fn: Callable[[], Any]
    fut: asyncio.Future[Any]


class _CallQueue:
    """The work source behind ``run_on_device``: plain callables, first come first run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: deque[_Call] = deque()

    def push(self, call: _Call) -> None:
        with self._lock:
            self._calls.append(call)

    def remove(self, call: _Call) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._calls.remove(call)

    def fail_all(self, exc: BaseException) -> None:
        with self._lock:
            calls, self._calls = list(self._calls), deque()
        for call in calls:
            settle_threadsafe(call.fut, exc=exc)

    def poll(self, now: float) -> Work | None:
        with self._lock:
            if not self._calls:
                return None
            call = self._calls.popleft()

        def work() -> None:
            try:
                result = call.fn()
            except BaseException as e:  # delivered to the caller, who decides
                settle_threadsafe(call.fut, exc=e)
            else:
                settle_threadsafe(call.fut, result)

        return work


class DeviceExecutor:
    """The single compute thread of one device, shared by everything placed on it."""

    def __init__(self, device: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self._clock = clock
        self._cond = threading.Condition()
        self._calls = _CallQueue()
        self._sources: list[WorkSource] = [self._calls]
        self._next = 0  # round-robin position: the source polled first on the next turn
        self._closing = False
        self._thread: threading.Thread | None = None
        self._trimmed_at = time.monotonic()

    @property
    def thread_name(self) -> str:
        return f"squeezer-{self.device}"

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._closing

    def add_source(self, source: WorkSource) -> None:
        with self._cond:
            self._sources.append(source)
            self._cond.notify()

    def remove_source(self, source: WorkSource) -> None:
        with self._cond:
            self._sources.remove(source)
            self._next = 0

    def start(self) -> None:
        """Start the thread (daemon: a forward pass stuck forever must not hang exit)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Tell the thread a source may have new work (call after enqueueing)."""
        with self._cond:
            self._cond.notify()

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on this device's thread in its turn; its result or exception back."""
        if not self.running:
            raise UnavailableError(f"device {self.device!r} is not running")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        call = _Call(fn, fut)
        self._calls.push(call)
        self.wake()
        try:
            return await fut
        except asyncio.CancelledError:
            self._calls.remove(call)  # still queued: never run; running: result dropped
            raise

    def close(self) -> None:
        """Stop taking turns; queued ``call``s fail. The thread exits after its current
        unit of work (the engine has drained or failed its own work by now)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._calls.fail_all(UnavailableError(f"device {self.device!r} stopped"))

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to exit; False if it is still inside a unit of work."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _turn(self) -> tuple[Work | None, float | None]:
        """Poll sources round-robin from ``_next``; the first with work gets this turn."""
        now = self._clock()
        wake_at: float | None = None
        n = len(self._sources)
        for k in range(n):
            i = (self._next + k) % n
            try:
                polled = self._sources[i].poll(now)
            except Exception:
                log.exception("work source on %s failed to poll", self.device)
                continue
            if polled is None:
                continue
            if isinstance(polled, Later):
                wake_at = polled.at if wake_at is None else min(wake_at, polled.at)
                continue
            self._next = (i + 1) % n
            return polled, None
        return None, wake_at

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closing:
                        return
                    work, wake_at = self._turn()
                    if work is not None:
                        break
                    timeout = None if wake_at is None else max(0.0, wake_at - self._clock())
                    self._cond.wait(timeout)
            try:
                work()
            except Exception:  # work delivers its own errors; this is a bug, not a crash
                log.exception("unit of work on %s raised", self.device)
            self._trim_now_and_then()

    def _trim_now_and_then(self) -> None:
        """Give the heap's free pages back every ``TRIM_EVERY_S`` of work (heap.py):
        batches of changing shapes free blocks of tens of MiB here, glibc keeps them
        in a heap that fragments, and under twice its capacity for 10 minutes the
        engine process grew 4,019 -> 4,516 MiB without this. One trim costs
        milliseconds, once per ``TRIM_EVERY_S``: fixing glibc's mmap threshold instead
        (1 MiB) also kept it flat but cost a forward pass up to 36% in page faults."""
        now = time.monotonic()
        if now - self._trimmed_at >= TRIM_EVERY_S:
            self._trimmed_at = now
            trim_heap()
