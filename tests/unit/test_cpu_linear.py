"""DecodeLinear computes what nn.Linear computes, for every batch size, in either
layout, and takes the layout measured faster for the call's row count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from squeezer.backends import cpu_linear
from squeezer.backends.cpu_linear import DecodeLinear, layout_choices, use_decode_linears

EVERY = len(cpu_linear._PROBE_ROWS)


@pytest.mark.parametrize("left", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 24), (1, 4, 24), (3, 7, 24), (300, 24)])
def test_equals_nn_linear(left: bool, bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(24, 40, bias=bias)
    x = torch.randn(*shape)
    got = DecodeLinear(linear, (left,) * EVERY)(x)
    assert got.shape == (*shape[:-1], 40) and got.is_contiguous()
    torch.testing.assert_close(got, linear(x), rtol=1e-5, atol=1e-5)


def test_each_row_count_takes_the_layout_measured_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cpu_linear, "_weight_left", lambda w, b, x: calls.append("left") or x)
    monkeypatch.setattr(cpu_linear.F, "linear", lambda x, w, b: calls.append("plain") or x)
    # Weight-left measured faster at 2 and 4 rows only (the _PROBE_ROWS 1, 2, 4, 8 ...).
    layer = DecodeLinear(nn.Linear(3, 3), (False, True, True) + (False,) * (EVERY - 3))
    for rows in (1, 2, 3, 4, 5, 1000):
        layer(torch.zeros(rows, 3))
    assert calls == ["plain", "left", "left", "left", "plain", "plain"]


def test_a_shape_is_measured_once_per_process() -> None:
    weight = torch.randn(40, 24)
    first = layout_choices(weight, None)
    assert len(first) == EVERY and layout_choices(torch.randn(40, 24), None) is first


def test_swaps_float_linears_in_place_and_keeps_ties(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cpu_linear._CHOICES, (8, 8), (True,) * EVERY)
    monkeypatch.setitem(cpu_linear._CHOICES, (8, 10), (True,) * EVERY)
    monkeypatch.setitem(cpu_linear._CHOICES, (8, 12), (False,) * EVERY)
    embed = nn.Embedding(10, 8)
    head = nn.Linear(8, 10, bias=False)
    head.weight = embed.weight  # tied, as many LM heads are
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), head, nn.Linear(8, 12))
    assert use_decode_linears(model) == 2  # the last is faster as it is everywhere
    assert isinstance(model[0], DecodeLinear) and isinstance(model[2], DecodeLinear)
    assert type(model[3]) is nn.Linear
    assert model[2].weight is embed.weight
