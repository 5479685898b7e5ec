"""Int8 linear layers: error bounds, tiny causal LMs still generate, byte accounting."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import transformers
from torch import nn

from squeezer.backends.quantize import (
    METHODS,
    Int8WeightOnlyLinear,
    QuantizeReport,
    quantize_fp16,
    quantize_int8,
)
from tests.tiny_models import tiny_llama_config

VOCAB = 97
ALL = (*METHODS, "fp16")


def _quantize(model: nn.Module, method: str, head: bool) -> QuantizeReport:
    if method == "fp16":
        return quantize_fp16(model, include_lm_head=head)
    return quantize_int8(model, method=method, include_lm_head=head)


def _tolerance(method: str) -> float:
    """Relative logit error allowed on the tiny random models: fp16 weights round at
    2^-11, int8 weights at ~1/254 of a row's largest; the dynamic methods also round
    the activations to 7 bits per tensor, an order of magnitude more."""
    return {"fp16": 1e-3, "dynamic": 0.2, "dynamic_per_tensor": 0.2}.get(method, 0.02)


def _llama() -> Any:  # transformers' stubs reject .to(dtype) and .generate on it
    torch.manual_seed(0)
    config = tiny_llama_config(VOCAB, tie_word_embeddings=True)  # tied, as SmolLM2
    return transformers.LlamaForCausalLM(config).eval()


def _gpt2() -> Any:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4)
    return transformers.GPT2LMHeadModel(config).eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("kernel", ["dequant", "pack"])
@pytest.mark.parametrize("rows", [1, 3, 15])
def test_int8_linear_computes_its_dequantized_weight_exactly(kernel: str, rows: int) -> None:
    """Whichever kernel runs (``_weight_int8pack_mm`` for few rows, sliced dequantization
    otherwise), it multiplies by int8 * scale and nothing else: only the fp32 summation
    order differs."""
    torch.manual_seed(0)
    linear = nn.Linear(200, 70)
    q = Int8WeightOnlyLinear.from_weight(linear.weight, linear.bias, kernel=kernel)  # type: ignore[arg-type]
    x = torch.randn(rows, 1, 200)
    want = nn.functional.linear(x, q.dequantized(), linear.bias)
    assert q(x).shape == (rows, 1, 70)
    assert _rel(q(x), want) < 1e-5
    q._rows_per_slice = 16  # a tall layer's path: several slices, concatenated
    assert _rel(q(x), want) < 1e-5


def test_int8_linear_error_against_fp32_is_the_rounding_bound() -> None:
    """Per-row symmetric int8 rounds each weight by at most scale/2 (scale = max|w|/127),
    uniformly, so an output's error has std scale/sqrt(12) * |x|. For Gaussian rows of
    K = 576 (SmolLM2's width), max|w| is ~3.3 sigma, so the relative error is about
    3.3 / 127 / sqrt(12) = 0.75%; measured 0.75% on three seeds. The bound, 1.5%, is twice that: it
    catches a wrong scale (per-tensor scales or an off-by-one range give > 2%) without
    flaking on the seed."""
    torch.manual_seed(0)
    linear = nn.Linear(576, 1536, bias=False)
    nn.init.normal_(linear.weight, std=0.02)
    q = Int8WeightOnlyLinear.from_weight(linear.weight)
    x = torch.randn(16, 576)
    err = _rel(q(x), linear(x))
    expected = 3.3 / 127 / math.sqrt(12)
    assert 0.5 * expected < err < 2 * expected
    assert q.weight.dtype == torch.int8
    assert int(q.weight.abs().max()) == 127  # each row's largest weight uses the full range


def test_int8_linear_zero_rows_and_inference_mode() -> None:
    weight = torch.randn(4, 8)
    weight[1] = 0.0
    q = Int8WeightOnlyLinear.from_weight(weight)
    with torch.inference_mode():
        y = q(torch.randn(2, 8))
    assert torch.isfinite(y).all()
    assert torch.equal(y[:, 1], torch.zeros(2))


def test_int8_linear_moves_in_and_out_of_inference_mode() -> None:
    """Quantized inside inference mode (inference-tensor buffers), run outside it and
    back: the shared dequantization buffer must accept in-place writes in both."""
    with torch.inference_mode():
        q = Int8WeightOnlyLinear.from_weight(torch.randn(24, 16))
        inside = q(torch.ones(1, 16))
    with torch.no_grad():
        outside = q(torch.ones(1, 16))
    with torch.inference_mode():
        again = q(torch.ones(1, 16))
    assert torch.equal(inside, outside) and torch.equal(inside, again)


def test_int8_linear_keeps_bf16_activations_in_bf16() -> None:
    weight = torch.randn(16, 32, dtype=torch.bfloat16)
    q = Int8WeightOnlyLinear.from_weight(weight)
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    y = q(x)
    assert y.dtype == torch.bfloat16
    assert _rel(y.float(), x.float() @ weight.float().T) < 0.03


@pytest.mark.parametrize(("method", "head"), [*((m, True) for m in ALL), ("weight_only", False)])
def test_tiny_llama_quantized_still_generates(method: str, head: bool) -> None:
    model = _llama()
    ids = torch.tensor([[5, 17, 3, 44, 9]])
    with torch.inference_mode():
        want = model(ids).logits
    report = _quantize(model, method, head)
    assert report.layers == 2 * 7 + head  # q, k, v, o, gate, up, down per layer
    assert report.lm_head is head and report.tied_lm_head
    with torch.inference_mode():
        got = model(ids).logits
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6,
            min_new_tokens=6, pad_token_id=0,
        )  # fmt: skip
    assert out.shape == (1, 11)
    # A random tiny model's logits are near zero, so compare on their own scale.
    assert _rel(got, want) < _tolerance(method)


@pytest.mark.parametrize("method", ALL)
def test_replaced_head_is_what_get_output_embeddings_returns(method: str) -> None:
    """The generation backend runs ``base_model`` and applies the head itself."""
    model = _llama()
    embedding = model.get_input_embeddings().weight
    _quantize(model, method, head=True)
    head = model.get_output_embeddings()
    assert not isinstance(head, nn.Linear)
    assert model.get_input_embeddings().weight is embedding  # the lookup keeps fp32
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        hidden = model.base_model(input_ids=ids).last_hidden_state
        assert torch.allclose(head(hidden), model(ids).logits, atol=1e-6)


def test_report_counts_the_bytes_of_converted_layers() -> None:
    model = _llama()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    body = [m for n, m in linears.items() if n != "lm_head"]
    report = quantize_int8(model, method="weight_only", include_lm_head=False)
    assert isinstance(report, QuantizeReport)
    assert report.layers == len(body) == 14
    assert report.bytes_before == sum(4 * m.weight.numel() for m in body)  # fp32, no biases
    assert report.bytes_after == sum(m.weight.numel() + 4 * m.out_features for m in body)
    assert report.skipped == ("lm_head: lm_head kept in float (include_lm_head=False)",)
    assert report.as_dict()["method"] == "weight_only"
    assert "14 layers" in report.summary()

    with_head = quantize_int8(_llama(), method="weight_only", include_lm_head=True)
    assert with_head.bytes_before - report.bytes_before == 4 * VOCAB * 32
    assert with_head.bytes_after - report.bytes_after == VOCAB * 32 + 4 * VOCAB

    fp16 = quantize_fp16(_llama())
    assert fp16.lm_head and fp16.bytes_after * 2 == fp16.bytes_before


@pytest.mark.parametrize("method", ALL)
def test_gpt2_conv1d_layers_are_converted(method: str) -> None:
    """GPT-2's Conv1D is a linear layer with its weight stored (in, out)."""
    model = _gpt2()
    ids = torch.tensor([[5, 17, 3, 44, 9]])
    with torch.inference_mode():
        want = model(ids).logits
    report = _quantize(model, method, head=True)
    # c_attn, attn.c_proj, c_fc, mlp.c_proj per block, and the head.
    assert report.layers == 2 * 4 + 1
    assert not report.skipped
    # Biases count: GPT-2's Conv1D layers have them, its head does not.
    assert (
        report.bytes_before
        == sum(p.numel() * 4 for n, p in _gpt2().named_parameters() if ".c_" in n) + 4 * VOCAB * 32
    )
    with torch.inference_mode():
        got = model(ids).logits
    assert _rel(got, want) < _tolerance(method)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="method"):
        quantize_int8(_llama(), method="int3")


def test_fbgemm_methods_skip_non_fp32_layers() -> None:
    model = _llama().to(torch.bfloat16)
    report = quantize_int8(model, method="dynamic")
    assert report.layers == 0
    assert len(report.skipped) == 15
    assert quantize_fp16(_llama().to(torch.bfloat16)).layers == 0
    weight_only = quantize_int8(_llama().to(torch.bfloat16), method="weight_only")
    assert weight_only.layers == 15
