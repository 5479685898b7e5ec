"""The engine: admits requests, queues them per model, runs them per device, drains.

It decides *when* work runs and nothing about what it means: items are opaque apart
from ``num_tokens``, and the model's ``BatchRunner`` (from the task layer) turns them
into arrays and back. Lifecycle is explicit (``start``/``stop``) and there is no
process-global state, so one process can hold several engines (tests, Ray replicas).

Threads: every public method is called on the event loop. Collate, forward and split
run on the device's compute thread (``DeviceExecutor``), so the loop never blocks on
compute; results come back through ``call_soon_threadsafe``. ``in_flight`` and
``accepting`` are loop-only state and need no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

from squeezer.backends.base import Backend, GenerationBackend
from squeezer.engine.executor import DeviceExecutor
from squeezer.engine.generation import GenerationRequest, GenerationScheduler, GenerationStream
from squeezer.engine.limits import EngineLimits
from squeezer.engine.observer import EngineObserver, NullObserver, SafeObserver
from squeezer.engine.queue import ModelQueue, Pending
from squeezer.errors import (
    DeadlineExceededError,
    ModelNotFoundError,
    OverloadedError,
    UnavailableError,
)
from squeezer.types import Answer, BatchRunner, EngineRequest, WorkTiming

T = TypeVar("T")


class Engine:
    """Queues and compute threads for every served model; see the module docstring."""

    def __init__(
        self,
        limits: EngineLimits,
        *,
        observer: EngineObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._observer = SafeObserver(observer or NullObserver())
        self._clock = clock
        self._models: dict[str, ModelQueue] = {}
        self._generators: dict[str, GenerationScheduler] = {}
        self._executors: dict[str, DeviceExecutor] = {}
        #: When each model was last asked for work (residency's least recently used).
        self._last_used: dict[str, float] = {}
        self._started = False
        self._stopped = False
        self._accepting = False
        self._in_flight = 0
        self._idle: asyncio.Event | None = None

    # -- setup -----------------------------------------------------------------------

    def add_model(
        self,
        name: str,
        backend: Backend,
        runner: BatchRunner[Any, Any],
        *,
        device: str,
        max_batch_tokens: int | None = None,
        max_batch_requests: int | None = None,
        batch_overhead_tokens: float | None = None,
    ) -> None:
        """Serve ``name``; models with the same ``device`` string share one thread.

        ``batch_overhead_tokens``: the fixed cost of one forward pass in padded-token
        units; when set, batches are split into length groups by cost (``batching``).

        May be called after ``start`` (on the loop): a new device's thread starts then.
        """
        if name in self._models:
            raise ValueError(f"model {name!r} is already added")
        for label, value in (
            ("max_batch_tokens", max_batch_tokens),
            ("max_batch_requests", max_batch_requests),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{label} must be > 0, got {value}")
        executor = self._executor(device)
        queue = ModelQueue(
            name,
            backend,
            runner,
            max_batch_tokens=max_batch_tokens or self.limits.max_batch_tokens,
            max_batch_requests=max_batch_requests or self.limits.max_batch_requests,
            max_wait_s=self.limits.max_wait_ms / 1000.0,
            overhead_tokens=batch_overhead_tokens,
            observer=self._observer,
            clock=self._clock,
            wake=executor.wake,
        )
        self._models[name] = queue
        executor.add_source(queue)
        if self._started and not self._stopped:
            executor.start()

    def add_generator(
        self,
        name: str,
        backend: GenerationBackend,
        *,
        device: str,
        max_batch_total_tokens: int,
        max_concurrent_requests: int,
        max_prefill_tokens: int = 4096,
    ) -> GenerationScheduler:
        """Serve causal LM ``name``: its continuous-batching scheduler takes turns on
        ``device``'s thread with the models placed there."""
        if name in self._models or name in self._generators:
            raise ValueError(f"model {name!r} is already added")
        executor = self._executor(device)
        scheduler = GenerationScheduler(
            backend,
            wake=executor.wake,
            max_batch_total_tokens=max_batch_total_tokens,
            max_concurrent_requests=max_concurrent_requests,
            max_prefill_tokens=max_prefill_tokens,
            name=name,
            observer=self._observer,
        )
        self._generators[name] = scheduler
        executor.add_source(scheduler)
        if self._started and not self._stopped:
            executor.start()
        return scheduler

    async def remove(self, name: str, timeout: float) -> None:
        """Stop serving ``name`` (a model or a generator): new requests for it are
        refused at once (``ModelNotFoundError``), the ones it admitted finish, and then
        its queue leaves its device's thread, so its weights can be freed.

        What is still unanswered after ``timeout`` seconds fails with
        ``UnavailableError``. A device left without models keeps its (idle) thread."""
        queue = self._models.pop(name, None)
        scheduler = self._generators.pop(name, None)
        self._last_used.pop(name, None)
        source: ModelQueue | GenerationScheduler | None = queue or scheduler
        if source is None:
            raise ModelNotFoundError(f"model {name!r} is not served")
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, timeout)
        message = f"model {name!r} was unloaded after a {timeout:g}s drain before this finished"
        if queue is not None:
            queue.flush = True  # nothing more will arrive: never hold a batch back
            for executor in self._executors.values():
                executor.wake()
            while not queue.idle and loop.time() < end:
                await asyncio.sleep(0.02)
            queue.fail_all(lambda: UnavailableError(message))
        if scheduler is not None:
            while sum(scheduler.load) and loop.time() < end:
                await asyncio.sleep(0.02)
            scheduler.fail_all(UnavailableError(message))
        owner = None
        for executor in self._executors.values():
            with contextlib.suppress(ValueError):  # a source of another device's thread
                executor.remove_source(source)
                owner = executor
        # Weights, caches and sessions freed now, on the thread that used them (after
        # any unit of work it is inside), not whenever the collector gets to them.
        close = getattr(source.backend, "close", None)
        if close is None:
            return
        if owner is not None and owner.running:
            # Within what is left of the drain (a second at least): a pass stuck past it must not
            # hold the unload (the references go anyway; the collector frees them).
            with contextlib.suppress(UnavailableError, asyncio.TimeoutError):
                await asyncio.wait_for(owner.call(close), max(1.0, end - loop.time()))
            return
        close()

    def _executor(self, device: str) -> DeviceExecutor:
        executor = self._executors.get(device)
        if executor is None:
            executor = DeviceExecutor(device, clock=self._clock)
            self._executors[device] = executor
        return executor

    async def start(self) -> None:
        """Start every device's compute thread and begin accepting requests."""
        if self._stopped:
            raise RuntimeError("an engine cannot be restarted after stop(); build a new one")
        if self._started:
            return
        self._idle = asyncio.Event()
        self._idle.set()
        for executor in self._executors.values():
            executor.start()
        self._started = True
        self._accepting = True

    # -- requests --------------------------------------------------------------------

    async def submit(self, request: EngineRequest) -> list[Any]:
        """``run``'s results alone."""
        return (await self.run(request)).results

    async def run(self, request: EngineRequest) -> Answer:
        """Run all of ``request.items``; results in item order, with their timing.

        Raises at once ``UnavailableError`` (not started, or draining),
        ``ModelNotFoundError`` or ``OverloadedError`` (``max_concurrent_requests``
        admitted already). Later: ``DeadlineExceededError`` if the deadline passes
        while items are still queued, ``BackendError`` if a batch holding one of its
        items fails. Cancelling the caller drops its still-queued items.
        """
        if not self._accepting:
            raise UnavailableError("the engine is not accepting requests (starting or draining)")
        queue = self._models.get(request.model)
        if queue is None:
            raise ModelNotFoundError(f"model {request.model!r} is not served")
        if not request.items:
            return Answer([], WorkTiming())
        if self._in_flight >= self.limits.max_concurrent_requests:
            raise OverloadedError(
                f"{self._in_flight} requests in flight (max_concurrent_requests="
                f"{self.limits.max_concurrent_requests}); retry later",
                retry_after_s=1.0,
            )
        now = self._clock()
        self._last_used[request.model] = now
        if request.deadline is not None and request.deadline <= now:
            raise DeadlineExceededError(
                f"request to model {request.model!r} arrived {now - request.deadline:.3f}s "
                "past its deadline; it waited 0.000s in the queue and was not computed"
            )
        loop = asyncio.get_running_loop()
        pending = Pending(loop.create_future(), len(request.items), now, request.deadline)
        self._admit()
        timer = None
        if request.deadline is not None:
            # Answer at the deadline itself, not when the model's next batch forms: a
            # request stuck behind a long forward pass must not wait for it to end.
            timer = loop.call_at(
                loop.time() + (request.deadline - now), queue.expire_if_waiting, pending
            )
        try:
            queue.enqueue(pending, request.items)
            return Answer(await pending.fut, pending.timing())
        except asyncio.CancelledError:
            queue.cancel(pending)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._release()

    def generate(self, model: str, request: GenerationRequest) -> GenerationStream:
        """Start generating: tokens stream back as the scheduler's steps sample them.

        Raises at once ``UnavailableError`` (not started, or draining),
        ``ModelNotFoundError``, ``OverloadedError`` (the scheduler's queue is full) or
        ``InputTooLongError``. Leaving the stream early cancels the sequence."""
        if not self._accepting:
            raise UnavailableError("the engine is not accepting requests (starting or draining)")
        scheduler = self._generators.get(model)
        if scheduler is None:
            raise ModelNotFoundError(f"generation model {model!r} is not served")
        self._last_used[model] = self._clock()
        return scheduler.submit(request)

    async def open_stream(self, model: str, request: GenerationRequest) -> GenerationStream:
        """``generate`` as ``EngineCalls`` has it: awaitable, as it is over a socket."""
        return self.generate(model, request)

    async def run_on_device(self, device: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` on ``device``'s compute thread, in its turn among the models there
        (warm-up now, generation steps later). Works while the engine is started,
        draining included; ``UnavailableError`` before start and after stop."""
        executor = self._executors.get(device)
        if executor is None:
            raise ValueError(f"no model is placed on device {device!r}")
        if not self._started:
            raise UnavailableError("the engine is not started")
        return await executor.call(fn)

    # -- shutdown --------------------------------------------------------------------

    async def stop(self, timeout: float) -> None:
        """Drain: refuse new requests, finish every admitted one, stop the threads.

        What is still unanswered after ``timeout`` seconds fails with
        ``UnavailableError``; a forward pass still running then is abandoned (its
        thread is a daemon and exits once the pass returns).
        """
        self._accepting = False
        if self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        end = loop.time() + max(0.0, timeout)
        for queue in self._models.values():
            queue.flush = True
        for executor in self._executors.values():
            executor.wake()
        if self._idle is not None and not self._idle.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), max(0.0, end - loop.time()))
        while any(sum(g.load) for g in self._generators.values()) and loop.time() < end:
            await asyncio.sleep(0.05)  # streams still generating finish within the drain
        message = f"the engine stopped after a {timeout:g}s drain before this was computed"
        for scheduler in self._generators.values():
            scheduler.fail_all(UnavailableError(message))
        if self._in_flight:
            for queue in self._models.values():
                queue.fail_all(lambda: UnavailableError(message))
            if self._idle is not None:  # the failed submits return within a loop turn or two
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), 1.0)
        for executor in self._executors.values():
            executor.close()
        for executor in self._executors.values():
            await asyncio.to_thread(executor.join, max(0.0, end - loop.time()))

    # -- state -----------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Whether ``submit`` admits new requests (started and not draining)."""
        return self._accepting

    def queue_depth(self, model: str) -> int:
        """Items of ``model`` waiting in its queue (not those already computing)."""
        queue = self._models.get(model)
        if queue is None:
            raise ModelNotFoundError(f"model {model!r} is not served")
        return queue.depth

    def last_used(self, model: str) -> float:
        """The engine clock's time ``model`` was last asked for work; 0 if never."""
        return self._last_used.get(model, 0.0)

    @property
    def in_flight(self) -> int:
        """Admitted requests not yet answered."""
        return self._in_flight

    @property
    def models(self) -> tuple[str, ...]:
        return (*self._models, *self._generators)

    def generator(self, model: str) -> GenerationScheduler:
        scheduler = self._generators.get(model)
        if scheduler is None:
            raise ModelNotFoundError(f"generation model {model!r} is not served")
        return scheduler

    def _admit(self) -> None:
        self._in_flight += 1
        if self._idle is not None:
            self._idle.clear()

    def _release(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()
