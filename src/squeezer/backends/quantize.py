"""Fewer bytes per weight for a loaded causal LM: int8 (and fp16) linear layers.

One decode stream on a CPU is bound by memory bandwidth, not arithmetic: every token
reads every weight once (SmolLM2-135M in fp32: 540 MB at ~17 GB/s). Storing the linear
layers' weights as int8 with one scale per output channel reads a quarter of those
bytes; whether that turns into speed depends on the kernel that multiplies by them.
``quantize_int8`` offers the methods measured by ``benchmarks/generate_quantized.py``
(SmolLM2 fp32, 2 threads of an AVX2 EPYC, greedy decode, KL(fp32 || candidate) on the
corpus' selection split; one-stream tok/s: fp32 12-14):

``weight_only`` (default)
    ``Int8WeightOnlyLinear``: int8 weights, float activations, so the only error is the
    weights' rounding. 17-18 tok/s with the head converted, mean KL 0.004 (llama.cpp
    on the GGUF's own Q4_1 blocks: 0.003 against the same reference).
``weight_only_pack``
    The same weights through ``torch.ops.aten._weight_int8pack_mm`` (gpt-fast's CPU
    kernel) for decode-sized inputs. torch vectorizes it for bf16 activations only; for
    fp32 on x86 it is a scalar loop, 2-7 tok/s. Kept for bf16 models.
``dynamic``
    torch's dynamic quantization (fbgemm) with per-channel int8 weights. Activations are
    quantized too, per tensor, on every call, to 7 bits (``reduce_range``: AVX2's int8
    dot product saturates with 8), and that is the cost: 21-23 tok/s but mean KL ~1,
    greedy output leaving fp32's within a few tokens. It fails the accuracy gate.
``dynamic_per_tensor``
    torch's default: one scale per weight matrix. As fast, as inaccurate; kept to be
    measured against (DESIGN.md's trap).

``quantize_fp16`` is the measured winner on AVX2 and sits beside them: fbgemm's fp16
weights are converted in registers inside one vectorized kernel, where int8 needs a
separate conversion pass, so half of fp32's bytes run faster (24-25 tok/s) than a
quarter, with no measurable accuracy cost (KL < 1e-5, greedy output identical).

Both work in place on ``transformers`` models: ``nn.Linear`` layers and GPT-2's
``Conv1D`` (the same product with the weight transposed) are replaced, and a replaced
``lm_head`` is what ``model.get_output_embeddings()`` returns afterwards, so code that
runs ``model.base_model`` and applies the head itself keeps working, provided it looks
the head up after quantizing.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Method = Literal["weight_only", "weight_only_pack", "dynamic", "dynamic_per_tensor"]
METHODS: tuple[Method, ...] = ("weight_only", "weight_only_pack", "dynamic", "dynamic_per_tensor")
DEFAULT_METHOD: Method = "weight_only"
Kernel = Literal["dequant", "pack"]

# Symmetric int8 uses -127..127: keeping -128 out makes the range symmetric, so a row's
# largest weight maps to +-127 whichever its sign, and negation never overflows.
_QMAX = 127
_HAS_PACK_MM = hasattr(torch.ops.aten, "_weight_int8pack_mm")
# Largest input (rows = tokens in the batch) sent to ``_weight_int8pack_mm``: it is a
# matrix-vector kernel, and prefill through it would take seconds.
_PACK_MAX_ROWS = 4
# Float bytes dequantized at a time: small enough to stay in a core's share of L2/L3.
_DEQUANT_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class QuantizeReport:
    """What ``quantize_int8`` or ``quantize_fp16`` changed.

    ``bytes_before`` / ``bytes_after`` count the converted layers' weights, scales and
    biases: the bytes a decode step reads from them, which is what sets one stream's
    speed. When the head was tied to the input embeddings (``tied_lm_head``) and got
    converted, the float embedding matrix stays (the embedding lookup needs it), so the
    process holds more memory than before even though each step reads less.
    """

    method: str
    layers: int
    lm_head: bool
    tied_lm_head: bool
    bytes_before: int
    bytes_after: int
    skipped: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        head = "converted" if self.lm_head else "kept in float"
        mb = 1 << 20
        return (
            f"{self.method}: {self.layers} layers, {self.bytes_before / mb:.1f} -> "
            f"{self.bytes_after / mb:.1f} MiB, lm_head {head}"
            + (f", {len(self.skipped)} skipped" if self.skipped else "")
        )


def _per_channel_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (out, in) float -> (int8 weight, fp32 scales).

    Computed in fp32 whatever the weight's dtype, so a bf16 model's scales are not
    rounded before the weights are divided by them.
    """
    w = weight.detach().to(torch.float32)
    scales = w.abs().amax(dim=1) / _QMAX
    # An all-zero row would divide by zero; any positive scale rounds it to zeros.
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(w / scales.unsqueeze(1)).clamp_(-_QMAX, _QMAX).to(torch.int8)
    return q, scales


class Int8WeightOnlyLinear(nn.Module):
    """``y = x @ (int8 weight * per-row scale).T + bias`` with ``x`` kept in float.

    ``weight`` is an int8 buffer shaped (out, in) as ``nn.Linear``'s, so code that reads
    ``.weight.shape`` still sees the layer's shape; ``scales`` is in the activations'
    dtype, as ``_weight_int8pack_mm`` requires.

    Two kernels, measured on an AVX2 CPU with SmolLM2 in fp32:

    ``dequant`` (default)
        Converts the int8 weight to float right before an ordinary matmul, in slices of
        at most ``_DEQUANT_BYTES`` so the float copy stays in cache: DRAM sees one byte
        per weight, the conversion and the matmul run vectorized out of cache. SmolLM2
        decodes one stream 1.3-1.6x faster than in fp32; with many rows (prefill,
        batches) the conversion is shared by all of them and the matmul dominates, as
        in fp32.
    ``pack``
        ``torch.ops.aten._weight_int8pack_mm`` (gpt-fast's CPU kernel) for decode-sized
        inputs (up to ``_PACK_MAX_ROWS`` rows; larger ones take ``dequant``). torch
        vectorizes it for bf16 activations only (AVX2 and AVX-512); fp32 and fp16 run
        its scalar loop, several times slower than fp32 ``nn.Linear``. Kept for bf16
        models and for the measurement.
    """

    weight: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        kernel: Kernel = "dequant",
    ) -> None:
        super().__init__()
        if kernel not in ("dequant", "pack"):
            raise ValueError(f"kernel {kernel!r}: expected 'dequant' or 'pack'")
        self.in_features, self.out_features, self.kernel = in_features, out_features, kernel
        self.register_buffer(
            "weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        )
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype, device=device))
        self.register_buffer(
            "bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None
        )
        # Output rows per dequantized slice: one slice for SmolLM2's layers, 28 for its
        # 49152-row vocabulary projection (whose float copy would be 113 MB).
        self._rows_per_slice = max(1, _DEQUANT_BYTES // (in_features * dtype.itemsize))

    @classmethod
    def from_weight(
        cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *, kernel: Kernel = "dequant"
    ) -> Int8WeightOnlyLinear:
        """Quantize a float (out, in) weight; the layer computes in the weight's dtype."""
        out_features, in_features = weight.shape
        layer = cls(
            in_features,
            out_features,
            bias=bias is not None,
            dtype=weight.dtype,
            device=weight.device,
            kernel=kernel,
        )
        q, scales = _per_channel_int8(weight)
        with torch.no_grad():
            layer.weight.copy_(q)
            layer.scales.copy_(scales.to(weight.dtype))
            if bias is not None and layer.bias is not None:
                layer.bias.copy_(bias.detach())
        return layer

    def dequantized(self) -> torch.Tensor:
        """The float weight this layer multiplies by (for tests and error bounds)."""
        return self.weight.to(self.scales.dtype) * self.scales.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != self.scales.dtype:
            x2 = x2.to(self.scales.dtype)
        if self.kernel == "pack" and self._pack_fits(x2):
            y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.weight, self.scales)
        else:
            y = self._dequant_mm(x2)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    @staticmethod
    def _pack_fits(x2: torch.Tensor) -> bool:
        return _HAS_PACK_MM and x2.device.type == "cpu" and 0 < x2.shape[0] <= _PACK_MAX_ROWS

    def _dequant_mm(self, x2: torch.Tensor) -> torch.Tensor:
        step = self._rows_per_slice
        scratch = _scratch(x2.dtype, x2.device, min(step, self.out_features) * self.in_features)
        outs = []
        for start in range(0, self.out_features, step):
            rows = min(step, self.out_features - start)
            w = scratch[: rows * self.in_features].view(rows, self.in_features)
            w.copy_(self.weight[start : start + rows])  # int8 -> float, in cache
            outs.append(F.linear(x2, w))
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return y * self.scales

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, dtype={self.scales.dtype}, kernel={self.kernel}"
        )


_SCRATCH = threading.local()


def _scratch(dtype: torch.dtype, device: torch.device, numel: int) -> torch.Tensor:
    """A float buffer reused by every dequantizing layer on this thread.

    A fresh tensor per slice would be a fresh allocation of a few MB each time, and the
    allocator hands such blocks back to the OS between calls: measured on SmolLM2's
    vocabulary projection, the page faults made the layer 5-8x slower than fp32 instead
    of 1.4-2.3x faster (1-2 threads). One buffer per thread is safe because a thread
    runs one layer at a time; it is created outside inference mode so in-place writes
    work in and out of it. Not for autograd: a backward pass would find the buffer
    overwritten (and say so).
    """
    buffers: dict[tuple[torch.dtype, torch.device], torch.Tensor] | None = getattr(
        _SCRATCH, "buffers", None
    )
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    buffer = buffers.get((dtype, device))
    if buffer is None or buffer.numel() < numel:
        with torch.inference_mode(False):
            buffer = torch.empty(numel, dtype=dtype, device=device)
        buffers[(dtype, device)] = buffer
    return buffer


def _conv1d_type() -> type[nn.Module] | None:
    try:
        from transformers import Conv1D  # public (GPT-2's layer), not pytorch_utils
    except ImportError:  # not a transformers install: there is no Conv1D to meet
        return None
    return Conv1D  # type: ignore[no-any-return]


def _as_linear_weight(module: nn.Module, conv1d: type[nn.Module] | None) -> torch.Tensor | None:
    """The (out, in) weight of a linear-like layer, or None for any other module.

    GPT-2's ``Conv1D`` stores its weight as (in, out) and computes ``x @ W + b``: the
    same product as ``nn.Linear`` with the transposed weight.
    """
    if isinstance(module, nn.Linear):
        return module.weight
    if conv1d is not None and isinstance(module, conv1d):
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        return weight.t()
    return None


def _bias(module: nn.Module) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _targets(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    # A list first: the caller replaces modules while walking.
    yield from list(model.named_modules())


def _fbgemm(weight: torch.Tensor, bias: torch.Tensor | None, method: str) -> tuple[nn.Module, int]:
    """An fbgemm dynamic linear layer (int8 or fp16 weights) and the bytes it reads."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float16_dynamic_qconfig,
        per_channel_dynamic_qconfig,
    )

    qconfig = {
        "dynamic": per_channel_dynamic_qconfig,
        "dynamic_per_tensor": default_dynamic_qconfig,
        "fp16": float16_dynamic_qconfig,
    }[method]
    out_features, in_features = weight.shape
    float_layer = nn.Linear(in_features, out_features, bias=bias is not None)
    with torch.no_grad():
        float_layer.weight.copy_(weight.detach())
        if bias is not None:
            float_layer.bias.copy_(bias.detach())
    float_layer.qconfig = qconfig  # type: ignore[assignment]  # what from_float reads
    with warnings.catch_warnings():
        # torch 2.13 deprecates torch.ao.quantization in favour of torchao; the fbgemm
        # ops it calls are the ones measured here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        layer = DynamicLinear.from_float(float_layer)
    if method == "fp16":
        return layer, 2 * out_features * in_features + _nbytes(bias)
    # int8 weight plus a scale and zero point per channel (fp64 and int64 in torch's
    # quantized tensor), or one of each per matrix.
    per = out_features if method == "dynamic" else 1
    return layer, out_features * in_features + per * 16 + _nbytes(bias)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _output_embeddings(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return head if isinstance(head, nn.Module) else None


def _input_embedding_weight(model: nn.Module) -> torch.Tensor | None:
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    weight = getattr(embeddings, "weight", None)
    return weight if isinstance(weight, torch.Tensor) else None


def quantize_int8(
    model: nn.Module, *, include_lm_head: bool = True, method: str = DEFAULT_METHOD
) -> QuantizeReport:
    """Replace ``model``'s linear layers by int8 ones, in place.

    ``include_lm_head`` converts the vocabulary projection too. It is where a rounding
    error moves the argmax directly, with no later layer to average it out: on SmolLM2
    it takes mean KL from 0.0025 to 0.004. It is also ~40% of the bytes left after the
    other layers are int8 (the 49152 x 576 matrix tied to the embeddings), so keeping
    it in float leaves most of the speed on the table (12-15 tok/s against 17-18):
    converted by default, the measured cost being of the order of llama.cpp's own.

    Call it before anything caches a reference to a replaced layer (a backend that keeps
    ``model.get_output_embeddings()`` must look it up again). Do not call the model's
    ``tie_weights()`` afterwards: it would put the float embedding matrix back where the
    int8 head's weight is.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    return _convert(model, include_lm_head, method)


def quantize_fp16(model: nn.Module, *, include_lm_head: bool = True) -> QuantizeReport:
    """Replace ``model``'s fp32 linear layers by fbgemm fp16-weight ones, in place.

    Weight-only like ``weight_only`` int8, with half of fp32's bytes instead of a
    quarter, yet faster on AVX2 CPUs (see the module docstring) and without measurable
    accuracy cost, so the head is converted by default. fbgemm runs on CPU with fp32
    activations: other layers are left as they are and listed in ``skipped``.
    """
    return _convert(model, include_lm_head, "fp16")


@torch.no_grad()
def _convert(model: nn.Module, include_lm_head: bool, method: str) -> QuantizeReport:
    conv1d = _conv1d_type()
    head = _output_embeddings(model)
    embedding_weight = _input_embedding_weight(model)
    tied = (
        head is not None
        and embedding_weight is not None
        and getattr(head, "weight", None) is embedding_weight
    )
    layers = bytes_before = bytes_after = 0
    skipped: list[str] = []
    new_head: nn.Module | None = None
    for name, module in _targets(model):
        weight = _as_linear_weight(module, conv1d)
        if weight is None:
            continue
        is_head = module is head
        if is_head and not include_lm_head:
            skipped.append(f"{name}: lm_head kept in float (include_lm_head=False)")
            continue
        bias = _bias(module)
        new: nn.Module
        if method in ("weight_only", "weight_only_pack"):
            kernel: Kernel = "pack" if method == "weight_only_pack" else "dequant"
            new = Int8WeightOnlyLinear.from_weight(weight, bias, kernel=kernel)
            after = _nbytes(new.weight, new.scales, new.bias)
        else:
            if weight.dtype != torch.float32 or weight.device.type != "cpu":
                skipped.append(
                    f"{name}: {method} needs fp32 weights on CPU (fbgemm), "
                    f"got {weight.dtype} on {weight.device}"
                )
                continue
            new, after = _fbgemm(weight, bias, method)
        bytes_before += _nbytes(weight, bias)
        bytes_after += after
        layers += 1
        _replace(model, name, new)
        if is_head:
            new_head = new
    if new_head is not None and head is not None and _output_embeddings(model) is not new_head:
        # Models whose getter does not read the attribute just replaced.
        setter = getattr(model, "set_output_embeddings", None)
        if callable(setter):
            setter(new_head)
        if _output_embeddings(model) is not new_head:
            raise RuntimeError("the quantized lm_head is not what get_output_embeddings returns")
    return QuantizeReport(
        method=method,
        layers=layers,
        lm_head=new_head is not None,
        tied_lm_head=tied,
        bytes_before=bytes_before,
        bytes_after=bytes_after,
        skipped=tuple(skipped),
    )
