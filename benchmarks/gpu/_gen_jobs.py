"""In-process generation measurements for ``generation.py``, one subprocess each.

    python3 benchmarks/gpu/_gen_jobs.py JOB --model DIR --device cuda --out result.json [...]

A subprocess per job for the reasons ``_jobs.py`` gives (each loads torch and a model on
the GPU; a crash or an out-of-memory costs that job alone; memory and compiled graphs
are given back before the next one), and one more: every job that compiles starts from
a clean dynamo/inductor state, so a compile time reported is that job's own.

Jobs:

- ``build``: the model every other job and the server load: SmolLM2-135M's architecture
  (or, ``--tiny``, a 2-layer one for the CPU dry run) with random weights, saved once
  with the carried tokenizer and chat template.
- ``hf-generate``: HF ``generate``, one stream (eager, the default dynamic cache).
- ``hf-static``: the same with ``cache_implementation="static"``, which ``generate``
  compiles (``torch.compile``, CUDA graphs) on CUDA; the first call's time is reported.
- ``hf-batch``: one ``generate`` over a static batch of ``--batch`` prompts, left padded.
- ``generate-batch``: transformers' own continuous batching (``model.generate_batch``).
- ``bare``: the ceiling: a decode loop of the same model with no ``generate`` and no
  server (static KV cache, the forward and the greedy argmax compiled with
  ``mode="reduce-overhead"``, i.e. CUDA graphs), ms per step at each batch size.

Prompts are the pydoc sentences (``_corpus``), in the order ``squeezer bench`` sends
them, each rendered with the chat template as the server renders a chat request: mixed
lengths, the same tokens. Every job generates exactly ``--new-tokens`` per prompt
(``min_new_tokens`` or no EOS), greedy, and reports tokens/s from the tokens it got.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

import _corpus  # noqa: E402

#: The CPU dry run's model: SmolLM2's tokenizer (so the chat template works) on a
#: Llama small enough to run anything in seconds on 2 cores.
TINY = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _supported(fn: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments ``fn`` names: transformers' generation APIs gain and lose
    parameters between 5.x releases (here 5.23, the device 5.17)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def build(a: argparse.Namespace) -> dict[str, Any]:
    """The architecture from the carried config, random weights, saved as safetensors.

    Embedding rows of special tokens and of tokens that do not decode to text on their
    own (bytes of an unfinished UTF-8 character) are zeroed: with tied embeddings their
    logits are then 0 while the best of the others is well above, so greedy decoding
    never picks them, and every token streamed over HTTP is an event with text (which
    is what ``squeezer bench`` counts; a random model stuck on a byte token would show
    0 tok/s). Zeroes cost the same FLOPs and bytes: speed is unchanged.
    """
    import torch
    import transformers

    t0 = time.perf_counter()
    config = transformers.AutoConfig.from_pretrained(a.config)
    if a.tiny:
        for key, value in TINY.items():
            setattr(config, key, value)
    dtype = getattr(torch, a.dtype)
    config.dtype = a.dtype
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    tok = transformers.AutoTokenizer.from_pretrained(a.config)
    vocab = model.get_input_embeddings().weight.shape[0]
    texts = tok.batch_decode([[i] for i in range(vocab)])
    special = set(tok.all_special_ids)
    bad = [i for i, t in enumerate(texts) if i in special or not t or "\ufffd" in t]
    with torch.no_grad():
        for emb in {
            id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings())
        }.values():
            emb.weight[bad] = 0
    if a.out_model.exists():
        shutil.rmtree(a.out_model)
    model.save_pretrained(a.out_model)
    for src in sorted(a.config.iterdir()):
        if src.is_file() and src.name != "config.json":
            shutil.copy2(src, a.out_model / src.name)
    lengths = sorted(len(p) for p in _prompts(tok, a.batch))
    params = sum(p.numel() for p in model.parameters())
    size = sum(p.stat().st_size for p in a.out_model.iterdir() if p.is_file())
    return {
        "path": str(a.out_model),
        "params": params,
        "dtype": a.dtype,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab": vocab,
        "tokens_never_picked": len(bad),
        # The chat prompts every section sends (the first --batch of them), in tokens.
        "prompt_tokens": {
            "min": lengths[0],
            "mean": round(sum(lengths) / len(lengths), 1),
            "max": lengths[-1],
        },
        "bytes_on_disk": size,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _load(a: argparse.Namespace) -> tuple[Any, Any]:
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        a.model, dtype=getattr(torch, a.dtype)
    )
    return model.to(a.device).eval(), tok


def _prompts(tok: Any, count: int) -> list[list[int]]:
    """The first ``count`` corpus sentences as chat prompts (what the server tokenizes)."""
    texts = _corpus.all_sentences()
    out = []
    for i in range(count):
        chat = [{"role": "user", "content": texts[i % len(texts)]}]
        text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        out.append(tok(text, add_special_tokens=False)["input_ids"])
    return out


def _greedy(tok: Any, new: int) -> dict[str, Any]:
    """``generate`` kwargs: greedy, exactly ``new`` tokens (EOS suppressed until then)."""
    return {
        "do_sample": False,
        "max_new_tokens": new,
        "min_new_tokens": new,
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    }


def _one_stream(a: argparse.Namespace, extra: dict[str, Any], compiles: bool) -> dict[str, Any]:
    """Prompts one at a time until ``--seconds`` pass (at least one), after warm-up.

    When ``generate`` compiles (``compiles``), the first call runs the longest prompt to
    its full length (the static cache is sized there, once for every prompt) and is
    reported as the compile time; a short second call finishes the CUDA graphs. Eager,
    one short call warms up (kernels chosen, allocator filled)."""
    import torch

    model, tok = _load(a)
    prompts = _prompts(tok, a.prompts)
    greedy = _greedy(tok, a.new_tokens)

    def run(ids: list[int], new: int) -> int:
        x = torch.tensor([ids], device=a.device)
        limits = {"max_new_tokens": new, "min_new_tokens": new}
        out = model.generate(x, attention_mask=torch.ones_like(x), **{**greedy, **extra, **limits})
        _sync(a.device)
        return int(out.shape[1] - x.shape[1])

    t0 = time.perf_counter()
    run(max(prompts, key=len), a.new_tokens if compiles else 8)
    first_s = time.perf_counter() - t0
    if compiles:
        run(prompts[0], 8)
    tokens, done, t0 = 0, 0, time.perf_counter()
    while done == 0 or time.perf_counter() - t0 < a.seconds:
        tokens += run(prompts[done % len(prompts)], a.new_tokens)
        done += 1
    secs = time.perf_counter() - t0
    return {
        "tokens_per_s": tokens / secs,
        "tokens": tokens,
        "prompts": done,
        "seconds": secs,
        "first_call_s": first_s,
        # generate keeps its compiled forward here once it compiled (transformers 5.x)
        "compiled": hasattr(model, "_compiled_call"),
        "dtype": a.dtype,
    }


def hf_generate(a: argparse.Namespace) -> dict[str, Any]:
    """HF ``generate`` one stream, eager, default (dynamic) cache."""
    return _one_stream(a, {}, compiles=False)


def hf_static(a: argparse.Namespace) -> dict[str, Any]:
    """``cache_implementation="static"``: ``generate`` compiles its decode step on CUDA
    (``CompileConfig``'s default, ``mode="reduce-overhead"``); on a CPU it stays eager."""
    cuda = a.device.startswith("cuda")
    result = _one_stream(a, {"cache_implementation": "static"}, compiles=cuda)
    result["compile_s"] = result["first_call_s"] if result["compiled"] else None
    if not result["compiled"]:
        result["note"] = f"not compiled: transformers compiles generate on CUDA only ({a.device})"
    return result


def hf_batch(a: argparse.Namespace) -> dict[str, Any]:
    """One ``generate`` over ``--batch`` prompts, left padded (a static batch: every
    stream waits for the longest prompt's prefill and runs to the last token)."""

    model, tok = _load(a)
    tok.padding_side = "left"
    prompts = _prompts(tok, a.batch)
    enc = tok.pad({"input_ids": prompts}, return_tensors="pt").to(a.device)
    kwargs = _greedy(tok, a.new_tokens)

    def run(new: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        out = model.generate(**enc, **{**kwargs, "max_new_tokens": new, "min_new_tokens": new})
        _sync(a.device)
        return int(
            out.shape[0] * (out.shape[1] - enc["input_ids"].shape[1])
        ), time.perf_counter() - t0

    _, warm_s = run(4)  # kernels chosen, allocator warmed: not measured
    tokens, secs = run(a.new_tokens)
    padded = int(enc["input_ids"].numel())
    real = sum(len(p) for p in prompts)
    return {
        "tokens_per_s": tokens / secs,
        "tokens": tokens,
        "streams": len(prompts),
        "seconds": secs,
        "warmup_s": warm_s,
        "prompt_padding_efficiency": real / padded,
        "dtype": a.dtype,
    }


def generate_batch(a: argparse.Namespace) -> dict[str, Any]:
    """transformers' continuous batching on ``--batch`` prompts: called twice with the
    same prompts, the second timed (the first sizes its paged cache, warms up and, on
    CUDA, captures its graphs; with ``persistent_manager`` the second reuses all that)."""
    import transformers

    model, tok = _load(a)
    if not hasattr(model, "generate_batch"):
        raise RuntimeError(f"transformers {transformers.__version__} has no generate_batch")
    prompts = _prompts(tok, a.batch)
    config = transformers.GenerationConfig(
        max_new_tokens=a.new_tokens,
        do_sample=False,
        eos_token_id=-1,  # no EOS: every request runs to max_new_tokens (ignore_eos)
        pad_token_id=tok.pad_token_id,
    )
    kwargs = _supported(model.generate_batch, persistent_manager=True, progress_bar=False)

    def run() -> tuple[int, float]:
        t0 = time.perf_counter()
        out = model.generate_batch(inputs=prompts, generation_config=config, **kwargs)
        _sync(a.device)
        return sum(len(o.generated_tokens) for o in out.values()), time.perf_counter() - t0

    _, first_s = run()
    tokens, secs = run()
    manager = getattr(model, "_cached_continuous_batching_manager", None)
    if manager is not None and hasattr(model, "destroy_cached_continuous_batching_manager"):
        model.destroy_cached_continuous_batching_manager()
    return {
        "tokens_per_s": tokens / secs,
        "tokens": tokens,
        "tokens_expected": a.new_tokens * len(prompts),
        "streams": len(prompts),
        "seconds": secs,
        "first_call_s": first_s,
        "persistent_manager": "persistent_manager" in kwargs,
        "transformers": transformers.__version__,
        "dtype": a.dtype,
    }


def bare(a: argparse.Namespace) -> dict[str, Any]:
    """The decode step alone, per batch size: what a server's step could cost at best
    with this model's code (transformers' Llama, SDPA over the whole static cache).

    Prefill (eager) fills ``--prompt-len`` positions of every row; then ``--steps``
    decode steps are timed after warm-up (compiling, recording the CUDA graphs). The
    step is ``forward + argmax`` under ``torch.compile(mode="reduce-overhead",
    fullgraph=True)`` on CUDA (``fullgraph=False`` if transformers' forward breaks the
    graph; the result says so), eager on a CPU unless ``--compile`` (no CUDA graphs
    there; the dry run only shows that the loop works). Each batch size gets a fresh
    cache and compile.
    """
    import torch
    import transformers

    model, tok = _load(a)
    cuda = a.device.startswith("cuda")
    seed = _prompts(tok, 1)[0]
    row = (seed * (a.prompt_len // len(seed) + 1))[: a.prompt_len]
    out: dict[str, Any] = {"cache_len": a.cache_len, "prompt_len": a.prompt_len, "dtype": a.dtype}
    out["compiled"] = (cuda or a.compile) and not a.eager
    out["fullgraph"] = out["compiled"]
    out["batches"] = {}
    for batch in (int(b) for b in a.bare_batches.split(",")):
        torch._dynamo.reset()
        cache = transformers.StaticCache(
            **_supported(
                transformers.StaticCache.__init__, config=model.config, max_cache_len=a.cache_len
            )
        )

        def step(ids: torch.Tensor, cache: Any = cache) -> torch.Tensor:
            logits = model(
                input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1
            ).logits
            return logits[:, -1].argmax(-1, keepdim=True)

        def compiled(fn: Callable[..., torch.Tensor], fullgraph: bool) -> Callable[..., Any]:
            return torch.compile(fn, mode="reduce-overhead", fullgraph=fullgraph, dynamic=False)

        decode = compiled(step, out["fullgraph"]) if out["compiled"] else step
        ids = torch.tensor([row] * batch, device=a.device)
        with torch.no_grad():
            tok_ids = step(ids)  # prefill, eager: the cache's tensors are made here
            t0 = time.perf_counter()
            times = []
            for _ in range(a.warmup_steps):
                s0 = time.perf_counter()
                if cuda:
                    torch.compiler.cudagraph_mark_step_begin()
                try:
                    tok_ids = decode(tok_ids).clone()
                except Exception as e:  # a graph break under fullgraph: compile with breaks
                    if not out["fullgraph"] or times:
                        raise
                    out["fullgraph"] = False
                    out["fullgraph_error"] = f"{type(e).__name__}: {str(e)[:500]}"
                    torch._dynamo.reset()
                    decode = compiled(step, False)
                    tok_ids = decode(tok_ids).clone()
                _sync(a.device)
                times.append(time.perf_counter() - s0)
            warm_s = time.perf_counter() - t0
            _sync(a.device)
            t0 = time.perf_counter()
            for _ in range(a.steps):
                if cuda:
                    torch.compiler.cudagraph_mark_step_begin()
                tok_ids = decode(tok_ids).clone()
            _sync(a.device)
            secs = time.perf_counter() - t0
        ms = 1000 * secs / a.steps
        out["batches"][str(batch)] = {
            "ms_per_step": ms,
            "tokens_per_s": batch * 1000 / ms,
            "steps": a.steps,
            "warmup_s": warm_s,
            "first_step_s": times[0] if times else None,
        }
        del cache, decode
        if cuda:
            torch.cuda.empty_cache()
    return out


JOBS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "build": build,
    "hf-generate": hf_generate,
    "hf-static": hf_static,
    "hf-batch": hf_batch,
    "generate-batch": generate_batch,
    "bare": bare,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("job", choices=sorted(JOBS))
    p.add_argument("--model", type=Path, help="the built model's folder")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", type=Path, required=True, help="the result's JSON file")
    p.add_argument("--config", type=Path, help="build: the carried config + tokenizer folder")
    p.add_argument("--out-model", type=Path, help="build: where the model is saved")
    p.add_argument("--tiny", action="store_true", help="build: the dry run's 2-layer Llama")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=64, help="one-stream jobs: prompts cycled")
    p.add_argument("--seconds", type=float, default=10.0, help="one-stream jobs: timed loop")
    p.add_argument("--batch", type=int, default=256, help="hf-batch, generate-batch: prompts")
    p.add_argument("--bare-batches", default="1,64,256", help="bare: batch sizes")
    p.add_argument("--cache-len", type=int, default=512, help="bare: static cache positions")
    p.add_argument("--prompt-len", type=int, default=32, help="bare: positions prefilled")
    p.add_argument("--steps", type=int, default=128, help="bare: timed decode steps")
    p.add_argument("--warmup-steps", type=int, default=5, help="bare: compile + record steps")
    p.add_argument("--eager", action="store_true", help="bare: no torch.compile on CUDA either")
    p.add_argument("--compile", action="store_true", help="bare: torch.compile on a CPU too")
    p.add_argument("--cpu-threads", type=int, default=1, help="torch threads on a CPU")
    a = p.parse_args(argv)
    if a.job != "build" and a.model is None:
        p.error(f"{a.job} needs --model")
    if a.job == "bare" and a.prompt_len + a.warmup_steps + a.steps + 1 > a.cache_len:
        p.error("bare: --prompt-len + --warmup-steps + --steps must fit in --cache-len")
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {a.device}: torch sees no CUDA device")
    if a.device == "cpu":
        # The dry run's machine has 2 cores shared with whatever else runs: two OpenMP
        # threads then wait on each other at every op (steps of 250 ms instead of 4).
        torch.set_num_threads(a.cpu_threads)
    if a.device == "cuda":
        a.device = "cuda:0"
    result = JOBS[a.job](a)
    a.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
