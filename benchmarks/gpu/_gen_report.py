"""Generation results as rows read against the bare decode loop: table, targets, chart.

The ceiling is the bare loop (``_gen_jobs.bare``): the same model's decode step with no
``generate`` and no server, compiled with CUDA graphs, at a few batch sizes. Every
result with N streams is divided by the loop's tokens/s at batch N. Between the batch
sizes measured, the loop's ms/step is interpolated linearly in the batch size (a decode
step reads the weights once plus a per-row share of cache and activations, so its cost
grows about linearly with the batch); the row says when a ratio rests on that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SQUEEZER = "squeezer (HTTP, streamed chat)"
BARE = "bare decode loop (ceiling)"
#: Issue 14's targets on the H100: reported, never asserted.
TARGET_ONE_STREAM = 1_000.0
TARGET_256 = 30_000.0
#: In-process baselines: (key in results["inprocess"], label).
BASELINES = (
    ("hf-generate", "HF generate, eager"),
    ("hf-static", "HF generate, static cache + compile"),
    ("hf-batch", "HF generate, static batch (left padded)"),
    ("generate-batch", "transformers generate_batch (continuous)"),
)


def bare_at(results: dict[str, Any], streams: int) -> tuple[float | None, str]:
    """The bare loop's tokens/s at ``streams`` rows, and how it was had: measured, or
    interpolated (linear ms/step between two batch sizes); None outside them (a step's
    cost is not extrapolated)."""
    measured = {
        int(b): r["ms_per_step"] for b, r in results.get("bare", {}).get("batches", {}).items()
    }
    if not measured:
        return None, "not measured"
    if streams in measured:
        return streams * 1000 / measured[streams], "measured"
    sizes = sorted(measured)
    below = [b for b in sizes if b < streams]
    above = [b for b in sizes if b > streams]
    if below and above:
        lo, hi = below[-1], above[0]
        ms = measured[lo] + (measured[hi] - measured[lo]) * (streams - lo) / (hi - lo)
        return streams * 1000 / ms, f"interpolated {lo}-{hi}"
    return None, f"outside the batches measured ({', '.join(map(str, sizes))})"


def _ratio(value: float | None, top: float | None) -> float | None:
    return value / top if value is not None and top else None


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per measured figure, each with its ratio to the bare loop."""
    out: list[dict[str, Any]] = []
    bare = results.get("bare", {})
    for batch, rec in sorted(bare.get("batches", {}).items(), key=lambda kv: int(kv[0])):
        n = int(batch)
        note = "CUDA graphs" if bare.get("compiled") else "eager"
        note += f", cache {bare.get('cache_len')}, {rec['ms_per_step']:.2f} ms/step"
        out.append(
            {
                "system": BARE,
                "streams": n,
                "tokens_per_s": rec["tokens_per_s"],
                "per_stream_tokens_per_s": rec["tokens_per_s"] / n,
                "ms_per_step": rec["ms_per_step"],
                "ceiling": True,
                "note": note,
            }
        )
    inprocess = results.get("inprocess", {})
    for key, label in BASELINES:
        rec = inprocess.get(key)
        if not rec:
            continue
        n = int(rec.get("streams", 1))
        note = ""
        if key == "hf-static":
            compile_s = rec.get("compile_s")
            note = f"compile {compile_s:.0f} s (excluded)" if compile_s else rec.get("note", "")
        elif key == "generate-batch":
            note = f"first call {rec.get('first_call_s', 0):.0f} s (excluded)"
        out.append(
            {
                "system": label,
                "streams": n,
                "tokens_per_s": rec["tokens_per_s"],
                "per_stream_tokens_per_s": rec["tokens_per_s"] / n,
                "note": note,
            }
        )
    for c, rec in sorted(
        results.get("squeezer", {}).get("levels", {}).items(), key=lambda kv: int(kv[0])
    ):
        server = rec.get("server") or {}
        note = ""
        if server.get("mean_step_ms") is not None:
            per_step = server.get("tokens_per_step", 0)
            note = f"server step {server['mean_step_ms']:.2f} ms, {per_step:.0f} tok/step"
        if rec.get("token_count_ratio") is not None and rec["token_count_ratio"] < 0.95:
            note += f"; only {rec['token_count_ratio']:.0%} of the tokens streamed as events"
        out.append(
            {
                "system": SQUEEZER,
                "streams": int(c),
                "tokens_per_s": rec.get("tokens_per_s"),
                "per_stream_tokens_per_s": rec.get("per_stream_tokens_per_s"),
                "ttft_p50_ms": rec.get("ttft_p50_ms"),
                "ttft_p99_ms": rec.get("ttft_p99_ms"),
                "itl_p50_ms": rec.get("itl_p50_ms"),
                "itl_p99_ms": rec.get("itl_p99_ms"),
                "errors": rec.get("errors"),
                "note": note.strip("; "),
            }
        )
    for row in out:
        if row.get("ceiling"):
            continue
        top, how = bare_at(results, row["streams"])
        row["vs_bare"] = _ratio(row["tokens_per_s"], top)
        row["bare_tokens_per_s"] = top
        row["bare_how"] = how
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's two targets on squeezer's HTTP figures, each with its ratio to the
    bare loop at the same number of streams (None: not measured in this run)."""
    levels = results.get("squeezer", {}).get("levels", {})
    out = []
    for what, streams, goal in (
        ("one stream: tok/s", 1, TARGET_ONE_STREAM),
        ("256 streams: aggregate tok/s", 256, TARGET_256),
    ):
        value = (levels.get(str(streams)) or {}).get("tokens_per_s")
        top, how = bare_at(results, streams)
        out.append(
            {
                "target": what,
                "streams": streams,
                "value": value,
                "goal": f">= {goal:g}",
                "met": value is not None and value >= goal,
                "vs_bare": _ratio(value, top),
                "bare_tokens_per_s": top,
                "bare_how": how,
                "goal_vs_bare": _ratio(goal, top),
            }
        )
    return out


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pair(a: float | None, b: float | None, digits: int = 1) -> str:
    return "-" if a is None else f"{_num(a, digits)} / {_num(b, digits)}"


def print_table(console: Console, results: dict[str, Any]) -> None:
    machine = results.get("machine", {})
    model = results.get("model", {})
    title = (
        f"generation on {machine.get('gpu') or machine.get('device', '?')}: "
        f"{model.get('layers', '?')}-layer Llama ({model.get('params', 0) / 1e6:.0f}M params, "
        f"random weights, {model.get('dtype', '?')}), "
        f"{results.get('settings', {}).get('new_tokens')} new tokens per request"
    )
    t = Table(title=title)
    cols = ["system", "streams", "tok/s", "tok/s per stream", "TTFT p50/p99 ms", "ITL p50/p99 ms"]
    cols += ["errors", "vs bare loop", "note"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("system", "note") else "right")
    for r in rows(results):
        vs = "ceiling" if r.get("ceiling") else _num(r.get("vs_bare"), 2)
        if str(r.get("bare_how")).startswith("interpolated"):
            vs += "*"
        t.add_row(
            r["system"],
            str(r["streams"]),
            _num(r["tokens_per_s"]),
            _num(r.get("per_stream_tokens_per_s")),
            _pair(r.get("ttft_p50_ms"), r.get("ttft_p99_ms")),
            _pair(r.get("itl_p50_ms"), r.get("itl_p99_ms"), 2),
            str(r.get("errors", "-")),
            vs,
            r.get("note", ""),
        )
    console.print(t)
    console.print("* bare loop at that many streams interpolated between the batch sizes measured")
    if prompt := model.get("prompt_tokens"):
        console.print(
            f"prompts: pydoc sentences as chat messages, {prompt['min']}-{prompt['max']} "
            f"tokens (mean {prompt['mean']}) with the chat template"
        )
    for c in results.get("targets", []):
        state = "[green]met[/green]" if c["met"] else "[red]NOT met[/red]"
        state = "not measured" if c["value"] is None else state
        console.print(
            f"target {c['target']}: {_num(c['value'])} (goal {c['goal']}) {state}; "
            f"{_num(c['vs_bare'], 2)}x the bare loop ({_num(c['bare_tokens_per_s'])} tok/s, "
            f"{c['bare_how']}; the goal is {_num(c['goal_vs_bare'], 2)}x it)"
        )
    for name, why in results.get("skipped", {}).items():
        console.print(f"[yellow]skipped {name}:[/yellow] {why.strip().splitlines()[-1][:300]}")


def draw(results: dict[str, Any], path: Path) -> None:
    """Left: aggregate tok/s against streams (squeezer's curve, the bare loop's, the
    baselines as points, the targets as stars). Right: squeezer's TTFT and ITL p50/p99
    against streams, with the bare loop's ms/step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = rows(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    bare = [r for r in data if r.get("ceiling")]
    served = [r for r in data if r["system"] == SQUEEZER and r["tokens_per_s"]]
    if bare:
        xs = [r["streams"] for r in bare]
        left.plot(xs, [r["tokens_per_s"] for r in bare], "k--", marker="s", label=BARE)
        right.plot(
            xs, [r["ms_per_step"] for r in bare], "k--", marker="s", label="bare loop ms/step"
        )
    if served:
        xs = [r["streams"] for r in served]
        left.plot(
            xs,
            [r["tokens_per_s"] for r in served],
            color="tab:blue",
            marker="o",
            lw=2,
            label="squeezer",
        )
        for key, style in (("ttft", "tab:orange"), ("itl", "tab:blue")):
            for pct, ls in (("p50", "-"), ("p99", ":")):
                ys = [r.get(f"{key}_{pct}_ms") or float("nan") for r in served]
                right.plot(
                    xs, ys, color=style, ls=ls, marker="o", label=f"squeezer {key.upper()} {pct}"
                )
    markers = iter("v^<>DP")
    for _key, label in BASELINES:
        for r in (r for r in data if r["system"] == label):
            left.scatter(
                [r["streams"]],
                [r["tokens_per_s"]],
                marker=next(markers),
                s=60,
                label=label,
                zorder=3,
            )
    for goal, at in ((TARGET_ONE_STREAM, 1), (TARGET_256, 256)):
        left.scatter([at], [goal], marker="*", s=160, color="tab:red", zorder=4)
    left.scatter([], [], marker="*", s=160, color="tab:red", label="issue 14 targets")
    streams = sorted({r["streams"] for r in data} | {1, 256})
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(streams)
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(alpha=0.3)
        ax.set_xlabel("concurrent streams (batch size for in-process rows)")
        if ax.get_legend_handles_labels()[0]:  # nothing measured yet: no legend
            ax.legend(fontsize=7)
    left.set_ylabel("aggregate tokens/s")
    right.set_ylabel("ms")
    machine = results.get("machine", {})
    model = results.get("model", {})
    left.set_title(
        f"{model.get('layers', '?')}-layer Llama, {model.get('dtype', '')} on "
        f"{machine.get('gpu') or machine.get('device')}",
        fontsize=10,
    )
    right.set_title("squeezer latency: time to first token, inter-token", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
