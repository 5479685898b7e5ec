"""``squeezer profile``: latency and peak memory over sequence lengths x batch sizes.

For each backend, every (batch, length) shape runs twice: padding-free (every row
``length`` real tokens) and padded (rows of 1/4 to all of ``length`` real tokens,
padded to it, as real batches are). Peak memory is the process RSS sampled every
millisecond during the forward pass on CPU, or the allocator's peak on a GPU. The
recommendation is the largest ``--max-batch-tokens`` whose batch stays under a latency
target and a memory budget: a value ``squeezer serve`` takes as it is.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from squeezer.backends import Backend, load_backend
from squeezer.backends.device import resolve_device, resolve_dtype
from squeezer.backends.heap import trim_heap
from squeezer.models import locate, read_folder
from squeezer.tasks import EncoderItem, EncoderRunner, TextTokenizer, TokenVectorsHead
from squeezer.types import TokenizedInput

SCHEMA_VERSION = 1
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    path: str
    backends: tuple[str, ...] = ("torch",)
    seq_lengths: tuple[int, ...] = (16, 32, 64, 128, 256)
    batch_sizes: tuple[int, ...] = (1, 4, 16, 32)
    device: str = "auto"
    dtype: str = "auto"
    repeats: int = 5
    warmup: int = 1
    target_latency_ms: float = 50.0
    memory_budget_mb: float | None = None
    seed: int = 0


@dataclass(frozen=True, slots=True)
class ProfilePoint:
    backend: str
    padded: bool
    batch: int
    seq_len: int
    real_tokens: int
    padded_tokens: int
    latency_p50_ms: float
    latency_min_ms: float
    #: Growth over the memory in use before the call (RSS on CPU, allocated on GPU).
    peak_mem_mb: float
    #: The process's (or device's) absolute peak during the call.
    peak_total_mb: float


@dataclass(frozen=True, slots=True)
class Recommendation:
    backend: str
    max_batch_tokens: int
    why: str

    @property
    def flag(self) -> str:
        return f"--max-batch-tokens {self.max_batch_tokens}"


@dataclass(slots=True)
class ProfileResult:
    settings: ProfileSettings
    machine: dict[str, Any]
    points: list[ProfilePoint] = field(default_factory=list)
    recommendations: list[Recommendation] = field(default_factory=list)
    #: GPU only: the largest padding-free batch per sequence length that fit.
    largest_batches: dict[str, dict[int, int]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


class _PeakSampler:
    """RSS sampled from a thread every millisecond while a forward pass runs."""

    def __init__(self) -> None:
        self.base = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _token_pool(tokenizer: TextTokenizer, n: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Real token ids of real English text (Python's pydoc topics), at least ``n`` long."""
    from pydoc_data.topics import topics

    ids = tokenizer.pieces(" ".join(list(topics.values())[:40]))
    while len(ids) < n:
        ids = ids + ids
    return np.asarray(ids, dtype=np.int64)


def _batch(
    pool: np.ndarray[Any, np.dtype[np.int64]], batch: int, seq_len: int, padded: bool, rng: Any
) -> list[EncoderItem]:
    head = TokenVectorsHead()
    items = []
    for row in range(batch):
        n = rng.randint(max(1, seq_len // 4), seq_len) if padded and row else seq_len
        start = rng.randint(0, len(pool) - n)
        items.append(EncoderItem(TokenizedInput(ids=pool[start : start + n]), head))
    return items


def _measure(
    backend: Backend, runner: EncoderRunner, items: list[EncoderItem], s: ProfileSettings
) -> tuple[list[float], float, float]:
    import torch

    arrays = runner.collate(items)
    cuda = backend.device.startswith("cuda")
    for _ in range(s.warmup):
        backend.forward(arrays, ("last_hidden_state",))
    times = []
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    # Freed heap back to the OS, so that a pass reusing memory an earlier pass freed
    # still shows its growth in RSS (glibc keeps freed arenas otherwise).
    trim_heap()
    with _PeakSampler() as sampler:
        for _ in range(s.repeats):
            t0 = time.perf_counter()
            backend.forward(arrays, ("last_hidden_state",))
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        return times, peak - base, peak
    return times, sampler.peak - sampler.base, sampler.peak


def run_profile(s: ProfileSettings, progress: bool = True) -> ProfileResult:
    from rich.progress import Progress

    folder = read_folder(locate(s.path))
    tokenizer = TextTokenizer(folder.tokenizer_file, folder.max_input_length)
    device = resolve_device(s.device)
    dtype = resolve_dtype(s.dtype, device)
    lengths = [n for n in s.seq_lengths if n <= folder.max_input_length]
    pool = _token_pool(tokenizer, max(lengths or [1]) * 4)
    runner = EncoderRunner(token_type_ids=folder.token_type_ids)
    result = ProfileResult(s, _machine(device, dtype))
    shapes = [(b, n, p) for n in lengths for b in s.batch_sizes for p in (False, True)]
    with Progress(disable=not progress, transient=True) as bar:
        for name in s.backends:
            backend = load_backend(name, folder.path, device=device, dtype=dtype)
            task = bar.add_task(f"profiling {name}", total=len(shapes))
            rng = random.Random(s.seed)
            for batch, seq_len, padded in shapes:
                items = _batch(pool, batch, seq_len, padded, rng)
                times, grew, total = _measure(backend, runner, items, s)
                result.points.append(
                    ProfilePoint(
                        backend=name,
                        padded=padded,
                        batch=batch,
                        seq_len=seq_len,
                        real_tokens=sum(it.num_tokens for it in items),
                        padded_tokens=batch * seq_len,
                        latency_p50_ms=float(np.median(times)),
                        latency_min_ms=float(min(times)),
                        peak_mem_mb=round(grew, 2),
                        peak_total_mb=round(total, 2),
                    )
                )
                bar.advance(task)
            if device.startswith("cuda"):
                result.largest_batches[name] = {
                    n: largest_batch_on_gpu(backend, runner, pool, n) for n in lengths
                }
            backend.close()
    result.recommendations = [
        recommend(result.points, name, s.target_latency_ms, s.memory_budget_mb)
        for name in s.backends
    ]
    return result


def largest_batch_on_gpu(
    backend: Backend,
    runner: EncoderRunner,
    pool: np.ndarray[Any, np.dtype[np.int64]],
    seq_len: int,
    limit: int = 1 << 16,
) -> int:
    """Double the batch until CUDA runs out of memory, then bisect: measured, not guessed."""
    import torch

    def fits(batch: int) -> bool:
        items = _batch(pool, batch, seq_len, False, random.Random(0))
        try:
            backend.forward(runner.collate(items), ("last_hidden_state",))
            torch.cuda.synchronize()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    good, bad = 0, None
    batch = 1
    while batch <= limit and fits(batch):
        good, batch = batch, batch * 2
    bad = batch if batch <= limit else None
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def recommend(
    points: Sequence[ProfilePoint],
    backend: str,
    target_latency_ms: float,
    memory_budget_mb: float | None,
) -> Recommendation:
    """The most padded tokens per batch such that every shape up to it meets the latency
    target and the memory budget."""
    mine = [p for p in points if p.backend == backend and not p.padded]
    if not mine:
        raise ValueError(f"no padding-free points for backend {backend!r}")
    budget = memory_budget_mb if memory_budget_mb is not None else float("inf")

    def meets(p: ProfilePoint) -> bool:
        return p.latency_p50_ms <= target_latency_ms and p.peak_mem_mb <= budget

    # The batcher may form any shape under the bound (1 x 256 as well as 16 x 16), so a
    # bound T is safe only when every measured shape of at most T tokens meets both.
    fitting = [p for p in mine if all(meets(q) for q in mine if q.padded_tokens <= p.padded_tokens)]
    if not fitting:
        small = min(mine, key=lambda p: p.padded_tokens)
        return Recommendation(
            backend,
            small.padded_tokens,
            f"no shape met p50 <= {target_latency_ms:g} ms"
            + (f" and +{budget:g} MB" if memory_budget_mb is not None else "")
            + f"; the smallest measured ({small.batch}x{small.seq_len}) takes "
            f"{small.latency_p50_ms:.1f} ms",
        )
    best = max(fitting, key=lambda p: (p.padded_tokens, -p.latency_p50_ms))
    memory = f", peak +{best.peak_mem_mb:.0f} MB" + (
        f" <= {budget:g} MB" if memory_budget_mb is not None else ""
    )
    return Recommendation(
        backend,
        best.padded_tokens,
        f"{best.batch}x{best.seq_len} tokens: p50 {best.latency_p50_ms:.1f} ms <= "
        f"{target_latency_ms:g} ms target{memory}",
    )


def _machine(device: str, dtype: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "dtype": dtype,
        "torch": torch.__version__,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_outputs(result: ProfileResult, prefix: Path) -> list[Path]:
    """PREFIX.csv, PREFIX.json, PREFIX-memory.png and PREFIX-latency.png."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = prefix.with_suffix(".csv"), prefix.with_suffix(".json")
    with csv_path.open("w", newline="") as f:
        fields = list(ProfilePoint.__dataclass_fields__)
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(asdict(p) for p in result.points)
    json_path.write_text(json.dumps(asdict(result), indent=2))
    return [csv_path, json_path, *_plots(result, prefix)]


def _plots(result: ProfileResult, prefix: Path) -> list[Path]:
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError("plots need matplotlib: pip install 'squeezer[bench]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    memory = prefix.parent / f"{prefix.name}-memory.png"
    latency = prefix.parent / f"{prefix.name}-latency.png"
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in result.settings.backends:
        for batch in result.settings.batch_sizes:
            pts = [p for p in result.points if p.backend == name and p.batch == batch]
            pts = sorted((p for p in pts if not p.padded), key=lambda p: p.seq_len)
            if pts:
                ax.plot(
                    [p.seq_len for p in pts],
                    [p.peak_mem_mb for p in pts],
                    marker="o",
                    label=f"{name} batch {batch}",
                )
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("peak memory growth, MB")
    ax.set_title("peak memory vs sequence length")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(memory, dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in result.settings.backends:
        for padded in (False, True):
            pts = sorted(
                (p for p in result.points if p.backend == name and p.padded == padded),
                key=lambda p: p.padded_tokens,
            )
            ax.scatter(
                [p.padded_tokens for p in pts],
                [p.latency_p50_ms for p in pts],
                label=f"{name} {'padded' if padded else 'padding-free'}",
                marker="x" if padded else "o",
            )
    ax.axhline(result.settings.target_latency_ms, linestyle=":", color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens per batch (batch x length)")
    ax.set_ylabel("latency p50, ms")
    ax.set_title("latency vs tokens per batch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(latency, dpi=120)
    plt.close(fig)
    return [memory, latency]


def table(result: ProfileResult) -> Any:
    from rich.table import Table

    t = Table(title=f"profile of {result.settings.path} on {result.machine['device']}")
    for col in ("backend", "batch", "length", "inputs", "p50 ms", "min ms", "peak +MB"):
        t.add_column(col, justify="right")
    for p in result.points:
        t.add_row(
            p.backend,
            str(p.batch),
            str(p.seq_len),
            "padded" if p.padded else "full",
            f"{p.latency_p50_ms:.1f}",
            f"{p.latency_min_ms:.1f}",
            f"{p.peak_mem_mb:.1f}",
        )
    return t
