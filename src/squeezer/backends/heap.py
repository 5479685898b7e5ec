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
blocks come from the heap and fragment it. Under twice its capacity for 10 minutes,
the engine process grew 4,010 -> 4,494 MiB, still ~20 MiB/min at the end.
``keep_big_blocks_mapped`` fixes the threshold (mallopt ``M_MMAP_THRESHOLD``, which
also stops glibc from raising its trim threshold), so blocks above it are mapped and
unmapped whole and never stay behind in the heap.
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


#: glibc's ``mallopt`` parameter number (malloc.h).
_M_MMAP_THRESHOLD = -3
#: Blocks at least this large are mmapped: a big batch's activations (at
#: --max-batch-tokens 8192, MiniLM's feed-forward and attention blocks are ~50 MiB),
#: not the 1-10 MiB blocks of everyday batches, whose page faults would cost more than
#: the heap saves: a forward pass over batches of 8-40 x 20-60 tokens took 88 ms with
#: glibc's default, 120 ms with a 1 MiB threshold, 98 ms at 4 MiB, 87 ms at 16 MiB.
BIG_BLOCK_BYTES = 16 << 20


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def keep_big_blocks_mapped(threshold: int = BIG_BLOCK_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process; False where
    libc has no ``mallopt`` (nothing changes there)."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))


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
