"""Continuous batching: iteration-level scheduling of generation on a device's thread.

The scheduler is a ``WorkSource`` of the device executor, so its steps take turns
with other models' batches on the same thread (an embedding request completes while
streams decode). Each turn is one step, one forward pass of the backend: sequences
cancelled since the last step are freed; every decoding sequence gets one token; and
prompts are prefilled in the same pass, up to ``max_prefill_tokens`` of them: first
the rest of prompts already under way, then waiting requests while slots and the
token budget allow (chunked prefill: a long prompt or a burst of joins is spread over
several steps, so running streams never stall for all of it). A sequence samples its
first token in the step its prompt's last chunk runs. Finished sequences leave at once.

It works in token ids only: a request ends at ``max_new_tokens``, an EOS id or one of
its ``stop_ids`` (vLLM's ``stop_token_ids``); text stop sequences are the task
layer's, which cancels the stream when it sees one. The backend owns the KV cache and
the sampler; tensors never reach this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import cast

from squeezer.backends.base import GenerationBackend, NewSequence, PromptChunk, TokenOut
from squeezer.backends.sampling import SamplingParams
from squeezer.engine.executor import Work
from squeezer.engine.observer import EngineObserver, NullObserver
from squeezer.errors import (
    BackendError,
    DeadlineExceededError,
    InputTooLongError,
    InvalidRequestError,
    OverloadedError,
    UnavailableError,
)


class FinishReason(str, Enum):
    LENGTH = "length"  # max_new_tokens reached
    EOS = "eos"  # the model ended the sequence
    STOP_TOKEN = "stop_token"  # one of the request's stop_ids was generated
    CANCELLED = "cancelled"  # the client went away, or a stop sequence was seen


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: Sequence[int]
    max_new_tokens: int
    params: SamplingParams = field(default_factory=SamplingParams)
    eos_ids: frozenset[int] = frozenset()
    #: Benchmark clients (vLLM's ``ignore_eos``) ask for exactly max_new_tokens.
    ignore_eos: bool = False
    #: Tokens that end the request when generated, ``ignore_eos`` or not.
    stop_ids: frozenset[int] = frozenset()
    #: ``time.monotonic()`` by which the request must have been admitted
    #: (``--request-timeout``); one still waiting then fails with a deadline error and
    #: never takes a slot. None: it waits as long as it takes.
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    reason: FinishReason
    generated: int
    #: The stop id that ended it (``STOP_TOKEN``).
    stop_token: int | None = None
    #: Seconds it waited for a sequence slot (for its access-log line and trace).
    queued_s: float = 0.0


Event = TokenOut | Finished | BaseException


class GenerationStream:
    """Tokens of one request as they are sampled, then a ``Finished``."""

    def __init__(self, seq_id: int, on_cancel: Callable[[int], None]) -> None:
        """``on_cancel(seq_id)`` stops the generation (the scheduler's ``cancel``, or a
        message over the engine's socket for a remote stream)."""
        self.id = seq_id
        self._on_cancel = on_cancel
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self.finished: Finished | None = None

    def _push(self, event: Event) -> None:  # from the compute thread
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is reading
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the start of the next step."""
        self._on_cancel(self.id)

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
    #: Prompt tokens already in the backend's cache.
    prefilled: int = 0
    #: When it was submitted and when it got a slot (the scheduler's ``now`` clock).
    submitted: float = 0.0
    admitted: float | None = None

    @property
    def decoding(self) -> bool:
        return self.prefilled == len(self.request.prompt)

    def chunk(self, budget: int) -> PromptChunk:
        """The next at most ``budget`` tokens of its prompt."""
        r = self.request
        new = NewSequence(self.stream.id, r.prompt, r.params, len(r.prompt) + r.max_new_tokens)
        return PromptChunk(new, self.prefilled, min(len(r.prompt), self.prefilled + budget))


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
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` times steps (metrics); ``now`` is the clock requests' deadlines
        are in (tests pass a fake one)."""
        self.backend = backend
        self.name = name
        self._observer = observer or NullObserver()
        self._clock = clock
        self._now = now
        self._wake = wake
        self.max_batch_total_tokens = max_batch_total_tokens
        self.max_concurrent = max_concurrent_requests
        #: Prompt tokens prefilled in one step (TGI's --max-batch-prefill-tokens).
        self.max_prefill_tokens = max(1, max_prefill_tokens)
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
        vocab = self.backend.vocab_size
        try:
            request.params.check_vocabulary(vocab)
        except ValueError as e:  # only logit_bias names token ids today
            raise InvalidRequestError(str(e), param="logit_bias") from None
        if min(request.prompt) < 0 or max(request.prompt) >= vocab:
            # A tokenizer may know ids the model has no embedding for (added tokens),
            # and token-id prompts come from clients: refused here, not in a step.
            bad = next(t for t in request.prompt if not 0 <= t < vocab)
            raise InvalidRequestError(
                f"token id {bad} is outside this model's vocabulary (ids 0 to {vocab - 1})"
            )
        with self._lock:
            if self._closed:
                raise UnavailableError("generation has stopped")
            if len(self._waiting) + len(self._running) >= self.max_concurrent:
                raise OverloadedError(
                    f"{self.max_concurrent} generation requests are in flight; retry later"
                )
            stream = GenerationStream(next(self._ids), self.cancel)
            self._waiting.append(_Sequence(request, stream, submitted=self._now()))
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

    @property
    def prefix_cache(self) -> tuple[int, int]:
        """(prompt tokens admitted, of them found in the backend's cache) since start."""
        return self.backend.prefix_cache()

    @property
    def speculation(self) -> tuple[int, int, int] | None:
        """(verify steps, tokens drafted, accepted) since start; None: not speculating."""
        return self.backend.speculation()

    @property
    def kv_blocks(self) -> tuple[int, int] | None:
        """A paged cache's (blocks, blocks in use), read at scrape time."""
        return self.backend.kv_blocks

    # -- compute thread side ------------------------------------------------------

    def poll(self, now: float) -> Work | None:
        with self._lock:
            if self._closed or not (self._waiting or self._running or self._cancelled):
                return None
        return self.step

    def _budget_used(self) -> int:
        return sum(len(s.request.prompt) + s.request.max_new_tokens for s in self._running.values())

    def _plan(self) -> list[PromptChunk]:
        """Retire cancelled sequences, then choose this step's prompt chunks: the rest
        of prompts under way first, then waiting requests while slots, the token budget
        and the step's prefill budget allow (the last one taken may get a part of its
        prompt, the rest follows next step)."""
        now = self._now()
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            late = [s for s in self._waiting if (s.request.deadline or now + 1) <= now]
            gone_ids = cancelled | {s.stream.id for s in late}
            self._waiting = deque(s for s in self._waiting if s.stream.id not in gone_ids)
            gone = [self._running[i] for i in cancelled if i in self._running]
        for seq in gone:
            self._retire(seq, FinishReason.CANCELLED)
        for seq in late:
            seq.stream._push(
                DeadlineExceededError(
                    "the generation request waited for a free sequence slot past its "
                    "deadline (--request-timeout) and was not started"
                )
            )
        budget = self.max_prefill_tokens
        chunks = []
        for seq in self._running.values():
            if budget and not seq.decoding:
                chunks.append(seq.chunk(budget))
                budget -= chunks[-1].end - chunks[-1].start
        with self._lock:
            used = self._budget_used()
            while budget and self._waiting and len(self._running) < self.backend.max_slots:
                nxt = self._waiting[0]
                cost = len(nxt.request.prompt) + nxt.request.max_new_tokens
                if used + cost > self.max_batch_total_tokens:
                    break
                self._running[nxt.stream.id] = self._waiting.popleft()
                nxt.admitted = now
                chunks.append(nxt.chunk(budget))
                budget -= chunks[-1].end
                used += cost
        return chunks

    def _retire(self, seq: _Sequence, reason: FinishReason, stop_token: int | None = None) -> None:
        self.backend.free(seq.stream.id)
        with self._lock:
            self._running.pop(seq.stream.id, None)
        admitted = seq.admitted if seq.admitted is not None else seq.submitted
        queued = max(0.0, admitted - seq.submitted)
        seq.stream._push(Finished(reason, seq.generated, stop_token, queued))

    def _deliver(self, outs: list[TokenOut]) -> None:
        """Each token in order (a speculating sequence may have several); those past
        a sequence's end are dropped with it."""
        for out in outs:
            seq = self._running.get(cast(int, out.id))
            if seq is None:  # failed by shutdown while the step ran
                continue
            seq.generated += 1
            seq.last = out.token
            request = seq.request
            if out.token in request.stop_ids:
                end: FinishReason | None = FinishReason.STOP_TOKEN
            elif not request.ignore_eos and out.token in request.eos_ids:
                end = FinishReason.EOS
            elif seq.generated >= request.max_new_tokens:
                end = FinishReason.LENGTH
            else:
                end = None
            seq.stream._push(out if end is None else dataclasses.replace(out, last=True))
            if end is not None:
                self._retire(seq, end, out.token if end is FinishReason.STOP_TOKEN else None)

    def step(self) -> None:
        """One iteration: retire cancelled, then one forward pass that decodes every
        running sequence and prefills this step's prompt chunks."""
        self.steps += 1
        t0 = self._clock()
        chunks = self._plan()
        decoding = {i: s.last for i, s in self._running.items() if s.decoding}
        if not (chunks or decoding):
            return
        try:
            outs = self._run(chunks, decoding)
        except Exception as e:  # one request's fault must not end the others
            outs = self._isolate(chunks, decoding, e)
        self._deliver(outs)
        self._observer.on_generation_step(self.name, len(outs), self._clock() - t0)

    def _run(self, chunks: Sequence[PromptChunk], decoding: dict[int, int]) -> list[TokenOut]:
        outs = self.backend.step(chunks, decoding)
        for chunk in chunks:
            if (seq := self._running.get(cast(int, chunk.seq.id))) is not None:
                seq.prefilled = chunk.end
        return outs

    def _isolate(
        self, chunks: Sequence[PromptChunk], decoding: dict[int, int], error: Exception
    ) -> list[TokenOut]:
        """A step that raised, rerun in halves until the sequences that make it fail
        are alone: they fail with the error, every other sequence gets the token the
        whole step would have given it (a failed backend step leaves the caches as they
        were; draws depend on seed and position only). log2(n) extra passes, paid only
        when a step fails."""
        members = list(dict.fromkeys([*decoding, *(cast(int, c.seq.id) for c in chunks)]))
        if len(members) == 1:
            self._fail_one(members[0], BackendError(f"generation step failed: {error}"))
            return []
        outs: list[TokenOut] = []
        half = len(members) // 2
        for group in (set(members[:half]), set(members[half:])):
            part = [c for c in chunks if c.seq.id in group]
            tokens = {i: t for i, t in decoding.items() if i in group}
            try:
                outs += self._run(part, tokens)
            except Exception as e:
                outs += self._isolate(part, tokens, e)
        return outs

    def _fail_one(self, seq_id: int, exc: BaseException) -> None:
        with self._lock:
            seq = self._running.pop(seq_id, None)
        if seq is None:
            return
        with contextlib.suppress(KeyError):  # never reached the backend
            self.backend.free(seq_id)
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
