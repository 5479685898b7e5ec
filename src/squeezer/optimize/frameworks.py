"""The frameworks side by side: each one's best recipe for this model on this machine.

People ask "TensorFlow, PyTorch or JAX?" and get claims. The search has measured every
recipe it could build, so it can answer for the user's model and machine instead: per
framework, the fastest recipe inside the accuracy budget (or, when none is, the most
accurate one it measured, marked as over budget), with its speed, its one-sentence
latency and its accuracy on the report split. A framework that is not installed or
cannot run here is listed with the reason, never left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squeezer.optimize.select import CandidateResult, Objective, Status, passes, score

#: (label, runtime, what picks its candidates) in the order the report lists them.
FRAMEWORKS: tuple[tuple[str, str, str], ...] = (
    ("PyTorch eager", "torch", "eager"),
    ("PyTorch compiled", "torch", "compile"),
    ("ONNX Runtime", "onnxruntime", ""),
    ("OpenVINO", "openvino", ""),
    ("CTranslate2", "ctranslate2", ""),
    ("JAX/XLA", "jax", ""),
    ("LiteRT", "litert", ""),
)


@dataclass(frozen=True, slots=True)
class FrameworkRow:
    framework: str
    #: The candidate shown (None when nothing was measured).
    best: CandidateResult | None
    within_budget: bool
    #: Why there is no figure, or what the figure means ("over budget").
    note: str = ""

    def as_dict(self, reference_speed: float) -> dict[str, Any]:
        b = self.best
        return {
            "framework": self.framework,
            "recipe": b.name if b else None,
            "within_budget": self.within_budget,
            "throughput": b.speed.throughput if b and b.speed else None,
            "speedup": (
                round(b.speed.throughput / reference_speed, 3)
                if b and b.speed and reference_speed
                else None
            ),
            "single_p50_ms": b.speed.single_p50_ms if b and b.speed else None,
            "report_min_cosine": b.report.min_cosine if b and b.report else None,
            "report_agreement": b.report.agreement if b and b.report else None,
            "report_loss": b.report.loss if b and b.report else None,
            "note": self.note,
        }


def _belongs(r: CandidateResult, runtime: str, kind: str) -> bool:
    if r.candidate.runtime != runtime:
        return False
    if kind == "compile":
        return "compile" in r.candidate.variant
    if kind == "eager":
        return "compile" not in r.candidate.variant
    return True


def framework_rows(
    results: Sequence[CandidateResult],
    unavailable: dict[str, str],
    max_loss: float,
    margin: float,
    objective: Objective,
) -> list[FrameworkRow]:
    rows = []
    for label, runtime, kind in FRAMEWORKS:
        mine = [r for r in results if _belongs(r, runtime, kind)]
        measured = [r for r in mine if r.status is Status.MEASURED and r.speed and r.report]
        passing = [r for r in measured if passes(r, max_loss, margin)]
        if passing:
            best = max(passing, key=lambda r: score(r, objective))
            rows.append(FrameworkRow(label, best, True))
        elif measured:
            closest = min(measured, key=lambda r: r.selection.loss if r.selection else 1.0)
            rows.append(FrameworkRow(label, closest, False, "no recipe within the budget"))
        elif runtime in unavailable:
            rows.append(FrameworkRow(label, None, False, f"not installed: {unavailable[runtime]}"))
        elif mine:
            why = "; ".join(f"{r.name}: {r.status.value} ({r.reason})" for r in mine)
            rows.append(FrameworkRow(label, None, False, why))
        else:
            rows.append(FrameworkRow(label, None, False, "not in this search (--only)"))
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(rows: Sequence[FrameworkRow], reference_speed: float) -> str:
    lines = [
        "| framework | best recipe | sentences/s (batch 32) | x PyTorch eager fp32 "
        "| one sentence p50 ms | min cosine (report) | agreement (report) | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        d = row.as_dict(reference_speed)
        note = row.note or ("within the budget" if row.within_budget else "")
        lines.append(
            f"| {row.framework} | {d['recipe'] or '-'} | {_fmt(d['throughput'], '.1f')} "
            f"| {_fmt(d['speedup'], '.2f')} | {_fmt(d['single_p50_ms'], '.2f')} "
            f"| {_fmt(d['report_min_cosine'], '.4f')} | {_fmt(d['report_agreement'], '.3f')} "
            f"| {note} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[FrameworkRow], path: Path, title: str) -> bool:
    """Throughput and one-sentence latency of each framework's best recipe (hatched:
    over budget). Returns False, drawing nothing, without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.best is not None and r.best.speed is not None]
    names = [f"{r.framework}\n{r.best.name if r.best else ''}" for r in shown]
    speeds = [r.best.speed.throughput for r in shown if r.best and r.best.speed]
    latency = [r.best.speed.single_p50_ms for r in shown if r.best and r.best.speed]
    hatch = ["" if r.within_budget else "//" for r in shown]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.6 * len(shown) + 2))
    for axis, values, label in (
        (left, speeds, "sentences/s, batches of 32 (higher is better)"),
        (right, latency, "one short sentence, p50 ms (lower is better)"),
    ):
        bars = axis.barh(names, values, color="tab:blue")
        for bar, h in zip(bars, hatch, strict=True):
            bar.set_hatch(h)
        axis.invert_yaxis()
        axis.set_xlabel(label)
    right.set_yticklabels([])
    fig.suptitle(f"{title} (hatched: no recipe within the budget)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
