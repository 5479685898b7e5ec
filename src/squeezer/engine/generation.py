"""Continuous batching: iteration-level scheduling of generation on a device's thread.

The scheduler is a ``WorkSource`` of the device executor, so its steps take turns
with other models' batches on the same thread (an embedding request completes while
streams decode). Each turn is one step: sequences cancelled since the last step are
freed, waiting requests join while slots and the token budget allow (their prompts
are prefilled and their first tokens sampled), then every running sequence decodes
one token together. Finished sequences leave at once.

It works in token ids only: a request ends at ``max_new_tokens`` or an EOS id; text
stop sequences are the task layer's, which cancels the stream when it sees one. The
backend owns the KV cache and the sampler; tensors never reach this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import cast

from squeezer.backends.base import GenerationBackend, NewSequence, TokenOut
from squeezer.backends.sampling import SamplingParams
from squeezer.engine.executor import Work
from squeezer.engine.observer import EngineObserver, NullObserver
from squeezer.errors import BackendError, InputTooLongError, OverloadedError, UnavailableError


class FinishReason(str, Enum):
    LENGTH = "length"  # max_new_tokens reached
    EOS = "eos"  # the model ended the sequence
    CANCELLED = "cancelled"  # the client went away, or a stop sequence was seen


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: Sequence[int]
    max_new_tokens: int
    params: SamplingParams = field(default_factory=SamplingParams)
    eos_ids: frozenset[int] = frozenset()
    #: Benchmark clients (vLLM's ``ignore_eos``) ask for exactly max_new_tokens.
    ignore_eos: bool = False


@dataclass(frozen=True, slots=True)
class Finished:
    reason: FinishReason
    generated: int


Event = TokenOut | Finished | BaseException


class GenerationStream:
    """Tokens of one request as they are sampled, then a ``Finished``."""

    def __init__(self, seq_id: int, scheduler: GenerationScheduler) -> None:
        self.id = seq_id
        self._scheduler = scheduler
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self.finished: Finished | None = None

    def _push(self, event: Event) -> None:  # from the compute thread
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is reading
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the start of the next step."""
        self._scheduler.cancel(self.id)

    async def __aiter__(self) -> AsyncIterator[TokenOut]:
        try:
            while True:
                event = await self._queue.get()
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, Finished):
                    self.finished = event
                    return
                yield event
        finally:
            if self.finished is None:  # the consumer stopped early (disconnect, stop text)
                self.cancel()


@dataclass(slots=True)
class _Sequence:
    request: GenerationRequest
    stream: GenerationStream
    generated: int = 0
    last: int = -1


class GenerationScheduler:
    """Admits, prefills, decodes and retires sequences, one step per executor turn."""

    def __init__(
        self,
        backend: GenerationBackend,
        *,
        wake: Callable[[], None],
        max_batch_total_tokens: int,
        max_concurrent_requests: int,
        max_prefill_tokens: int = 4096,
        name: str = "generate",
        observer: EngineObserver | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.backend = backend
        self.name = name
        self._observer = observer or NullObserver()
        self._clock = clock
        self._wake = wake
        self.max_batch_total_tokens = max_batch_total_tokens
        self.max_concurrent = max_concurrent_requests
        #: Prompt tokens prefilled in one step (TGI's --max-batch-prefill-tokens).
        self.max_prefill_tokens = max_prefill_tokens
        self._lock = threading.Lock()
        self._waiting: deque[_Sequence] = deque()
        self._running: dict[int, _Sequence] = {}
        self._cancelled: set[int] = set()
        self._ids = itertools.count()
        self._closed = False
        self.steps = 0

    # -- event loop side ----------------------------------------------------------

    def submit(self, request: GenerationRequest) -> GenerationStream:
        total = len(request.prompt) + request.max_new_tokens
        if not request.prompt or total > self.backend.max_len:
            raise InputTooLongError(
                f"prompt ({len(request.prompt)} tokens) + max_new_tokens "
                f"({request.max_new_tokens}) must be at most {self.backend.max_len}"
            )
        if total > self.max_batch_total_tokens:
            raise InputTooLongError(
                f"prompt + max_new_tokens = {total} exceeds max_batch_total_tokens "
                f"({self.max_batch_total_tokens})"
            )
        with self._lock:
            if self._closed:
                raise UnavailableError("generation has stopped")
            if len(self._waiting) + len(self._running) >= self.max_concurrent:
                raise OverloadedError(
                    f"{self.max_concurrent} generation requests are in flight; retry later"
                )
            stream = GenerationStream(next(self._ids), self)
            self._waiting.append(_Sequence(request, stream))
        self._wake()
        return stream

    def cancel(self, seq_id: int) -> None:
        with self._lock:
            self._cancelled.add(seq_id)
        self._wake()

    @property
    def load(self) -> tuple[int, int]:
        """(running, waiting) sequences."""
        with self._lock:
            return len(self._running), len(self._waiting)

    # -- compute thread side ------------------------------------------------------

    def poll(self, now: float) -> Work | None:
        with self._lock:
            if self._closed or not (self._waiting or self._running or self._cancelled):
                return None
        return self.step

    def _budget_used(self) -> int:
        return sum(len(s.request.prompt) + s.request.max_new_tokens for s in self._running.values())

    def _admit(self) -> list[_Sequence]:
        """Retire cancelled sequences, then take waiting ones while slots, the token
        budget and the per-step prefill budget allow (always at least one when a slot
        is free, however long its prompt)."""
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            self._waiting = deque(s for s in self._waiting if s.stream.id not in cancelled)
            gone = [self._running[i] for i in cancelled if i in self._running]
        for seq in gone:
            self._retire(seq, FinishReason.CANCELLED)
        with self._lock:
            admitted: list[_Sequence] = []
            used = self._budget_used()
            prefill = 0
            while self._waiting and len(self._running) + len(admitted) < self.backend.max_slots:
                nxt = self._waiting[0]
                cost = len(nxt.request.prompt) + nxt.request.max_new_tokens
                if used + cost > self.max_batch_total_tokens:
                    break
                if admitted and prefill + len(nxt.request.prompt) > self.max_prefill_tokens:
                    break  # the rest join next step: running streams are not stalled long
                admitted.append(self._waiting.popleft())
                used += cost
                prefill += len(nxt.request.prompt)
        return admitted

    def _retire(self, seq: _Sequence, reason: FinishReason) -> None:
        self.backend.free(seq.stream.id)
        with self._lock:
            self._running.pop(seq.stream.id, None)
        seq.stream._push(Finished(reason, seq.generated))

    def _deliver(self, outs: list[TokenOut]) -> None:
        for out in outs:
            seq = self._running[cast(int, out.id)]
            seq.generated += 1
            seq.last = out.token
            seq.stream._push(out)
            if not seq.request.ignore_eos and out.token in seq.request.eos_ids:
                self._retire(seq, FinishReason.EOS)
            elif seq.generated >= seq.request.max_new_tokens:
                self._retire(seq, FinishReason.LENGTH)

    def step(self) -> None:
        """One iteration: retire cancelled, admit and prefill, decode all running."""
        self.steps += 1
        t0 = self._clock()
        admitted = self._admit()
        decoding = {i: s.last for i, s in self._running.items()}
        if not (admitted or decoding):
            return
        try:
            if admitted:
                with self._lock:
                    self._running.update({s.stream.id: s for s in admitted})
                new = [
                    NewSequence(s.stream.id, s.request.prompt, s.request.params) for s in admitted
                ]
                self._deliver(self.backend.prefill(new))
            if decoding:
                self._deliver(self.backend.decode(decoding))
        except Exception as e:  # a failed step fails only the sequences it held
            self._fail(BackendError(f"generation step failed: {e}"))
            return
        self._observer.on_generation_step(
            self.name, len(admitted) + len(decoding), self._clock() - t0
        )

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            failed, self._running = list(self._running.values()), {}
        for seq in failed:
            with contextlib.suppress(KeyError):  # never reached the backend
                self.backend.free(seq.stream.id)
            seq.stream._push(exc)

    def fail_all(self, exc: BaseException) -> None:
        """Shutdown (on the event loop): every waiting and running request ends with
        ``exc`` and no step runs again. The backend is left as it is: the device's
        thread is stopping, and a step it may still be inside must not race a free."""
        with self._lock:
            self._closed = True
            seqs = [*self._waiting, *self._running.values()]
            self._waiting, self._running = deque(), {}
        for seq in seqs:
            seq.stream._push(exc)
