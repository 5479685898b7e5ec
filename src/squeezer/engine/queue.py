"""One model's queue of items: the work source that forms its batches and runs them.

Threads: ``enqueue``/``cancel``/``fail_all`` run on the event loop; ``poll`` and the
batch it returns run on the device's compute thread. All shared state is guarded by
one lock per model, held only for list bookkeeping, never during compute. Answers go
back to the loop with ``call_soon_threadsafe`` (``settle_threadsafe``).

Removed requests (cancelled, expired, failed) leave their queued entries behind as
dead entries that batch forming skips and drops; ``depth`` counts live ones only.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from squeezer.backends.base import Backend
from squeezer.engine.batching import batch_is_full, padded_tokens, select_batch
from squeezer.engine.executor import Later, Work, settle_threadsafe
from squeezer.engine.observer import EngineObserver
from squeezer.errors import (
    BackendError,
    DeadlineExceededError,
    DeviceOutOfMemoryError,
    SqueezerError,
)
from squeezer.types import BatchRunner, BatchTiming, WorkTiming


@dataclass(frozen=True, slots=True)
class _DidNotFit:
    """One input's place in a batch's results when it alone overflowed device memory."""

    error: DeviceOutOfMemoryError

    def exception(self) -> DeviceOutOfMemoryError:
        return self.error


_ids = itertools.count()


@dataclass(eq=False, slots=True)
class Pending:
    """One admitted request: where its results collect until all items are done."""

    fut: asyncio.Future[list[Any]]
    size: int
    submitted_at: float
    deadline: float | None
    results: list[Any] = field(init=False)
    remaining: int = field(init=False)  # items not yet computed
    queued: int = field(init=False)  # items still waiting in the queue
    done: bool = False  # answered, failed or cancelled: its entries are dead
    key: int = field(default_factory=lambda: next(_ids))
    #: When its first batch began (the engine's clock), and the batches it was in.
    first_batch_at: float | None = None
    batches: list[BatchTiming] = field(default_factory=list)

    def timing(self) -> WorkTiming:
        started = self.first_batch_at if self.first_batch_at is not None else self.submitted_at
        return WorkTiming(max(0.0, started - self.submitted_at), tuple(self.batches))

    def __post_init__(self) -> None:
        self.results = [None] * self.size
        self.remaining = self.size
        self.queued = self.size


@dataclass(slots=True)
class Entry:
    """One queued item, pointing back at its request and its place in the answer."""

    req: Pending
    index: int
    item: Any
    num_tokens: int
    enqueued_at: float


class ModelQueue:
    """Queue, batch forming, and the batch run for one served model."""

    def __init__(
        self,
        name: str,
        backend: Backend,
        runner: BatchRunner[Any, Any],
        *,
        max_batch_tokens: int,
        max_batch_requests: int,
        max_wait_s: float,
        overhead_tokens: float | None = None,
        observer: EngineObserver,
        clock: Callable[[], float],
        wake: Callable[[], None],
    ) -> None:
        self.name = name
        self.backend = backend
        self.runner = runner
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_wait_s = max_wait_s
        self.overhead_tokens = overhead_tokens
        #: Items looked at per batch for length grouping (see ``batching``).
        self.window = max(256, 4 * max_batch_requests)
        #: Set when draining: nothing more will arrive, so never hold a batch back.
        self.flush = False
        self._observer = observer
        self._clock = clock
        self._wake = wake
        self._lock = threading.Lock()
        self._entries: deque[Entry] = deque()
        self._live: dict[int, Pending] = {}
        self._depth = 0

    @property
    def depth(self) -> int:
        """Live items waiting in the queue (not running, not dead)."""
        return self._depth

    @property
    def idle(self) -> bool:
        """No request is waiting or computing: the queue may be removed."""
        with self._lock:
            return not self._live

    def enqueue(self, req: Pending, items: list[Any]) -> None:
        now = self._clock()
        entries = [Entry(req, i, it, int(it.num_tokens), now) for i, it in enumerate(items)]
        with self._lock:
            self._live[req.key] = req
            self._entries.extend(entries)
            self._depth += len(entries)
            depth = self._depth
        self._observer.on_queue_depth(self.name, depth)
        self._wake()

    def cancel(self, req: Pending) -> None:
        """Drop a request's queued items (its client went away); running ones finish."""
        with self._lock:
            dropped = self._finish(req)
            depth = self._depth
        if dropped:
            self._observer.on_queue_depth(self.name, depth)

    def fail_all(self, exc_factory: Callable[[], BaseException]) -> None:
        """Answer every request not yet answered with an error (used at stop timeout)."""
        with self._lock:
            reqs = list(self._live.values())
            for req in reqs:
                self._finish(req)
            self._entries.clear()
        for req in reqs:
            settle_threadsafe(req.fut, exc=exc_factory())
        self._observer.on_queue_depth(self.name, 0)

    def _finish(self, req: Pending) -> int:
        """Mark ``req`` answered (lock held); returns how many queued items it dropped."""
        if req.done:
            return 0
        req.done = True
        self._live.pop(req.key, None)
        dropped, req.queued = req.queued, 0
        self._depth -= dropped
        return dropped

    def _expire(self, now: float) -> bool:
        """Fail requests whose deadline passed while items of theirs still wait (lock
        held): their queued items are dropped, so a request of many items (a long
        context's windows) stops costing compute at its deadline, not at its end. One
        whose items are all computed or computing is let finish."""
        expired = [
            r
            for r in self._live.values()
            if r.deadline is not None and r.deadline <= now and r.queued > 0
        ]
        for req in expired:
            error = self._deadline_error(req, now)  # before _finish drops its queued items
            self._finish(req)
            settle_threadsafe(req.fut, exc=error)
        return bool(expired)

    def _deadline_error(self, req: Pending, now: float) -> DeadlineExceededError:
        left = "" if req.queued == req.size else f" ({req.queued} of its {req.size} items)"
        return DeadlineExceededError(
            f"request to model {self.name!r} waited {now - req.submitted_at:.3f}s in the "
            f"queue and passed its deadline before it could be computed{left}"
        )

    def expire_if_waiting(self, req: Pending) -> None:
        """Deadline timer (event loop): answer now if items of the request still wait."""
        with self._lock:
            if req.done or req.queued == 0:
                return
            error = self._deadline_error(req, self._clock())
            self._finish(req)
            depth = self._depth
        req.fut.set_exception(error)
        self._observer.on_queue_depth(self.name, depth)

    def poll(self, now: float) -> Work | Later | None:
        """Form the next batch (compute thread). See ``batching`` for the rule."""
        with self._lock:
            expired = self._expire(now)
            window: list[Entry] = []
            while self._entries and len(window) < self.window:
                entry = self._entries.popleft()
                if not entry.req.done:
                    window.append(entry)
            if not window:
                result: Work | Later | None = None
            else:
                chosen = select_batch(
                    window,
                    max_tokens=self.max_batch_tokens,
                    max_requests=self.max_batch_requests,
                    overhead_tokens=self.overhead_tokens,
                )
                if self._hold(window, chosen, now):
                    self._entries.extendleft(reversed(window))
                    result = Later(window[0].enqueued_at + self.max_wait_s)
                else:
                    result = self._take(window, chosen)
            depth = self._depth
        if expired and not callable(result):  # a taken batch reports depth when it runs
            self._observer.on_queue_depth(self.name, depth)
        return result

    def _hold(self, window: list[Entry], chosen: list[int], now: float) -> bool:
        """Whether to hold the batch back for more items (``max_wait_ms`` > 0 only).

        Held while it is not full, the oldest item has waited less than ``max_wait_ms``,
        nothing lies beyond the window, and the engine is not draining.
        """
        if self.max_wait_s <= 0 or self.flush or self._entries:
            return False
        if now >= window[0].enqueued_at + self.max_wait_s:
            return False
        return not batch_is_full(
            window, chosen, max_tokens=self.max_batch_tokens, max_requests=self.max_batch_requests
        )

    def _take(self, window: list[Entry], chosen: list[int]) -> Work:
        """Remove the chosen entries (lock held), put the rest back in order."""
        picked = set(chosen)
        batch = [window[i] for i in chosen]
        self._entries.extendleft(reversed([e for i, e in enumerate(window) if i not in picked]))
        for entry in batch:
            entry.req.queued -= 1
        self._depth -= len(batch)
        depth = self._depth
        return lambda: self._run_batch(batch, depth)

    def _run_batch(self, batch: list[Entry], depth: int) -> None:
        """Collate, forward, split on the compute thread; answer or fail the requests."""
        now = self._clock()
        for entry in batch:
            self._observer.on_queue_wait(self.name, now - entry.enqueued_at)
        self._observer.on_queue_depth(self.name, depth)
        items = [e.item for e in batch]
        lengths = [e.num_tokens for e in batch]
        started_ns = time.time_ns()  # for traces: wall time, comparable across processes
        started = time.perf_counter()  # a duration for metrics: real time, not the clock
        forward = [0, 0]  # the backend's forward: first start, last end (ns)
        try:
            results = self._compute(items, forward)
        except SqueezerError as e:  # the runner's own verdict: passed through unchanged
            passthrough = e
            self._fail_batch(batch, lambda: passthrough)
            return
        except Exception as e:
            msg = (
                f"model {self.name!r}: batch of {len(items)} items failed: {type(e).__name__}: {e}"
            )
            self._fail_batch(batch, lambda: BackendError(msg))
            return
        compute_s = time.perf_counter() - started
        timing = BatchTiming(
            started_ns, time.time_ns(), len(batch), padded_tokens(lengths), *forward
        )
        for entry, result in zip(batch, results, strict=True):
            if isinstance(result, _DidNotFit):
                self._fail_batch([entry], result.exception)
        finished: list[Pending] = []
        with self._lock:
            for entry, result in zip(batch, results, strict=True):
                req = entry.req
                if req.done:
                    continue
                if not req.batches or req.batches[-1] is not timing:
                    req.batches.append(timing)
                    if req.first_batch_at is None:
                        req.first_batch_at = now
                req.results[entry.index] = result
                req.remaining -= 1
                if req.remaining == 0:
                    self._finish(req)
                    finished.append(req)
        # Reported before answering, so a caller that has its answer sees its batch counted.
        self._observer.on_batch(
            self.name, len(batch), padded_tokens(lengths), sum(lengths), compute_s
        )
        for req in finished:
            settle_threadsafe(req.fut, req.results)

    def _compute(self, items: list[Any], forward: list[int]) -> list[Any]:
        """Forward and split. A batch that does not fit in device memory is halved until
        its parts do; an input that does not fit alone gets ``_DidNotFit`` in place of
        its result, so only its own request fails. ``forward`` gets the first start and
        the last end of the backend's forward passes (wall ns, for traces)."""
        try:
            batch = self.runner.collate(items)
            forward[0] = forward[0] or time.time_ns()
            outputs = self.backend.forward(batch, self.runner.outputs(items))
        except DeviceOutOfMemoryError as e:
            if len(items) == 1:
                return [_DidNotFit(e)]
            half = len(items) // 2
            return self._compute(items[:half], forward) + self._compute(items[half:], forward)
        forward[1] = time.time_ns()
        results = self.runner.split(outputs, items)
        if len(results) != len(items):
            raise RuntimeError(f"split returned {len(results)} results for {len(items)}")
        return results

    def _fail_batch(self, batch: list[Entry], exc_factory: Callable[[], BaseException]) -> None:
        """Fail every request with an item in this batch; their queued items go too."""
        with self._lock:
            reqs = {e.req.key: e.req for e in batch if not e.req.done}
            dropped = sum(self._finish(r) for r in reqs.values())
            depth = self._depth
        for req in reqs.values():
            settle_threadsafe(req.fut, exc=exc_factory())
        if dropped:
            self._observer.on_queue_depth(self.name, depth)
