"""Float linear layers for decode-sized batches on CPU, in the layout this CPU's BLAS
runs fastest for each weight shape and row count.

A decode step multiplies a few rows of activations (one per running sequence, or a
speculating sequence's token and drafts) by every weight matrix. ``F.linear``
computes ``x @ W.T``; ``(W @ x.T).T`` is the same product with the weight as the left
operand. Which is faster depends on the BLAS build, the CPU and the shape, and not by
a little:

- on the 2-core AVX2 host (docs/benchmarks.md), 32 rows through SmolLM2's decoder
  layers took 103 ms with ``F.linear`` and 74 ms weight-left (4 rows: 59 vs 28 ms);
- on a 2-core AVX-512 Sapphire Rapids host, 2 to 9 rows of its 576x1536 projection
  took 40-118 us with ``F.linear`` and 146-168 us weight-left, while 32 rows took
  296 vs 263 us, and its 49k-token head was faster with ``F.linear`` at every count.

So nothing is assumed: the first time a shape is seen, both layouts are timed at a
few row counts (``_PROBE_ROWS``; ~1 s for SmolLM2, once per process), and each call
takes the faster one for the nearest count measured. The result is the same product
in float32 (rounding may differ in the last bits, as between any two GEMM
blockings); nothing is approximated.
"""

from __future__ import annotations

import bisect
import functools
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: Rows at which both layouts are timed; a call takes the choice of the first one at
#: or above its row count. Past the last, ``F.linear`` (prefill-sized: equal there).
_PROBE_ROWS = (1, 2, 4, 8, 16, 32, 64, 96)
#: Timed calls per layout and row count, alternating (after one untimed call each),
#: the best of each kept: a busy moment slows one call, not the comparison.
_PROBE_CALLS = 5
#: Per (in_features, out_features): for each of ``_PROBE_ROWS``, whether weight-left
#: was faster. Shared by every model in the process (a shape's answer is the CPU's).
_CHOICES: dict[tuple[int, int], tuple[bool, ...]] = {}


def _faster_second(first: Callable[[], object], second: Callable[[], object]) -> bool:
    best = [float("inf"), float("inf")]
    first(), second()
    for _ in range(_PROBE_CALLS):
        for i, fn in enumerate((first, second)):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[1] < best[0]


def _weight_left(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    if bias is None:
        return torch.mm(weight, x.t()).t().contiguous()
    return torch.addmm(bias.unsqueeze(1), weight, x.t()).t().contiguous()


def layout_choices(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[bool, ...]:
    """Whether weight-left beats ``F.linear`` at each of ``_PROBE_ROWS``, for this
    weight's shape: measured once per shape and process."""
    key = (weight.shape[1], weight.shape[0])
    if key not in _CHOICES:
        choices = []
        with torch.inference_mode():
            for rows in _PROBE_ROWS:
                x = torch.randn(rows, weight.shape[1], dtype=weight.dtype)
                plain = functools.partial(F.linear, x, weight, bias)
                left = functools.partial(_weight_left, weight, bias, x)
                choices.append(_faster_second(plain, left))
        _CHOICES[key] = tuple(choices)
    return _CHOICES[key]


class DecodeLinear(nn.Module):
    """``nn.Linear`` in whichever layout ``layout_choices`` measured faster for the
    call's row count."""

    def __init__(self, linear: nn.Linear, choices: tuple[bool, ...] | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # The same parameters, not copies: a head tied to the embeddings stays tied.
        self.weight = linear.weight
        self.bias = linear.bias
        self.choices = choices if choices is not None else layout_choices(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        at = bisect.bisect_left(_PROBE_ROWS, rows)
        if at == len(_PROBE_ROWS) or not self.choices[at]:
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, self.in_features)
        y = _weight_left(self.weight, self.bias, flat)
        return y.view(*x.shape[:-1], self.out_features)


def use_decode_linears(model: nn.Module) -> int:
    """Swap every float32 ``nn.Linear`` of a CPU model for ``DecodeLinear`` in place
    (where weight-left wins at some row count); returns how many. Quantized layers
    (other classes) are left as they are."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == torch.float32:
                choices = layout_choices(child.weight, child.bias)
                if any(choices):
                    setattr(parent, name, DecodeLinear(child, choices))
                    swapped += 1
    return swapped
