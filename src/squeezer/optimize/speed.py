"""How fast a candidate is at the shapes serving sees, tokenization included.

Two shapes: length-sorted batches of 32 corpus sentences (what a loaded server forms
from concurrent requests; the figure that picks the winner) and one short sentence alone
(the latency a lone client sees). Each is timed for a fixed wall-clock budget after a
warm-up pass over its shapes, so slow candidates do not stretch the search.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from squeezer.backends import Backend
from squeezer.optimize.accuracy import Probe


@dataclass(frozen=True, slots=True)
class Speed:
    #: Sentences per second in batches of ``batch_size``.
    throughput: float
    #: One short sentence alone, milliseconds.
    single_p50_ms: float
    single_p90_ms: float
    batch_size: int

    def as_dict(self) -> dict[str, float]:
        return {
            "throughput": self.throughput,
            "single_p50_ms": self.single_p50_ms,
            "single_p90_ms": self.single_p90_ms,
            "batch_size": float(self.batch_size),
        }


def _short(texts: Sequence[str]) -> str:
    by_length = sorted(texts, key=len)
    return by_length[len(by_length) // 10]


def measure(
    backend: Backend, probe: Probe, texts: Sequence[str], *, budget_s: float = 2.0
) -> Speed:
    batch = probe.batch_size
    # Length-sorted, as the engine's queue groups concurrent requests and as
    # sentence-transformers' encode does: padding is what a server avoids, not a cost
    # of the runtime.
    lengths = [t.num_tokens for t in probe.tokenizer.encode(texts, truncate=True)]
    ordered = [t for _, t in sorted(zip(lengths, texts, strict=True), key=lambda lt: lt[0])]
    chunks = [ordered[i : i + batch] for i in range(0, len(ordered), batch)]
    chunks = [c for c in chunks if len(c) == batch] or chunks[:1]

    def one_batch(chunk: list[str]) -> None:
        probe.forward(backend, probe.tokenize(chunk))

    # Warm-up: one pass over every shape the clock will see. OpenVINO and oneDNN pick
    # and build kernels per new shape, XLA compiles per length bucket; a warm server
    # has seen its shapes, and an early speed probe timed over cold shapes ranked
    # OpenVINO's int8 at 0.6x of what its full measure found.
    for chunk in chunks:
        one_batch(chunk)
    done, start = 0, time.perf_counter()
    for chunk in itertools.cycle(chunks):
        one_batch(chunk)
        done += len(chunk)
        if time.perf_counter() - start > budget_s / 2:
            break
    throughput = done / (time.perf_counter() - start)

    short = [_short(texts)]
    one_batch(short)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < budget_s / 2 and len(times) < 500):
        t = time.perf_counter()
        one_batch(short)
        times.append((time.perf_counter() - t) * 1e3)
    deciles = statistics.quantiles(times, n=10)
    return Speed(throughput, statistics.median(times), deciles[8], batch)
