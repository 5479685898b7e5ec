"""Float linear layers for decode-sized batches on CPU.

A decode step multiplies a few rows of activations (one per running sequence) by every
weight matrix. ``F.linear`` computes ``x @ W.T``, and for 2 to ~100 rows MKL's sgemm
is far from its best at that layout: on the 2-core AVX2 host (docs/benchmarks.md), 32
rows through SmolLM2's decoder layers took 103 ms and through its 49k-token head
39-92 ms, where ``(W @ x.T).T``, the same product with the weight as the left
operand, took 74 ms and 26-54 ms (4 rows: 59 vs 28 ms). One row and prefill-sized
batches run as fast either way, so only small batches take the other layout.

The result is the same product in float32 (rounding may differ in the last bits, as
between any two GEMM blockings); nothing is approximated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Rows (tokens) up to which the weight-left layout is used; measured equal at 128.
_MAX_ROWS = 96


class DecodeLinear(nn.Module):
    """``nn.Linear`` computed as ``(W @ x.T).T`` for up to ``_MAX_ROWS`` rows."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # The same parameters, not copies: a head tied to the embeddings stays tied.
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > _MAX_ROWS:
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, self.in_features)
        if self.bias is None:
            y = torch.mm(self.weight, flat.t())
        else:
            y = torch.addmm(self.bias.unsqueeze(1), self.weight, flat.t())
        return y.t().contiguous().view(*x.shape[:-1], self.out_features)


def use_decode_linears(model: nn.Module) -> int:
    """Swap every float ``nn.Linear`` of a CPU model for ``DecodeLinear`` in place;
    returns how many. Quantized layers (other classes) are left as they are."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == torch.float32:
                setattr(parent, name, DecodeLinear(child))
                swapped += 1
    return swapped
