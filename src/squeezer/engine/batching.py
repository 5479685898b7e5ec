"""Which queued items form the next batch: pure logic, no threads, no event loop.

The rule, and why:

* The **oldest** queued item is always in the batch. Every batch therefore removes the
  head of the queue, so an item at position *k* is computed within *k* batches however
  lengths are mixed: sorting by length can never starve anything.
* The rest of the batch is filled with the items **closest in length to the oldest**
  (ties: older first), looked for in a window of the oldest ``window`` items. Padding is
  what a batch wastes (every row is padded to the longest), so grouping similar lengths
  cuts it; the window bounds the cost of that sort per batch and keeps a burst of new
  items from pushing far-older ones aside for long.
* Two bounds, both inclusive: ``len(batch) <= max_requests`` and the *padded* size
  ``len(batch) * max(num_tokens) <= max_tokens``. Candidates that would break either are
  skipped (a shorter one further down may still fit). An oldest item larger than the
  whole token budget still runs, alone: refusing it would never make it smaller.
* With ``overhead_tokens`` set, the candidates are then **split by cost**: a forward
  pass costs about ``overhead + rows x longest`` (measured on the CPU for MiniLM:
  ~4.5 ms fixed + ~0.14 ms per padded token, so the overhead is worth ~32 tokens). The
  sorted candidates are partitioned into contiguous length groups minimizing that
  total, and only the group holding the oldest item runs now; the others return to
  the queue and are regrouped with whatever arrives meanwhile. On a CPU this keeps
  long and short inputs apart (padding costs as much as real work there); on a GPU,
  where the overhead dwarfs per-token cost, it keeps everything in one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Sized(Protocol):
    """Anything with a token count: queue entries, work items, test stand-ins."""

    @property
    def num_tokens(self) -> int: ...


def padded_tokens(lengths: Sequence[int]) -> int:
    """Tokens a forward pass computes for these items: rows times the longest row."""
    return len(lengths) * max(lengths) if lengths else 0


def select_batch(
    queue: Sequence[Sized],
    *,
    max_tokens: int,
    max_requests: int,
    window: int | None = None,
    overhead_tokens: float | None = None,
) -> list[int]:
    """Indices (ascending, so queue order) of the next batch; ``queue[0]`` is the oldest.

    Returns ``[]`` only for an empty queue; otherwise index 0 is always included.
    """
    if not queue:
        return []
    limit = len(queue) if window is None else max(1, min(window, len(queue)))
    head = queue[0].num_tokens
    chosen = [0]
    longest = head
    if max_requests <= 1:
        return chosen
    lengths = [queue[i].num_tokens for i in range(limit)]
    # Closest in length to the oldest first; among equals, older first (stable sort).
    candidates = sorted(range(1, limit), key=lambda i: abs(lengths[i] - head))
    for i in candidates:
        new_longest = max(longest, lengths[i])
        if (len(chosen) + 1) * new_longest > max_tokens:
            continue
        chosen.append(i)
        longest = new_longest
        if len(chosen) >= max_requests:
            break
    if overhead_tokens is not None and len(chosen) > 1:
        chosen = _cheapest_group(chosen, lengths, overhead_tokens)
    chosen.sort()
    return chosen


def _cheapest_group(chosen: list[int], lengths: list[int], overhead: float) -> list[int]:
    """The group holding ``chosen[0]`` in the cost-minimal partition of ``chosen``.

    Sorted by length, an optimal partition uses contiguous runs (a group costs
    ``overhead + size x its longest``), so an O(n^2) dynamic programme finds it.
    """
    order = sorted(chosen, key=lambda i: (lengths[i], i))
    n = len(order)
    best = [0.0] * (n + 1)  # best[j]: cost of the first j sorted items
    cut = [0] * (n + 1)  # start of the last group in that optimum
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        best[j], cut[j] = min((best[i] + overhead + (j - i) * longest, i) for i in range(j))
    oldest = order.index(chosen[0])
    j = n
    while cut[j] > oldest:
        j = cut[j]
    return order[cut[j] : j]


def batch_is_full(
    queue: Sequence[Sized],
    chosen: Sequence[int],
    *,
    max_tokens: int,
    max_requests: int,
) -> bool:
    """Whether waiting longer could not make this batch any bigger.

    Used only with ``max_wait_ms > 0``: the batch goes at once when it is full, else it
    waits for more items until the oldest has waited ``max_wait_ms``. Full means the
    request cap is reached, some queued item was already left out (a bound bit), or even
    one more item as short as the current longest would break the token budget.
    """
    if not chosen:
        return False
    if len(chosen) >= max_requests or len(chosen) < len(queue):
        return True
    longest = max(queue[i].num_tokens for i in chosen)
    return (len(chosen) + 1) * longest > max_tokens
