"""One request, followed: its id, and what its access-log line and metrics report.

The HTTP layer (``middleware.HttpGuard``) opens a ``RequestRecord`` for each request
and puts it in a context variable; the runtime, which knows the model, the tokens and
the engine's timing, fills it in; when the response has been sent (a stream's last
chunk included) the record becomes one access-log line, the generation latency
metrics, and the attributes of the request's trace span. Context variables follow
the request's task and the tasks Starlette starts for a streamed body, and every log
line written while it is served carries the id (``logs.RequestIdFilter``).

The request's text is never recorded: token counts, not tokens.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from squeezer.server import tracing
from squeezer.tasks.generate import TextDelta, TextDone
from squeezer.types import WorkTiming

#: What a client may send as its own ``X-Request-Id``: printable, without spaces or
#: quotes, at most 128 characters (anything else is replaced, not echoed into logs).
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


#: New ids: 16 random hex digits per process, then a counter (16 hex digits): unique
#: across processes and restarts like a uuid4, for a fraction of its cost per request.
_PROCESS_PREFIX = os.urandom(8).hex()
_counter = itertools.count()


def request_id_from(header: bytes | None) -> str:
    """The client's id when it is a sane one, else a new one (32 hex digits)."""
    if header is not None:
        value = header.decode("latin-1")
        if _CLIENT_ID.fullmatch(value):
            return value
    return f"{_PROCESS_PREFIX}{next(_counter):016x}"


@dataclass(slots=True)
class Figures:
    """What the metrics need of a finished request: small and picklable, since an API
    process sends it to the engine process's one registry."""

    route: str
    status: int
    seconds: float
    model: str | None = None
    #: Generation only: time to the first token, and the gaps between tokens.
    first_token_s: float | None = None
    token_gaps: list[float] = field(default_factory=list)


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    method: str
    started: float = field(default_factory=time.perf_counter)
    route: str = "unmatched"
    status: int = 0
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    #: Engine time: waiting for a batch or a sequence slot, then computing.
    queue_s: float = 0.0
    compute_s: float = 0.0
    first_token_s: float | None = None
    token_gaps: list[float] = field(default_factory=list)
    trace_id: str | None = None
    #: The served model's version label (``model`` is its name).
    version: str | None = None
    #: Releases of the model versions this request resolved to (``registry``): called
    #: once its response has been sent, so that no version is freed under it.
    leases: list[Callable[[], None]] = field(default_factory=list)

    def release(self) -> None:
        for release in self.leases:
            release()
        self.leases.clear()

    def add_work(self, model: str, tokens: int, timing: WorkTiming) -> None:
        """An engine request of this HTTP request's answered (there may be several:
        a rerank's pairs, a chat's choices)."""
        self.model = model
        self.input_tokens += tokens
        self.queue_s = max(self.queue_s, timing.queued_s)
        self.compute_s += timing.compute_s

    def figures(self, seconds: float) -> Figures:
        return Figures(
            self.route, self.status, seconds, self.model, self.first_token_s, self.token_gaps
        )

    def access_fields(self, seconds: float) -> dict[str, object]:
        """The access-log line's fields (JSON keys with ``--log-format json``)."""
        return {
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "status": self.status,
            "model": self.model,
            "version": self.version,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "queue_ms": round(self.queue_s * 1000, 3),
            "compute_ms": round(self.compute_s * 1000, 3),
            "duration_ms": round(seconds * 1000, 3),
            "ttft_ms": None if self.first_token_s is None else round(self.first_token_s * 1000, 3),
            "trace_id": self.trace_id,
        }


class GenerationClock:
    """Times one generated stream into its request's record as its events pass: the
    first token (time to first token, from the request's start), the gaps after it,
    and at the end the tokens and the engine's wait for a slot; its trace gets the
    stream's queue, prefill and decode as three spans, not one per token."""

    def __init__(self, record: RequestRecord | None, model: str) -> None:
        """Made just before the stream is opened (its slot wait is counted from then)."""
        self.record = record
        self.model = model
        self.stream: object = None  # a GenerationStream: ``finished`` has the slot wait
        self._opened = time.perf_counter()
        self._opened_ns = time.time_ns()
        self._first_ns: int | None = None
        self._last: float | None = None

    def observe(self, event: TextDelta | TextDone) -> None:
        record = self.record
        if record is None:
            return
        if isinstance(event, TextDelta):
            if event.token >= 0:
                self._tick(record)
            return
        now = time.perf_counter()
        finished = getattr(self.stream, "finished", None)
        queued = min(getattr(finished, "queued_s", 0.0), now - self._opened)
        record.model = self.model
        record.input_tokens += event.prompt_tokens
        record.output_tokens += event.completion_tokens
        record.queue_s = max(record.queue_s, queued)
        record.compute_s += now - self._opened - queued
        done_ns = time.time_ns()
        first_ns = self._first_ns or done_ns
        tracing.generation_spans(
            self._opened_ns,
            min(self._opened_ns + int(queued * 1e9), first_ns),
            first_ns,
            done_ns,
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
        )

    def _tick(self, record: RequestRecord) -> None:
        now = time.perf_counter()
        if self._last is None:
            self._first_ns = time.time_ns()
            first = now - record.started
            if record.first_token_s is None or first < record.first_token_s:
                record.first_token_s = first
        else:
            record.token_gaps.append(now - self._last)
        self._last = now


current: ContextVar[RequestRecord | None] = ContextVar("squeezer_request", default=None)


def current_record() -> RequestRecord | None:
    return current.get()
