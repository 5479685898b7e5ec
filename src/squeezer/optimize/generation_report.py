"""What a generation search found, for people: ``report.md``, ``report.png`` and
``results.json`` beside the artifact.

Every candidate has a row, with its gate verdict (passed, failed, or why it was not
measured: unavailable here, skipped, failed to load) and its choice verdict. Speeds are
also given as ratios to fp32 torch measured in the same run, because absolute figures
on a shared machine drift from run to run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from squeezer.optimize.generation_search import (
    GenerationCandidateResult,
    GenerationOptimizeResult,
)
from squeezer.optimize.select import REFERENCE, Status, passes

SCHEMA_VERSION = 1


def gate(result: GenerationOptimizeResult, r: GenerationCandidateResult) -> str:
    """``passed`` / ``failed`` on the selection split, else why it has no verdict."""
    if r.status is not Status.MEASURED:
        return f"{r.status.value}: {r.reason}"
    s = result.settings
    return "passed" if passes(r, s.max_loss, s.margin) else "failed"


def _reference(result: GenerationOptimizeResult) -> GenerationCandidateResult | None:
    return next((r for r in result.results if r.name == REFERENCE and r.speed), None)


def _ratio(r: GenerationCandidateResult, ref: GenerationCandidateResult | None) -> float | None:
    if r.speed is None or ref is None or ref.speed is None or not ref.speed.throughput:
        return None
    return r.speed.throughput / ref.speed.throughput


def _row(result: GenerationOptimizeResult, r: GenerationCandidateResult) -> dict[str, Any]:
    ratio = _ratio(r, _reference(result))
    return {
        "candidate": r.name,
        "runtime": r.candidate.runtime,
        "precision": r.candidate.precision,
        "variant": r.candidate.variant,
        "options": dict(r.candidate.options),
        "requires": [n.name for n in r.candidate.needs],
        "status": r.status.value,
        "reason": r.reason,
        "gate": gate(result, r),
        "verdict": r.verdict,
        "load_s": round(r.load_s, 2),
        "selection": r.selection.as_dict() if r.selection else None,
        "report": r.report.as_dict() if r.report else None,
        "speed": r.speed.as_dict() if r.speed else None,
        "speedup": round(ratio, 3) if ratio is not None else None,
    }


def to_json(result: GenerationOptimizeResult) -> dict[str, Any]:
    s, m = result.settings, result.manifest
    return {
        "schema_version": SCHEMA_VERSION,
        "model": str(result.folder.path),
        "task": "generate",
        "gguf": str(result.gguf) if result.gguf else None,
        "loss": "mean KL(fp32 || candidate), teacher-forced along fp32's greedy path",
        "max_loss": s.max_loss,
        "margin": s.margin,
        "objective": s.objective.value,
        "new_tokens": s.new_tokens,
        "max_num_seqs": s.max_num_seqs,
        "splits": result.splits.sizes(),
        "prompt_tokens": result.prompt_tokens,
        "winner": m.candidate,
        "within_budget": m.within_budget,
        "hardware": m.hardware.model_dump(),
        "candidates": [_row(result, r) for r in result.results],
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(result: GenerationOptimizeResult) -> str:
    streams = result.settings.max_num_seqs
    lines = [
        "| candidate | gate | mean KL (selection) | mean KL (report) | top-1 (report) "
        f"| greedy prefix (report) | tok/s 1 stream | tok/s {streams} streams "
        "| x torch fp32 | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ref = _reference(result)
    for r in result.results:
        sel, rep, sp = r.selection, r.report, r.speed
        lines.append(
            f"| {r.name} | {gate(result, r) if r.status is Status.MEASURED else '-'} "
            f"| {_fmt(sel.loss if sel else None, '.3g')} "
            f"| {_fmt(rep.loss if rep else None, '.3g')} "
            f"| {_fmt(rep.top1 if rep else None, '.3f')} "
            f"| {_fmt(rep.prefix_agreement if rep else None, '.3f')} "
            f"| {_fmt(sp.one_stream if sp else None, '.1f')} "
            f"| {_fmt(sp.throughput if sp else None, '.1f')} "
            f"| {_fmt(_ratio(r, ref), '.2f')} | {r.verdict} |"
        )
    return "\n".join(lines)


def markdown(result: GenerationOptimizeResult) -> str:
    s, m = result.settings, result.manifest
    sizes = result.splits.sizes()
    lines = [
        f"# squeezer optimize: {s.model} (generate)",
        "",
        f"- Winner: **{m.candidate}** ({m.runtime} {m.runtime_version}, {m.precision})"
        + ("" if m.within_budget else " - a fallback: no optimized candidate met the budget"),
        f"- Objective: {s.objective.value} (aggregate decode tok/s at {s.max_num_seqs} "
        "streams, or one stream's ms per token).",
        f"- Budget: mean KL(fp32 || candidate) <= {s.max_loss:g} nats per token, "
        f"teacher-forced along fp32's {s.new_tokens} greedy tokens per prompt; the gate "
        f"asks <= {s.margin:g} x budget on the selection split.",
        f"- Prompts: {result.prompt_tokens.get('selection', 0):.0f} of the selection split's "
        f"{sizes['selection']} texts, {result.prompt_tokens.get('report', 0):.0f} of the "
        f"report split's {sizes['report']} (mean {result.prompt_tokens.get('mean', 0):.0f} "
        "tokens, chat-templated when the model has a template); report figures come from "
        "prompts nothing was chosen on.",
        f"- GGUF: {result.gguf or 'none found'}.",
        f"- Machine: {m.hardware.cpu}, {m.hardware.cores} threads, flags "
        f"{' '.join(m.hardware.flags) or 'none of note'}.",
        "",
        "## Every candidate",
        "",
        table(result),
        "",
        "![speed and accuracy](report.png)",
    ]
    return "\n".join(lines) + "\n"


def plot(result: GenerationOptimizeResult, path: Path) -> bool:
    """Tokens/s per candidate at both stream counts, and speed against mean KL.
    Returns False, drawing nothing, when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in result.results if r.speed is not None and r.selection is not None]
    s = result.settings
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(13, 5))
    names = [r.name for r in measured]
    many = [r.speed.throughput for r in measured if r.speed]
    one = [r.speed.one_stream for r in measured if r.speed]
    colors = [
        "tab:green"
        if r.verdict.startswith("chosen")
        else "tab:red"
        if gate(result, r) == "failed"
        else "tab:blue"
        for r in measured
    ]
    ys = list(range(len(measured)))
    bars.barh(
        [y - 0.2 for y in ys], many, height=0.4, color=colors, label=f"{s.max_num_seqs} streams"
    )
    bars.barh([y + 0.2 for y in ys], one, height=0.4, color=colors, alpha=0.45, label="1 stream")
    bars.set_yticks(ys, names)
    bars.invert_yaxis()
    bars.set_xlabel("decode tokens/s")
    bars.set_title("speed (green: chosen, red: failed the gate)")
    bars.legend()
    for r, speed in zip(measured, many, strict=True):
        assert r.selection is not None
        loss = max(r.selection.loss, 1e-7)
        color = "tab:red" if gate(result, r) == "failed" else "tab:blue"
        scatter.scatter(loss, speed, color=color)
        scatter.annotate(
            r.name, (loss, speed), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    scatter.axvline(s.max_loss, color="gray", linestyle="--", label="budget")
    scatter.axvline(s.margin * s.max_loss, color="gray", linestyle=":", label="gate (margin)")
    scatter.set_xscale("log")
    scatter.set_xlabel("mean KL(fp32 || candidate), selection split (log; 0 drawn at 1e-7)")
    scatter.set_ylabel(f"tokens/s at {s.max_num_seqs} streams")
    scatter.legend()
    scatter.set_title("speed against accuracy loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(result: GenerationOptimizeResult) -> list[Path]:
    out = result.settings.out
    written = [out / "report.md", out / "results.json"]
    (out / "report.md").write_text(markdown(result), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(to_json(result), indent=2) + "\n")
    if plot(result, out / "report.png"):
        written.append(out / "report.png")
    return written
