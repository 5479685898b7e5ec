"""The engine's metrics hook: the server plugs prometheus in, tests plug in recorders.

Which thread calls what (implementations must be thread-safe; prometheus-client is):

* ``on_queue_depth`` after an enqueue or a cancellation: the event-loop thread; after a
  batch is taken or requests expire: the device's compute thread.
* ``on_queue_wait`` (once per item, as its batch is dispatched) and ``on_batch`` (once
  per batch computed without error): the compute thread.
* ``on_generation_step`` (once per scheduler step that ran the model): the compute
  thread.

An observer that raises is logged and ignored: metrics never fail a request.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)


class EngineObserver(Protocol):
    """What the engine reports; every method must be cheap and must not block."""

    def on_batch(
        self, model: str, size: int, padded_tokens: int, real_tokens: int, compute_s: float
    ) -> None: ...

    def on_queue_wait(self, model: str, seconds: float) -> None: ...

    def on_queue_depth(self, model: str, depth: int) -> None: ...

    def on_generation_step(self, model: str, new_tokens: int, seconds: float) -> None: ...


class NullObserver:
    """The default: reports nowhere."""

    def on_batch(
        self, model: str, size: int, padded_tokens: int, real_tokens: int, compute_s: float
    ) -> None:
        pass

    def on_queue_wait(self, model: str, seconds: float) -> None:
        pass

    def on_queue_depth(self, model: str, depth: int) -> None:
        pass

    def on_generation_step(self, model: str, new_tokens: int, seconds: float) -> None:
        pass


class SafeObserver:
    """Wraps an observer so that its exceptions are logged instead of raised."""

    def __init__(self, inner: EngineObserver) -> None:
        self._inner = inner

    def on_batch(
        self, model: str, size: int, padded_tokens: int, real_tokens: int, compute_s: float
    ) -> None:
        try:
            self._inner.on_batch(model, size, padded_tokens, real_tokens, compute_s)
        except Exception:
            log.exception("engine observer on_batch failed")

    def on_queue_wait(self, model: str, seconds: float) -> None:
        try:
            self._inner.on_queue_wait(model, seconds)
        except Exception:
            log.exception("engine observer on_queue_wait failed")

    def on_queue_depth(self, model: str, depth: int) -> None:
        try:
            self._inner.on_queue_depth(model, depth)
        except Exception:
            log.exception("engine observer on_queue_depth failed")

    def on_generation_step(self, model: str, new_tokens: int, seconds: float) -> None:
        try:
            self._inner.on_generation_step(model, new_tokens, seconds)
        except Exception:
            log.exception("engine observer on_generation_step failed")
