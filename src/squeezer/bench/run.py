"""``squeezer bench``: drive load at a server or an in-process model, level by level.

Closed loop sweeps concurrency (each connection sends its next request when the last
one is answered); open loop offers fixed Poisson rates whatever the server does, the
mode that shows queueing collapse honestly. Every level is bounded by time and by a
request count. Beside the results, the generator is measured against a no-op server
at the same levels: its ceiling on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from squeezer import __version__
from squeezer.bench import loadgen
from squeezer.bench.report import BenchResult, LevelStats, summarize
from squeezer.bench.workload import Workload, WorkloadSpec, build, load_texts, route_kind

#: Seconds the generator's ceiling is measured per level (it is stable; keep runs short).
_CEILING_S = 3.0


class RemoteTargetError(ValueError):
    """A benchmark aimed at another machine without ``--allow-remote``."""


@dataclass(frozen=True, slots=True)
class BenchSettings:
    #: A URL (a server, any route) or a model path/``package:MODULE`` (in-process).
    target: str
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    #: Open loop when given: arrivals per second for each level.
    rates: tuple[float, ...] = ()
    duration_s: float = 10.0
    #: Unmeasured load at each level first: caches fill, the batcher settles, the
    #: server's lazy first-call costs are paid outside the numbers.
    warmup_s: float = 2.0
    max_requests: int | None = None
    #: Load generator processes; 0 picks min(cores, 4).
    workers: int = 0
    texts: Path | None = None
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    #: In-process runs: which route's work to do (embed or predict).
    route: str = "/embed"
    allow_remote: bool = False
    ceiling: bool = True
    timeout_s: float = 60.0
    seed: int = 0

    @property
    def mode(self) -> str:
        return "open" if self.rates else "closed"

    @property
    def in_process(self) -> bool:
        return not self.target.startswith(("http://", "https://"))


def check_target(url: str, allow_remote: bool) -> None:
    """Load tests point at your own machine unless you say otherwise."""
    host = urlsplit(url).hostname or ""
    if allow_remote or host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise RemoteTargetError(
        f"{host or url} is not a loopback address; pass --allow-remote to load another machine"
    )


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "squeezer": __version__,
    }


def _levels(s: BenchSettings) -> list[tuple[str, int | None, float | None]]:
    if s.rates:
        return [(f"{r:g}/s", None, r) for r in s.rates]
    return [(f"c={c}", c, None) for c in s.concurrency]


def _workers(s: BenchSettings) -> int:
    return s.workers or max(1, min(len(os.sched_getaffinity(0)), 4))


def run_bench(
    s: BenchSettings,
    on_level: Callable[[str, float], AbstractContextManager[None]] | None = None,
) -> BenchResult:
    """Run every level; ``on_level(label, seconds)`` wraps each (progress display)."""
    texts = load_texts(s.texts)
    kind = route_kind(s.route if s.in_process else s.target)
    workload = build(kind, texts, s.workload, count=min(len(texts), 1024))
    levels = _levels(s)
    result = BenchResult(
        target=s.target,
        route=kind.value,
        mode=s.mode,
        machine=machine(),
        workload={**asdict(s.workload), "texts": str(s.texts or "built-in corpus")},
        generator={"kind": "in-process" if s.in_process else "python", "workers": _workers(s)},
    )
    wrap = on_level or _no_display
    if s.in_process:
        result.levels = _in_process(s, workload, levels)
        return result
    check_target(s.target, s.allow_remote)
    for label, conc, rate in levels:
        if s.warmup_s > 0:
            with wrap(f"{label} warm-up", s.warmup_s):
                _measure(s, s.target, workload, label, conc, rate, s.warmup_s)
        with wrap(label, s.duration_s):
            result.levels.append(_measure(s, s.target, workload, label, conc, rate, s.duration_s))
    if s.ceiling:
        with noop_server() as base:
            url = base + urlsplit(s.target).path
            for label, conc, rate in levels:
                with wrap(f"generator ceiling {label}", _CEILING_S):
                    result.ceiling.append(
                        _measure(s, url, workload, label, conc, rate, min(_CEILING_S, s.duration_s))
                    )
    return result


def _no_display(label: str, seconds: float) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


def _measure(
    s: BenchSettings,
    url: str,
    workload: Workload,
    label: str,
    conc: int | None,
    rate: float | None,
    duration_s: float,
) -> LevelStats:
    spec = loadgen.LoadSpec(
        url=url,
        concurrency=conc,
        rate=rate,
        duration_s=duration_s,
        max_requests=s.max_requests,
        workers=_workers(s),
        timeout_s=s.timeout_s,
        seed=s.seed,
    )
    records, elapsed = loadgen.run(spec, workload)
    return summarize(label, records, elapsed, concurrency=conc, rate=rate)


def _in_process(
    s: BenchSettings, workload: Workload, levels: list[tuple[str, int | None, float | None]]
) -> list[LevelStats]:
    from squeezer.bench.inprocess import run_levels

    runs = asyncio.run(
        run_levels(
            s.target,
            workload,
            [(c, r) for _, c, r in levels],
            s.duration_s,
            s.max_requests,
            s.seed,
        )
    )
    return [
        summarize(label, records, elapsed, concurrency=c, rate=r)
        for (label, c, r), (records, elapsed) in zip(levels, runs, strict=True)
    ]


@contextlib.contextmanager
def noop_server(timeout_s: float = 20.0) -> Iterator[str]:
    """Start ``squeezer.bench.noop`` on a free loopback port; yield its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "squeezer.bench.noop", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the no-op server for the generator's ceiling did not start")
            time.sleep(0.05)
        yield urlunsplit(("http", f"127.0.0.1:{port}", "", "", ""))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


class LevelProgress:
    """A progress bar per level, filled by elapsed time (levels are bounded by time)."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
        )

    def __enter__(self) -> LevelProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    @contextlib.contextmanager
    def level(self, label: str, seconds: float) -> Iterator[None]:
        task = self._progress.add_task(label, total=seconds)
        stop = threading.Event()
        t0 = time.perf_counter()

        def tick() -> None:
            while not stop.wait(0.2):
                self._progress.update(task, completed=min(time.perf_counter() - t0, seconds))

        threading.Thread(target=tick, daemon=True).start()
        try:
            yield
        finally:
            stop.set()
            self._progress.update(task, completed=seconds)
