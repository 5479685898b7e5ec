"""Give freed heap back to the operating system after work that needed a lot of it.

glibc keeps what a thread frees in that thread's malloc arena, and a 1.9 MB prompt
tokenized on a pool thread leaves tens of MiB of free but fragmented arena behind:
measured under ``--api-workers``, each such request raised an API process's RSS by
50-150 MiB that the next one reused only in part, so RSS crept up for as long as big
requests kept coming (docs/benchmarks.md, "Soak with faults"). ``malloc_trim(0)``
returns every arena's free pages; it costs about a millisecond, so it runs only after
requests above a size, never on the hot path. On a libc without it (musl, macOS) it
does nothing.

The process that computes has the other half of the problem: batches of changing
shapes allocate and free activations of tens of MiB on the compute thread, and glibc's
mmap threshold rises to the largest block freed (up to 32 MiB), after which such
blocks come from the heap and fragment it. The device threads trim every few seconds
of work (``engine/executor.py``): fixing the mmap threshold instead kept the heap flat
at 1 MiB but cost a forward pass up to 36% in page faults (88 -> 120 ms over mixed
MiniLM batches; 98 ms at 4 MiB), and at 16 MiB, where it cost nothing, the engine still
grew 4,019 -> 4,516 MiB in a 10-minute soak at twice its capacity.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def _malloc_trim() -> Callable[[int], int] | None:
    trim: Callable[[int], int] | None = getattr(_libc(), "malloc_trim", None)
    return trim


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def trim_heap() -> bool:
    """Return free heap pages of every arena to the OS; False where libc cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def trimmed(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn``, then ``trim_heap()`` whether it returned or raised: for work on big
    inputs, run on the thread whose arena it filled."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        finally:
            trim_heap()

    return run
