"""squeezer's TEI ``/predict`` against transformers' text-classification pipeline.

A classifier head (random weights: speed does not depend on them) is put on the
packaged MiniLM, saved as a model folder, and measured three ways in one run on the
same corpus sentences (Python's ``pydoc_data.topics``):

* ``pipeline("text-classification")`` called one sentence at a time (out of the box);
* the same pipeline over the whole list with ``batch_size=32``;
* ``squeezer serve`` on the folder, loaded over HTTP by ``wrk`` with one sentence per
  ``/predict`` request at each concurrency (32 is the target's).

    python benchmarks/classify_http.py [--quick] [--out bench-results/classify_http]

Writes OUT.json and OUT.png; ratios are against the one-at-a-time pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import _corpus
import embed_http as eh
from rich.table import Table

CLASSIFIER_LABELS = ["negative", "neutral", "positive"]


def build_classifier(out: Path) -> Path:
    """MiniLM's encoder with a seeded random 3-label head, saved as a model folder."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    src = _corpus.default_model_dir()
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        src,
        num_labels=len(CLASSIFIER_LABELS),
        id2label=dict(enumerate(CLASSIFIER_LABELS)),
        label2id={x: i for i, x in enumerate(CLASSIFIER_LABELS)},
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def pipeline_rates(folder: Path, sentences: list[str], min_s: float) -> dict[str, Any]:
    """Sentences/s of the pipeline one call per sentence, and batched by 32."""
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(folder), device="cpu")
    clf(sentences[:8])  # warm-up
    out: dict[str, Any] = {}
    with eh._progress() as prog:
        task = prog.add_task("pipeline, one sentence per call", total=None)
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_s or done < len(sentences) // 4:
            clf(sentences[done % len(sentences)])
            done += 1
            prog.update(task, description=f"pipeline, one per call: {done} sentences")
        out["pipeline_one"] = done / (time.perf_counter() - t0)
        task = prog.add_task("pipeline, batch_size=32", total=None)
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_s:
            clf(sentences, batch_size=32)
            done += len(sentences)
            prog.update(task, description=f"pipeline, batch_size=32: {done} sentences")
        out["pipeline_batch32"] = done / (time.perf_counter() - t0)
    out["reference_top1"] = [r["label"] for r in clf(sentences[:16])]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run (~1 minute)")
    p.add_argument("--out", type=Path, default=Path("bench-results/classify_http"))
    p.add_argument("--duration", type=int, help="seconds measured per wrk level (15, quick 4)")
    p.add_argument("--concurrency", default="1,32")
    a = p.parse_args(argv)
    s = eh.Settings(
        quick=a.quick,
        out=a.out,
        n_sentences=128 if a.quick else 512,
        warmup_s=1 if a.quick else 3,
        duration_s=a.duration or (4 if a.quick else 15),
        baseline_min_s=2.0 if a.quick else 15.0,
        concurrency=tuple(int(c) for c in a.concurrency.split(",")),
        threads=len(eh.os.sched_getaffinity(0)),
        server_cmd=None,
        ready_timeout_s=300.0,
        skip_baselines=False,
        idle_wait_s=5.0 if a.quick else 30.0,
    )
    s.out.parent.mkdir(parents=True, exist_ok=True)
    logs = s.out.parent / f"{s.out.name}-logs"
    logs.mkdir(exist_ok=True)
    sentences = _corpus.sentences(s.n_sentences)
    machine = eh.describe_machine()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_classifier(Path(tmp) / "minilm-classifier")
        eh.console.print(f"classifier folder: {folder}")
        base = pipeline_rates(folder, sentences, s.baseline_min_s)
        eh.console.print(
            f"  pipeline one per call: {base['pipeline_one']:.1f}/s, "
            f"batch_size=32: {base['pipeline_batch32']:.1f}/s"
        )
        bodies = logs / "bodies.jsonl"
        bodies.write_text("".join(json.dumps({"inputs": x}) + "\n" for x in sentences))
        port = eh._free_port()
        cmd = [*eh.server_command(s, port), "--model", f"classifier={folder}"]
        url = f"http://{eh.HOST}:{port}"
        with (logs / "server.log").open("wb") as log_file:
            proc, t0 = eh.start_server(cmd, log_file)
            try:
                cold = eh.wait_ready(proc, t0, url, s.ready_timeout_s, logs / "server.log")
                status, body = eh._http(
                    "POST",
                    f"{url}/predict",
                    json.dumps({"inputs": [[x] for x in sentences[:16]]}).encode(),
                )
                ours = [r[0]["label"] for r in json.loads(body)] if status == 200 else []
                agree = sum(o == t for o, t in zip(ours, base["reference_top1"], strict=False))
                levels = [
                    eh.measure_level(f"{url}/predict", bodies, c, s, proc.pid, logs / "wrk.log")
                    for c in s.concurrency
                ]
            finally:
                stopped = eh.stop_server(proc)
    one = base["pipeline_one"]
    table = Table(title="text-classification, MiniLM + random 3-label head, one sentence each")
    for col in ("run", "sentences/s", "vs pipeline 1-by-1", "p50 ms", "p99 ms", "errors"):
        table.add_column(col)
    table.add_row("pipeline, one per call", f"{one:.1f}", "1.00x", "", "", "")
    table.add_row(
        "pipeline, batch_size=32",
        f"{base['pipeline_batch32']:.1f}",
        f"{base['pipeline_batch32'] / one:.2f}x",
        "",
        "",
        "",
    )
    for lv in levels:
        table.add_row(
            f"squeezer /predict, c={lv.concurrency}",
            f"{lv.rps:.1f}",
            f"{lv.rps / one:.2f}x",
            f"{lv.p50_ms:.1f}",
            f"{lv.p99_ms:.1f}",
            str(lv.non2xx + lv.malformed + sum(lv.socket_errors.values())),
        )
    eh.console.print(table)
    eh.console.print(f"top-1 agreement with the pipeline on 16 sentences: {agree}/16")
    result = {
        "machine": machine,
        "command": " ".join(["python", "benchmarks/classify_http.py", *(argv or sys.argv[1:])]),
        "baselines": {k: v for k, v in base.items() if k != "reference_top1"},
        "cold_start_s": round(cold, 2),
        "server_stop": stopped,
        "top1_agreement": f"{agree}/16",
        "levels": [{k: v for k, v in asdict(lv).items() if k != "raw"} for lv in levels],
    }
    s.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    plot(result, s.out.with_suffix(".png"))
    eh.console.print(f"wrote {s.out.with_suffix('.json')} and {s.out.with_suffix('.png')}")
    return 0 if all(lv.ok for lv in levels) and agree == 16 else 1


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["pipeline\n1 per call", "pipeline\nbatch 32"]
    rates = [result["baselines"]["pipeline_one"], result["baselines"]["pipeline_batch32"]]
    for lv in result["levels"]:
        names.append(f"squeezer\n/predict c={lv['concurrency']}")
        rates.append(lv["rps"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar(names, rates, color=["#999", "#999"] + ["#2a7"] * len(result["levels"]))
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("sentences / s")
    ax.set_title("text-classification on MiniLM, 2 cores (higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
