"""Load against a model in this process, through squeezer's engine but no HTTP.

Comparing this with the same load over HTTP separates the server's own overhead
(HTTP, JSON, the event loop) from the engine's speed (batching, tokenization, the
forward pass).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from squeezer.bench.loadgen import Record, poisson_schedule
from squeezer.bench.workload import RouteKind, Workload
from squeezer.config import ModelSettings, Settings
from squeezer.errors import SqueezerError
from squeezer.server.errors import kind_of
from squeezer.server.runtime import Runtime
from squeezer.tasks import ClassifyRequest, EmbedRequest

#: Routes the in-process target understands (their bodies carry texts to embed or classify).
IN_PROCESS_KINDS = (RouteKind.TEI_EMBED, RouteKind.HF, RouteKind.TEI_PREDICT)


async def run_levels(
    model_path: str,
    workload: Workload,
    levels: list[tuple[int | None, float | None]],
    duration_s: float,
    max_requests: int | None,
    seed: int = 0,
) -> list[tuple[list[Record], float]]:
    """Each level is (concurrency, None) for closed loop or (None, rate) for open loop."""
    if workload.kind not in IN_PROCESS_KINDS:
        raise ValueError(f"in-process runs measure embeddings or /predict, not {workload.kind}")
    path = Path(model_path)
    settings = Settings(models=[ModelSettings(name="bench", path=str(path))], warmup=True)
    runtime = Runtime(settings)
    await runtime.start()
    try:
        model = runtime.registry.get("bench")
        texts = [_texts(body) for body in workload.bodies]

        async def one(i: int, due: float, t0: float) -> Record:
            record = Record(due, 0.0, 200, workload.items[i], workload.chars[i])
            try:
                if workload.kind is RouteKind.TEI_PREDICT:
                    await runtime.classify(model, ClassifyRequest(inputs=texts[i], top_k=None))
                else:
                    await runtime.embed(model, EmbedRequest(inputs=texts[i]))
            except SqueezerError as e:
                record.status = kind_of(e).status
            record.latency_s = time.perf_counter() - (t0 + due)
            return record

        out = []
        for concurrency, rate in levels:
            t0 = time.perf_counter()
            if rate is not None:
                schedule = poisson_schedule(rate, duration_s, seed, max_requests)
                records = await _open(one, schedule, len(texts), t0)
            else:
                records = await _closed(
                    one, concurrency or 1, duration_s, max_requests, len(texts), t0
                )
            out.append((records, time.perf_counter() - t0))
        return out
    finally:
        await runtime.stop()


Send = Callable[[int, float, float], Coroutine[Any, Any, Record]]


async def _open(one: Send, schedule: list[float], n: int, t0: float) -> list[Record]:
    tasks: list[asyncio.Task[Record]] = []
    for i, due in enumerate(schedule):
        await asyncio.sleep(max(0.0, t0 + due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i % n, due, t0)))
    return list(await asyncio.gather(*tasks))


async def _closed(
    one: Send, concurrency: int, duration_s: float, max_requests: int | None, n: int, t0: float
) -> list[Record]:
    records: list[Record] = []
    budget = max_requests if max_requests is not None else 1 << 62
    sent = 0

    async def loop() -> None:
        nonlocal sent
        while time.perf_counter() - t0 < duration_s and sent < budget:
            sent += 1
            due = time.perf_counter() - t0
            records.append(await one(sent % n, due, t0))

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return records


def _texts(body: bytes) -> list[str]:
    data = json.loads(body)
    inputs = data.get("inputs")
    if isinstance(inputs, str):
        return [inputs]
    return [x[0] if isinstance(x, list) else x for x in inputs]
