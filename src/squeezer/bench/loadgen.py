"""The load generator: worker processes sending requests, closed or open loop.

One Python process with ``httpx`` tops out near a thousand requests/s, so load comes
from several processes, each an asyncio loop with its share of the connections (closed
loop) or of the arrival schedule (open loop). Open-loop latency counts from the
*scheduled* send time, so a generator or server that falls behind shows it instead of
quietly sending less (no coordinated omission).

Streaming routes (OpenAI and TGI server-sent events) record the time to first token
and the gaps between tokens.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import random
import time
from dataclasses import dataclass, field
from typing import Any

from squeezer.bench.workload import RouteKind, Workload

#: Open loop never holds more requests than this in flight per worker (file handles).
_MAX_IN_FLIGHT = 2048


@dataclass(frozen=True, slots=True)
class LoadSpec:
    url: str
    #: Closed loop: connections kept busy. Open loop: None.
    concurrency: int | None = None
    #: Open loop: mean arrivals per second (Poisson). Closed loop: None.
    rate: float | None = None
    duration_s: float = 10.0
    #: Stop after this many requests (whichever bound comes first).
    max_requests: int | None = None
    workers: int = 2
    timeout_s: float = 60.0
    seed: int = 0


@dataclass(slots=True)
class Record:
    """One request as the generator saw it."""

    #: Seconds after the level's start that it was due (open loop) or sent (closed).
    due_s: float
    latency_s: float
    #: HTTP status, or 0 when no response came (connect error, timeout, reset).
    status: int
    items: int
    chars: int
    ttft_s: float | None = None
    tokens: int = 0
    gaps_s: list[float] = field(default_factory=list)


def poisson_schedule(rate: float, duration_s: float, seed: int, limit: int | None) -> list[float]:
    """Arrival times (seconds from start) of a Poisson process with mean ``rate``/s."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = random.Random(seed)
    times: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s or (limit is not None and len(times) >= limit):
            return times
        times.append(t)


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal shares (connections or requests per worker)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def run(spec: LoadSpec, workload: Workload) -> tuple[list[Record], float]:
    """Run one level; returns every request's record and the measured wall time."""
    workers = max(1, spec.workers)
    if spec.concurrency is not None:
        workers = min(workers, spec.concurrency)
    schedule = (
        poisson_schedule(spec.rate, spec.duration_s, spec.seed, spec.max_requests)
        if spec.rate is not None
        else None
    )
    quotas = (
        split(spec.max_requests, workers) if spec.max_requests is not None else [None] * workers
    )
    conns = split(spec.concurrency, workers) if spec.concurrency is not None else [0] * workers
    ctx = mp.get_context("spawn")
    start_at = time.time() + 0.5 + 0.3 * workers  # after every worker has imported
    with ctx.Pool(workers) as pool:
        shares = [
            _Share(
                w,
                workers,
                conns[w],
                quotas[w],
                schedule[w::workers] if schedule is not None else None,
                start_at,
            )
            for w in range(workers)
        ]
        jobs = [pool.apply_async(_worker, (spec, workload, share)) for share in shares]
        parts = [job.get(timeout=spec.duration_s + spec.timeout_s + 60) for job in jobs]
    records = [r for part, _ in parts for r in part]
    elapsed = max((end for _, end in parts), default=0.0)
    return records, elapsed


@dataclass(frozen=True, slots=True)
class _Share:
    """One worker's part of a level."""

    index: int
    workers: int
    #: Closed loop: connections this worker keeps busy.
    conns: int
    quota: int | None
    #: Open loop: this worker's arrival times.
    arrivals: list[float] | None
    #: Wall-clock time all workers start at (after every one has imported).
    start_at: float


def _worker(spec: LoadSpec, workload: Workload, share: _Share) -> tuple[list[Record], float]:
    return asyncio.run(_drive(spec, workload, share))


async def _drive(spec: LoadSpec, workload: Workload, share: _Share) -> tuple[list[Record], float]:
    import httpx

    arrivals = share.arrivals
    limits = httpx.Limits(
        max_connections=max(share.conns, 1) if arrivals is None else _MAX_IN_FLIGHT
    )
    timeout = httpx.Timeout(spec.timeout_s)
    records: list[Record] = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await asyncio.sleep(max(0.0, share.start_at - time.time()))
        t0 = time.perf_counter()
        if arrivals is None:
            await _closed(client, spec, workload, share, t0, records)
        else:
            await _open(client, spec, workload, share.index, arrivals, t0, records)
        return records, time.perf_counter() - t0


async def _closed(
    client: Any,
    spec: LoadSpec,
    workload: Workload,
    share: _Share,
    t0: float,
    records: list[Record],
) -> None:
    deadline = t0 + spec.duration_s
    budget = math.inf if share.quota is None else share.quota
    next_body = share.index

    async def loop() -> None:
        nonlocal budget, next_body
        while time.perf_counter() < deadline and budget > 0:
            budget -= 1
            i = next_body % len(workload.bodies)
            next_body += share.workers
            due = time.perf_counter() - t0
            records.append(await _send(client, spec.url, workload, i, due, t0))

    await asyncio.gather(*(loop() for _ in range(share.conns)))


async def _open(
    client: Any,
    spec: LoadSpec,
    workload: Workload,
    index: int,
    arrivals: list[float],
    t0: float,
    records: list[Record],
) -> None:
    tasks = []
    for n, due in enumerate(arrivals):
        delay = t0 + due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        i = (index + n) % len(workload.bodies)
        tasks.append(asyncio.create_task(_send(client, spec.url, workload, i, due, t0)))
    records.extend(await asyncio.gather(*tasks))


async def _send(client: Any, url: str, workload: Workload, i: int, due: float, t0: float) -> Record:
    """Send body ``i``; latency counts from ``due`` (seconds after ``t0``)."""
    import httpx

    record = Record(due, 0.0, 0, workload.items[i], workload.chars[i])
    headers = {"content-type": "application/json"}
    try:
        if workload.kind.generates:
            async with client.stream("POST", url, content=workload.bodies[i], headers=headers) as r:
                record.status = r.status_code
                if r.status_code == 200:
                    await _read_stream(r, workload.kind, record, t0 + due)
                else:
                    await r.aread()
        else:
            r = await client.post(url, content=workload.bodies[i], headers=headers)
            record.status = r.status_code
    except httpx.HTTPError:
        record.status = 0
    record.latency_s = time.perf_counter() - (t0 + due)
    return record


async def _read_stream(response: Any, kind: RouteKind, record: Record, sent_at: float) -> None:
    """Count streamed tokens from server-sent events: one event carries one token."""
    last = None
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        if not _carries_token(data, kind):
            continue
        now = time.perf_counter()
        if last is None:
            record.ttft_s = now - sent_at
        else:
            record.gaps_s.append(now - last)
        last = now
        record.tokens += 1


def _carries_token(data: str, kind: RouteKind) -> bool:
    import json

    try:
        event = json.loads(data)
    except ValueError:
        return False
    if kind is RouteKind.TGI_STREAM:
        token = event.get("token") or {}
        return not token.get("special", False)
    choices = event.get("choices") or []
    if not choices:
        return False
    choice = choices[0]
    text = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
    return bool(text)
