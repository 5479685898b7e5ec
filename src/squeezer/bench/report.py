"""Benchmark results: per-level statistics, the JSON file, the table and the chart.

The JSON schema is versioned (``SCHEMA_VERSION``) so that ``--compare`` can draw runs
made on other days, by other versions, against other servers, on one chart.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from squeezer.bench.loadgen import Record

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, values_s: Sequence[float]) -> Percentiles | None:
        """Milliseconds; None when there is nothing to measure."""
        if not values_s:
            return None
        ms = np.asarray(values_s, dtype=np.float64) * 1000
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(ms.max()), float(ms.mean()))


@dataclass(frozen=True, slots=True)
class LevelStats:
    """One level of load (a concurrency or a rate) and what it got."""

    label: str
    concurrency: int | None
    offered_rate: float | None
    duration_s: float
    sent: int
    ok: int
    #: Error counts by HTTP status ("0" means no response: connect error or timeout),
    #: 429s included; ``rejected_429`` repeats them apart.
    errors: dict[str, int]
    rejected_429: int
    requests_per_s: float
    items_per_s: float
    chars_per_s: float
    latency_ms: Percentiles | None
    ttft_ms: Percentiles | None = None
    itl_ms: Percentiles | None = None
    tokens_per_s: float | None = None


def summarize(
    label: str,
    records: Sequence[Record],
    elapsed_s: float,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
) -> LevelStats:
    ok = [r for r in records if 200 <= r.status < 300]
    errors = Counter(str(r.status) for r in records if not 200 <= r.status < 300)
    secs = max(elapsed_s, 1e-9)
    generated = sum(r.tokens for r in ok)
    streamed = any(r.ttft_s is not None for r in ok)
    return LevelStats(
        label=label,
        concurrency=concurrency,
        offered_rate=rate,
        duration_s=round(elapsed_s, 3),
        sent=len(records),
        ok=len(ok),
        errors=dict(sorted(errors.items())),
        rejected_429=errors.get("429", 0),
        requests_per_s=len(ok) / secs,
        items_per_s=sum(r.items for r in ok) / secs,
        chars_per_s=sum(r.chars for r in ok) / secs,
        latency_ms=Percentiles.of([r.latency_s for r in ok]),
        ttft_ms=Percentiles.of([r.ttft_s for r in ok if r.ttft_s is not None]),
        itl_ms=Percentiles.of([g for r in ok for g in r.gaps_s]),
        tokens_per_s=generated / secs if streamed else None,
    )


@dataclass(slots=True)
class BenchResult:
    target: str
    route: str
    mode: str
    machine: dict[str, Any]
    workload: dict[str, Any]
    generator: dict[str, Any]
    levels: list[LevelStats] = field(default_factory=list)
    #: The generator alone against a no-op server: what it can send at each level.
    ceiling: list[LevelStats] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def write_json(result: BenchResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2))


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version {version!r}; this squeezer reads {SCHEMA_VERSION}"
        )
    return data


def table(result: BenchResult) -> Any:
    from rich.table import Table

    t = Table(title=f"{result.mode} loop against {result.target}")
    columns = ["level", "sent", "ok", "429", "other errors", "req/s", "items/s", "p50 ms"]
    columns += ["p90 ms", "p99 ms", "max ms"]
    streaming = any(lv.ttft_ms is not None for lv in result.levels)
    if streaming:
        columns += ["TTFT p50", "ITL p50", "tok/s"]
    ceilings = {lv.label: lv for lv in result.ceiling}
    if ceilings:
        columns.append("generator ceiling req/s")
    for c in columns:
        t.add_column(c, justify="right")
    for lv in result.levels:
        lat = lv.latency_ms
        others = sum(v for k, v in lv.errors.items() if k != "429")
        row = [
            lv.label,
            str(lv.sent),
            str(lv.ok),
            str(lv.rejected_429),
            str(others),
            f"{lv.requests_per_s:.1f}",
            f"{lv.items_per_s:.1f}",
        ]
        row += [f"{getattr(lat, k):.1f}" if lat else "-" for k in ("p50", "p90", "p99", "max")]
        if streaming:
            row += [
                f"{lv.ttft_ms.p50:.1f}" if lv.ttft_ms else "-",
                f"{lv.itl_ms.p50:.1f}" if lv.itl_ms else "-",
                f"{lv.tokens_per_s:.1f}" if lv.tokens_per_s is not None else "-",
            ]
        if ceilings:
            ceil = ceilings.get(lv.label)
            row.append(f"{ceil.requests_per_s:.0f}" if ceil else "-")
        t.add_row(*row)
    return t


def plot(runs: Sequence[tuple[str, dict[str, Any]]], path: Path) -> None:
    """Latency (p50 and p99) against achieved throughput, one line per run."""
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError(
            "drawing needs matplotlib: pip install 'squeezer[bench]' (or --no-plot)"
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, data in runs:
        levels = [lv for lv in data["levels"] if lv["latency_ms"]]
        x = [lv["requests_per_s"] for lv in levels]
        p50 = [lv["latency_ms"]["p50"] for lv in levels]
        p99 = [lv["latency_ms"]["p99"] for lv in levels]
        (line,) = ax.plot(x, p50, marker="o", label=f"{name} p50")
        ax.plot(x, p99, marker="x", linestyle="--", color=line.get_color(), label=f"{name} p99")
        for lv, xi, yi in zip(levels, x, p50, strict=True):
            ax.annotate(
                lv["label"], (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xlabel("achieved requests / s")
    ax.set_ylabel("latency, ms")
    ax.set_yscale("log")
    ax.set_title("latency vs throughput")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
