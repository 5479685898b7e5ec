"""The engine's knobs: one frozen object, built from settings by the server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineLimits:
    """How big a batch may get, how long to wait for one, how much work to admit.

    ``max_batch_tokens`` counts *padded* tokens (rows x longest row), because that, not
    the sum of real lengths, is what a forward pass computes and what memory it needs.
    """

    #: Padded tokens per forward: ``len(batch) * longest item``.
    max_batch_tokens: int = 8192
    #: Items per forward.
    max_batch_requests: int = 64
    #: Opt-in wait for a fuller batch; 0 dispatches at once whenever the device is idle.
    max_wait_ms: float = 0.0
    #: Requests admitted (queued + running) across the engine; beyond -> OverloadedError.
    max_concurrent_requests: int = 512

    def __post_init__(self) -> None:
        if self.max_batch_tokens <= 0:
            raise ValueError(f"max_batch_tokens must be > 0, got {self.max_batch_tokens}")
        if self.max_batch_requests <= 0:
            raise ValueError(f"max_batch_requests must be > 0, got {self.max_batch_requests}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.max_concurrent_requests <= 0:
            raise ValueError(
                f"max_concurrent_requests must be > 0, got {self.max_concurrent_requests}"
            )
