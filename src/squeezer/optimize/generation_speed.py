"""How fast a generation candidate decodes: one stream, and ``streams`` at once.

The two shapes a generation server sees: one client alone (its inter-token latency, the
``latency`` objective) and a full set of KV slots decoding together (aggregate tokens/s,
the ``throughput`` objective: what ``--max-num-seqs`` streams get). Only decode steps
are timed; prefill is not (the prompts are the corpus' short sentences, and prefill
cost is the scheduler's to spread). Each shape is warmed up on a few steps first, then
timed for half the budget (at least a few steps, and never more than the cache holds).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from squeezer.optimize.generation_probe import SteppedBackend, decode_steps

_WARMUP_STEPS = 3
_MIN_STEPS = 5


@dataclass(frozen=True, slots=True)
class GenerationSpeed:
    #: Aggregate decode tokens/s with ``streams`` sequences decoding together.
    throughput: float
    #: One stream: milliseconds per decode step (median and 90th percentile).
    single_p50_ms: float
    single_p90_ms: float
    #: One stream's tokens/s over the whole timed run.
    one_stream: float
    streams: int

    def as_dict(self) -> dict[str, float]:
        return {
            "throughput": self.throughput,
            "single_p50_ms": self.single_p50_ms,
            "single_p90_ms": self.single_p90_ms,
            "one_stream": self.one_stream,
            "streams": float(self.streams),
        }


def _timed_steps(
    backend: SteppedBackend, prompts: Sequence[Sequence[int]], streams: int, budget_s: float
) -> list[float]:
    for _ in decode_steps(backend, prompts, streams, _WARMUP_STEPS):
        pass
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < _MIN_STEPS or time.perf_counter() - start < budget_s:
        before = len(times)
        for seconds in decode_steps(backend, prompts, streams, 1 << 30):
            times.append(seconds)
            if len(times) >= _MIN_STEPS and time.perf_counter() - start >= budget_s:
                break
        if len(times) == before:
            raise ValueError(f"no decode step fits: prompts too long for max_len={backend.max_len}")
    return times


def measure_generation(
    backend: SteppedBackend,
    prompts: Sequence[Sequence[int]],
    *,
    streams: int,
    budget_s: float = 4.0,
) -> GenerationSpeed:
    """Time decode steps at one stream and at ``streams`` (at most the backend's slots)."""
    streams = max(1, min(streams, backend.max_slots))
    one = _timed_steps(backend, prompts, 1, budget_s / 2)
    many = _timed_steps(backend, prompts, streams, budget_s / 2)
    p90 = statistics.quantiles(one, n=10)[8] if len(one) > 1 else one[0]
    return GenerationSpeed(
        throughput=streams * len(many) / sum(many),
        single_p50_ms=statistics.median(one) * 1e3,
        single_p90_ms=p90 * 1e3,
        one_stream=len(one) / sum(one),
        streams=streams,
    )
