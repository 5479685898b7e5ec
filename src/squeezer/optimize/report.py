"""What a search found, for people: ``report.md``, ``report.png``, ``frameworks.png``
and ``results.json``.

The first table compares the frameworks (each one's best recipe); then every candidate
appears, with the reason it lost (over budget, slower, skipped,
failed). Speeds are also given as ratios to the fp32 torch reference measured in the
same run, because absolute figures on a shared machine drift from run to run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from squeezer.optimize import frameworks
from squeezer.optimize.search import OptimizeResult
from squeezer.optimize.select import REFERENCE, CandidateResult, Status

SCHEMA_VERSION = 2


def _reference_speed(result: OptimizeResult) -> float:
    for r in result.results:
        if r.name == REFERENCE and r.speed is not None:
            return r.speed.throughput
    return 0.0


def _row(r: CandidateResult, ref: float) -> dict[str, Any]:
    return {
        "candidate": r.name,
        "runtime": r.candidate.runtime,
        "precision": r.candidate.precision,
        "variant": r.candidate.variant,
        "status": r.status.value,
        "reason": r.reason,
        "verdict": r.verdict,
        "build_s": round(r.build_s, 2),
        "selection": r.selection.as_dict() if r.selection else None,
        "report": r.report.as_dict() if r.report else None,
        "speed": r.speed.as_dict() if r.speed else None,
        "speedup": round(r.speed.throughput / ref, 3) if r.speed and ref else None,
        "build": r.build.details if r.build else None,
    }


def framework_rows(result: OptimizeResult) -> list[frameworks.FrameworkRow]:
    s = result.settings
    return frameworks.framework_rows(
        result.results, result.unavailable, s.max_loss, s.margin, s.objective
    )


def to_json(result: OptimizeResult) -> dict[str, Any]:
    s, m = result.settings, result.manifest
    ref = _reference_speed(result)
    return {
        "schema_version": SCHEMA_VERSION,
        "model": str(result.folder.path),
        "task": result.task.value,
        "max_loss": s.max_loss,
        "margin": s.margin,
        "objective": s.objective.value,
        "splits": result.splits.sizes(),
        "winner": m.candidate,
        "within_budget": m.within_budget,
        "hardware": m.hardware.model_dump(),
        "not_tried": result.unavailable,
        "frameworks": [row.as_dict(ref) for row in framework_rows(result)],
        "candidates": [_row(r, ref) for r in result.results],
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(result: OptimizeResult) -> str:
    ref = _reference_speed(result)
    lines = [
        "| candidate | loss (selection) | min / mean cosine (report) | agreement (report) "
        "| sentences/s (batch 32) | x torch fp32 | one sentence p50 ms | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result.results:
        sel, rep, sp = r.selection, r.report, r.speed
        lines.append(
            f"| {r.name} | {_fmt(sel.loss if sel else None, '.4g')} "
            f"| {_fmt(rep.min_cosine if rep else None, '.4f')} / "
            f"{_fmt(rep.mean_cosine if rep else None, '.4f')} "
            f"| {_fmt(rep.agreement if rep else None, '.3f')} "
            f"| {_fmt(sp.throughput if sp else None, '.1f')} "
            f"| {_fmt(sp.throughput / ref if sp and ref else None, '.2f')} "
            f"| {_fmt(sp.single_p50_ms if sp else None, '.2f')} | {r.verdict} |"
        )
    return "\n".join(lines)


def markdown(result: OptimizeResult) -> str:
    s, m = result.settings, result.manifest
    measure = "1 - min cosine" if result.task.value == "embed" else "1 - top-1 agreement"
    sizes = result.splits.sizes()
    head = [
        f"# squeezer optimize: {s.model} ({result.task.value})",
        "",
        f"- Winner: **{m.candidate}** ({m.runtime} {m.runtime_version}, {m.precision})"
        + ("" if m.within_budget else " - a fallback: no optimized candidate met the budget"),
        f"- Objective: {s.objective.value} (batch 32 sentences/s, or one short sentence's "
        "p50 latency).",
        f"- Budget: loss = {measure} <= {s.max_loss:g}; the gate asks <= {s.margin:g} x budget "
        "on the selection split.",
        f"- Splits (sentences): calibration {sizes['calibration']}, selection "
        f"{sizes['selection']}, report {sizes['report']}; report figures come from text "
        "nothing was chosen on.",
        f"- Machine: {m.hardware.cpu}, {m.hardware.cores} threads, flags "
        f"{' '.join(m.hardware.flags) or 'none of note'}.",
        "",
        "## Frameworks",
        "",
        "Each framework's fastest recipe within the budget (or, when none is, its most "
        "accurate one).",
        "",
        frameworks.markdown_table(framework_rows(result), _reference_speed(result)),
        "",
        "![frameworks](frameworks.png)",
        "",
        "## Every candidate",
        "",
        table(result),
        "",
    ]
    if result.unavailable:
        head += ["Not tried here:", ""]
        head += [f"- {name}: {why}" for name, why in result.unavailable.items()]
        head.append("")
    skipped = [r for r in result.results if r.status is not Status.MEASURED]
    if skipped:
        head += ["Not measured:", ""]
        head += [f"- {r.name}: {r.status.value}: {r.reason}" for r in skipped]
        head.append("")
    head.append("![speed and accuracy](report.png)")
    return "\n".join(head) + "\n"


def plot(result: OptimizeResult, path: Path) -> bool:
    """Throughput per candidate (coloured by the verdict) and speed against loss.

    Returns False, drawing nothing, when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in result.results if r.speed is not None and r.selection is not None]
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(13, 5))
    colors = [
        "tab:green"
        if r.verdict.startswith("chosen")
        else "tab:red"
        if r.verdict.startswith("over")
        else "tab:blue"
        for r in measured
    ]
    names = [r.name for r in measured]
    speeds = [r.speed.throughput for r in measured if r.speed]
    bars.barh(names, speeds, color=colors)
    bars.invert_yaxis()
    bars.set_xlabel("sentences/s, batches of 32, tokenization included")
    bars.set_title("speed (green: chosen, red: over budget)")
    for r, speed in zip(measured, speeds, strict=True):
        assert r.selection is not None
        loss = max(r.selection.loss, 1e-7)
        scatter.scatter(
            loss, speed, color="tab:red" if r.verdict.startswith("over") else "tab:blue"
        )
        scatter.annotate(
            r.name, (loss, speed), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    s = result.settings
    scatter.axvline(s.max_loss, color="gray", linestyle="--", label="budget")
    scatter.axvline(s.margin * s.max_loss, color="gray", linestyle=":", label="gate (margin)")
    scatter.set_xscale("log")
    scatter.set_xlabel("loss on the selection split (log)")
    scatter.set_ylabel("sentences/s")
    scatter.legend()
    scatter.set_title("speed against accuracy loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(result: OptimizeResult) -> list[Path]:
    out = result.settings.out
    written = [out / "report.md", out / "results.json"]
    (out / "report.md").write_text(markdown(result), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(to_json(result), indent=2) + "\n")
    if plot(result, out / "report.png"):
        written.append(out / "report.png")
    title = f"{Path(result.settings.model).name} on {result.manifest.hardware.cpu}"
    if frameworks.plot(framework_rows(result), out / "frameworks.png", title):
        written.append(out / "frameworks.png")
    return written
