"""Runs inside the OpenVINO GenAI venv: times ``LLMPipeline`` and ``ContinuousBatchingPipeline``.

    .bench-venvs/openvino-genai/bin/python benchmarks/_openvino_genai_worker.py \
        --job job.json --out rows.json

Started by ``benchmarks/openvino_genai_peer.py``, never by hand. It imports nothing from
squeezer (squeezer's venv has transformers 5.25, optimum-intel wants <5.6, so the two
cannot share an interpreter); everything it needs arrives in the job file: the exported
IR folders, the already chat-templated prompts and the run's sizes. It writes the rows
and the versions of what it ran, and nothing else.

OpenVINO GenAI runs its own scheduler, so it is measured here as a peer, through its
own ``generate`` calls: one stream is ``LLMPipeline.generate`` on one prompt at a time;
N streams is one ``ContinuousBatchingPipeline.generate`` over N prompts (its scheduler
batches them). Every request is greedy with exactly ``new`` tokens (``ignore_eos`` plus
``min_new_tokens``), as squeezer's own benchmarks ask of every peer.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from pathlib import Path
from typing import Any

import openvino as ov
import openvino_genai as ov_genai

PACKAGES = (
    "openvino",
    "openvino-genai",
    "openvino-tokenizers",
    "optimum-intel",
    "optimum",
    "nncf",
    "transformers",
    "torch",
)


def versions() -> dict[str, str]:
    """What this venv actually holds (pip may resolve the unpinned ones differently later)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def config(new: int) -> ov_genai.GenerationConfig:
    """Greedy, exactly ``new`` tokens; the prompts are templated already, so no template."""
    cfg = ov_genai.GenerationConfig()
    cfg.max_new_tokens = new
    cfg.min_new_tokens = new
    cfg.ignore_eos = True
    cfg.do_sample = False
    # The parent applied the model's chat template with transformers (the same text the
    # HTTP peers see); GenAI would otherwise apply it a second time to string prompts.
    cfg.apply_chat_template = False
    return cfg


def one_stream(folder: Path, props: dict[str, Any], prompts: list[str], new: int) -> dict:
    """``LLMPipeline.generate`` one prompt at a time; tokens from its own perf metrics."""
    pipe = ov_genai.LLMPipeline(str(folder), "CPU", **props)
    cfg = config(new)
    pipe.generate(prompts[0], cfg)  # warm-up: first-call compilation is not decode speed
    tokens, t0 = 0, time.perf_counter()
    ttft = []
    for text in prompts:
        res = pipe.generate([text], cfg)
        tokens += int(res.perf_metrics.get_num_generated_tokens())
        ttft.append(float(res.perf_metrics.get_ttft().mean))
    seconds = time.perf_counter() - t0
    del pipe
    return {
        "streams": 1,
        "requests": len(prompts),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "ttft_mean_ms": sum(ttft) / len(ttft),
    }


def many_streams(
    folder: Path, props: dict[str, Any], prompts: list[str], new: int, streams: list[int]
) -> list[dict]:
    """One ``ContinuousBatchingPipeline.generate`` over ``n`` prompts per level."""
    sched = ov_genai.SchedulerConfig()
    # 1 GB of KV cache holds 32 x (prompt + 128) tokens of SmolLM2 many times over;
    # the default (0) would size it from free memory on a machine other people share.
    sched.cache_size = 1
    pipe = ov_genai.ContinuousBatchingPipeline(str(folder), sched, "CPU", props)
    cfg = config(new)
    pipe.generate(prompts[:2], [cfg, cfg])  # warm-up
    rows = []
    for n in streams:
        batch = [prompts[i % len(prompts)] for i in range(n)]
        t0 = time.perf_counter()
        results = pipe.generate(batch, [cfg] * n)
        seconds = time.perf_counter() - t0
        # The call's perf metrics count every request's tokens (each result carries the
        # same aggregate); ignore_eos + min_new_tokens make it n * new unless a request
        # stopped early, which the row then shows.
        tokens = int(results[0].perf_metrics.get_num_generated_tokens())
        if tokens != n * new or not all(r.m_generation_ids[0] for r in results):
            print(f"warning: {n} streams gave {tokens} tokens, not {n * new}", flush=True)
        rows.append(
            {
                "streams": n,
                "requests": n,
                "tokens": tokens,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "ttft_mean_ms": None,
            }
        )
    del pipe
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    job = json.loads(args.job.read_text())
    rows = []
    for variant in job["variants"]:
        folder, props = Path(variant["ir"]), variant["properties"]
        print(f"{variant['name']}: one stream", flush=True)
        first = one_stream(folder, props, job["prompts"][: job["one_stream_prompts"]], job["new"])
        rows.append(first)
        more = [n for n in job["streams"] if n > 1]
        if more:
            print(f"{variant['name']}: {more} streams", flush=True)
            rows += many_streams(folder, props, job["prompts"], job["new"], more)
        for r in rows:
            r.setdefault("variant", variant["name"])
        print(json.dumps([r for r in rows if r["variant"] == variant["name"]]), flush=True)
    core = ov.Core()
    defaults = {
        key: str(getattr(value := core.get_property("CPU", key), "type_name", value))
        for key in ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "INFERENCE_NUM_THREADS")
        if key in core.get_property("CPU", "SUPPORTED_PROPERTIES")
    }
    args.out.write_text(
        json.dumps({"versions": versions(), "cpu_defaults": defaults, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
