"""DecodeLinear computes what nn.Linear computes, for every batch size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from squeezer.backends.cpu_linear import DecodeLinear, use_decode_linears


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 24), (1, 4, 24), (3, 7, 24), (300, 24)])
def test_equals_nn_linear(bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(24, 40, bias=bias)
    x = torch.randn(*shape)
    got = DecodeLinear(linear)(x)
    assert got.shape == (*shape[:-1], 40) and got.is_contiguous()
    torch.testing.assert_close(got, linear(x), rtol=1e-5, atol=1e-5)


def test_swaps_float_linears_in_place_and_keeps_ties() -> None:
    embed = nn.Embedding(10, 8)
    head = nn.Linear(8, 10, bias=False)
    head.weight = embed.weight  # tied, as many LM heads are
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), head)
    assert use_decode_linears(model) == 2
    assert isinstance(model[0], DecodeLinear) and isinstance(model[2], DecodeLinear)
    assert model[2].weight is embed.weight
