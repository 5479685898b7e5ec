"""The GPU comparison for generation, whole, in one run (issue 14): squeezer against baselines.

    python3 benchmarks/gpu/generation.py --device cuda                  # the GPU machine
    .venv/bin/python benchmarks/gpu/generation.py --device cpu --quick  # dry run here

SmolLM2-135M's architecture with random weights in bf16 (``_gen_jobs.py build``, from the
config and tokenizer ``prepare.py`` carries: speed does not depend on weight values, and
the real weights cannot travel), 128 new tokens per request with ``ignore_eos``, prompts
from the pydoc sentences (mixed lengths, with the chat template). One process drives
subprocesses, in this order:

1. ``model``: build the model once and save it (safetensors) to a temporary folder;
2. ``squeezer``: ``squeezer serve --device cuda --dtype bfloat16`` on it, streamed chat
   completions from ``squeezer bench`` at each concurrency: time to first token and
   inter-token latency p50/p99, per-stream and aggregate tokens/s; the server's own
   step count and time per level from ``/metrics``;
3. ``bare``: the ceiling: the model's decode step alone (static cache of 512, forward and
   argmax compiled with ``mode="reduce-overhead"``, CUDA graphs), ms/step at batch 1, 64
   and 256; every result is also given as a ratio to it;
4. the baselines in-process, a subprocess each (``_gen_jobs.py``): HF ``generate`` one
   stream; one ``generate`` over a static batch of 256 (left padded); transformers'
   ``generate_batch`` (its continuous batching) on 256 prompts; HF ``generate`` one
   stream with ``cache_implementation="static"`` (compiled; the compile time reported,
   not counted).

Issue 14's targets (one stream >= 1,000 tok/s; 256 streams >= 30,000 tok/s aggregate)
are printed and written with their ratios to the bare loop. Every section is a function
in ``SECTIONS``; one that fails is recorded as skipped with its reason and the run goes
on. Results are written after each section to ``$OUT`` when set, else ``--out``:
``gpu_generation.json``, ``gpu_generation.png`` and ``gpu_generation_logs.txt``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "src"), str(ROOT / "benchmarks")]

import _carry  # noqa: E402
import _gen_report  # noqa: E402
import _harness  # noqa: E402
import _procs  # noqa: E402
from _harness import Harness  # noqa: E402
from peers import free_port  # noqa: E402
from rich.console import Console  # noqa: E402

from squeezer.bench.run import LevelProgress  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 180)
MODEL_NAME = "smol"
#: /metrics series read before and after each level: the server's own view of it.
METRICS = (
    "squeezer_generation_step_seconds_sum",
    "squeezer_generation_step_seconds_count",
    "squeezer_generated_tokens_total",
    "squeezer_kv_cache_blocks",
    "squeezer_kv_cache_blocks_in_use",
    "squeezer_gpu_memory_allocated_bytes",
    "squeezer_gpu_memory_reserved_bytes",
)


@dataclass(kw_only=True)
class Run(Harness):
    """What every section reads (settings, environment, the built model) and writes."""

    name: ClassVar[str] = "gpu_generation"
    redraw_hint: ClassVar[str] = ": generation.py --redraw gpu_generation.json --out DIR draws it"
    #: The random-weight model's folder, once the ``model`` section has built it.
    model: Path | None = None

    def need_model(self) -> Path:
        if self.model is None:
            raise RuntimeError("no model: the `model` section did not run or failed")
        return self.model

    def job(self, name: str, *extra: str, expect_s: float, model: bool = True) -> dict[str, Any]:
        """Run one ``_gen_jobs.py`` measurement in a subprocess; its JSON result."""
        a = self.args
        out = self.work / f"job-{name}.json"
        cmd = [sys.executable, str(HERE / "_gen_jobs.py"), name, "--out", str(out)]
        cmd += ["--device", a.device, "--dtype", a.dtype, "--new-tokens", str(a.new_tokens)]
        if model:
            cmd += ["--model", str(self.need_model())]
        with self.progress.level(f"in-process: {name}", expect_s):
            _procs.run(
                [*cmd, *extra], self.work / f"job-{name}.log", self.setup.env, self.timeout_s()
            )
        result: dict[str, Any] = json.loads(out.read_text())
        return result

    def summarize(self) -> dict[str, Any]:
        return {
            "rows": _gen_report.rows(self.results),
            "targets": _gen_report.targets(self.results),
        }

    def draw(self, path: Path) -> None:
        _gen_report.draw(self.results, path)


# --------------------------------------------------------------------------------------------
# Sections: each measures one thing into run.results.


def build_model(run: Run) -> None:
    """The random-weight model every other section loads, built and saved once."""
    a = run.args
    if a.model is not None:  # one built earlier (--model): reuse it
        run.model = a.model
        run.results["model"] = {"path": str(a.model), "reused": True}
        return
    extra = ["--config", str(a.config), "--out-model", str(run.work / "model")]
    # Built on the CPU: random init and saving need no GPU, and the GPU stays empty.
    extra = [*extra, "--batch", str(a.batch), *(["--tiny"] if a.tiny else [])]
    result = run.job("build", *extra, expect_s=20, model=False)
    run.results["model"] = result
    run.model = Path(result["path"])


def squeezer_http(run: Run) -> None:
    """``squeezer serve`` on the model; ``squeezer bench`` streamed chat at each level."""
    a = run.args
    model = run.need_model()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    most = max(a.levels)
    cmd = [sys.executable, "-m", "squeezer", "serve", "--device", a.device, "--dtype", a.dtype]
    cmd += ["--model", f"{MODEL_NAME}={model}", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--max-num-seqs", str(a.max_num_seqs), "--max-total-tokens", str(a.max_total_tokens)]
    cmd += ["--max-concurrent-requests", str(max(2 * most, 512))]
    cmd += ["--request-timeout", f"{a.timeout:g}", *a.serve_args.split()]
    section = run.results.setdefault("squeezer", {})
    section["command"] = " ".join(cmd[2:])
    wait = min(a.ready_timeout, max(run.timeout_s(), 60.0))  # start-up compiles on CUDA
    with run.serve("squeezer", cmd, base + "/ready", expect_s=60, wait_s=wait):
        with contextlib.suppress(OSError, ValueError):
            section["info"] = _get_json(base + "/info")
        levels = section.setdefault("levels", {})
        for c in a.levels:
            before = scrape(base + "/metrics")
            expect = a.warmup + a.duration + 8
            with run.progress.level(f"squeezer: {c} streams", expect):
                try:
                    rec = bench_level(run, base + "/v1/chat/completions", c)
                except (RuntimeError, OSError, ValueError, KeyError) as e:
                    run.results["skipped"][f"squeezer c={c}"] = str(e)
                    continue
            rec["server"] = server_view(before, scrape(base + "/metrics"))
            levels[str(c)] = rec
            run.save()  # a level at a time: the slowest section keeps what it measured
        section["metrics_after"] = scrape(base + "/metrics")


def bench_level(run: Run, url: str, concurrency: int) -> dict[str, Any]:
    """One level from ``squeezer bench`` (streamed, ``ignore_eos``): its figures.

    ``squeezer bench`` counts a token per server-sent event with text, over the level's
    whole time (the requests running at its end included). With ``ignore_eos`` every
    answered request carries exactly ``--new-tokens`` tokens, so the two counts agree
    unless the server merged or dropped events; both are kept."""
    a = run.args
    out = run.work / f"bench-c{concurrency}"
    cmd = [sys.executable, "-m", "squeezer", "bench", url, "--concurrency", str(concurrency)]
    cmd += ["--duration", f"{a.duration:g}", "--warmup", f"{a.warmup:g}"]
    cmd += ["--max-tokens", str(a.new_tokens), "--ignore-eos", "--model", MODEL_NAME]
    cmd += ["--workers", str(max(1, min(a.workers, concurrency))), "--timeout", f"{a.timeout:g}"]
    cmd += ["--no-ceiling", "--out", str(out)]
    budget = a.warmup + a.duration + 2 * a.timeout + 120
    env = {**run.setup.env, "COLUMNS": "160"}
    note = _procs.run_for(out.with_suffix(".json"), cmd, run.work / "bench.log", env, budget)
    lv = json.loads(out.with_suffix(".json").read_text())["levels"][0]
    ttft, itl, lat = lv.get("ttft_ms") or {}, lv.get("itl_ms") or {}, lv.get("latency_ms") or {}
    counted = lv.get("tokens_per_s")
    from_requests = lv["ok"] * a.new_tokens / lv["duration_s"] if lv["duration_s"] else None
    return {
        "concurrency": concurrency,
        "tokens_per_s": counted,
        "tokens_per_s_from_requests": from_requests,
        "token_count_ratio": counted / from_requests if counted and from_requests else None,
        # What one stream sees while this many share the server: one token per ITL.
        "per_stream_tokens_per_s": 1000 / itl["p50"] if itl.get("p50") else None,
        "ttft_p50_ms": ttft.get("p50"),
        "ttft_p99_ms": ttft.get("p99"),
        "itl_p50_ms": itl.get("p50"),
        "itl_p99_ms": itl.get("p99"),
        "latency_p50_ms": lat.get("p50"),
        "requests": lv["ok"],
        "errors": sum(lv["errors"].values()),
        "error_kinds": lv["errors"],
        "duration_s": lv["duration_s"],
        "generator": f"squeezer bench --workers {min(a.workers, concurrency)}",
        **({"bench_note": note} if note else {}),
    }


def bare_loop(run: Run) -> None:
    """The ceiling: the decode step alone, CUDA graphs, at each batch size."""
    a = run.args
    extra = ["--bare-batches", a.bare_batches, "--cache-len", str(a.cache_len)]
    extra += ["--steps", str(a.steps)]
    batches = len(a.bare_batches.split(","))
    run.results["bare"] = run.job("bare", *extra, expect_s=40 * batches if a.gpu else 10 * batches)


def hf_generate(run: Run) -> None:
    """HF ``generate``, one stream, eager."""
    extra = ["--prompts", str(run.args.prompts), "--seconds", f"{run.args.seconds:g}"]
    result = run.job("hf-generate", *extra, expect_s=run.args.seconds + 20)
    run.results.setdefault("inprocess", {})["hf-generate"] = result


def hf_static(run: Run) -> None:
    """HF ``generate`` with a static cache, which it compiles on CUDA; one stream."""
    extra = ["--prompts", str(run.args.prompts), "--seconds", f"{run.args.seconds:g}"]
    expect = run.args.seconds + (70 if run.args.gpu else 20)
    result = run.job("hf-static", *extra, expect_s=expect)
    run.results.setdefault("inprocess", {})["hf-static"] = result


def hf_batch(run: Run) -> None:
    """One ``generate`` over a static batch of ``--batch`` prompts, left padded."""
    result = run.job("hf-batch", "--batch", str(run.args.batch), expect_s=40)
    run.results.setdefault("inprocess", {})["hf-batch"] = result


def generate_batch(run: Run) -> None:
    """transformers' ``generate_batch`` (continuous batching) on ``--batch`` prompts."""
    result = run.job("generate-batch", "--batch", str(run.args.batch), expect_s=60)
    run.results.setdefault("inprocess", {})["generate-batch"] = result


SECTIONS: dict[str, Callable[[Run], None]] = {
    "model": build_model,
    "squeezer": squeezer_http,
    "bare": bare_loop,
    "hf-generate": hf_generate,
    "hf-batch": hf_batch,
    "generate-batch": generate_batch,
    # Last: its compile is the longest wait of the run, and its figure is on record
    # (DESIGN.md, 241 tok/s): the one to lose if the budget runs out.
    "hf-static": hf_static,
}


# --------------------------------------------------------------------------------------------


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(url: str) -> dict[str, float]:
    """The ``METRICS`` series from a Prometheus text page, summed over their labels
    (one model is served); {} when the page cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
    except (OSError, ValueError):
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) in METRICS:
            with contextlib.suppress(ValueError):
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def server_view(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The server's steps during one level (its warm-up included): how many, their mean
    time and tokens per step. Read beside the bare loop's ms/step, it separates the
    step's own cost from what the server adds between steps."""
    steps = after.get(METRICS[1], 0.0) - before.get(METRICS[1], 0.0)
    spent = after.get(METRICS[0], 0.0) - before.get(METRICS[0], 0.0)
    tokens = after.get(METRICS[2], 0.0) - before.get(METRICS[2], 0.0)
    view: dict[str, Any] = {"steps": int(steps)}
    if steps > 0:
        view["mean_step_ms"] = 1000 * spent / steps
        view["tokens_per_step"] = tokens / steps
    for name in METRICS[3:]:
        if name in after:
            view[name.removeprefix("squeezer_")] = after[name]
    return view


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (the dry run)")
    p.add_argument("--dtype", help="model dtype everywhere (bfloat16; float32 on a CPU)")
    p.add_argument("--config", type=Path, default=_carry.CARRY / "smollm2-config")
    p.add_argument("--model", type=Path, help="a model built earlier: skip building one")
    p.add_argument("--tiny", action="store_true", help="a 2-layer Llama (--quick sets it)")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "gpu")
    p.add_argument("--quick", action="store_true", help="dry-run sizes: seconds, not minutes")
    p.add_argument("--only", help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    p.add_argument("--concurrency", help="streams per HTTP level (1,16,64,256)")
    p.add_argument("--new-tokens", type=int, help="tokens per request (128)")
    p.add_argument("--duration", type=float, help="seconds measured per HTTP level (8)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each level (2)")
    p.add_argument("--workers", type=int, help="squeezer bench worker processes (8)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a request fails")
    p.add_argument("--max-num-seqs", type=int, help="squeezer --max-num-seqs (256)")
    p.add_argument("--max-total-tokens", type=int, default=512, help="squeezer --max-total-tokens")
    p.add_argument("--serve-args", default="", help="extra `squeezer serve` flags")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="server start-up limit, s")
    p.add_argument("--seconds", type=float, help="one-stream baselines: timed loop (10)")
    p.add_argument("--prompts", type=int, help="one-stream baselines: prompts cycled (64)")
    p.add_argument("--batch", type=int, help="static batch and generate_batch: prompts (256)")
    p.add_argument("--bare-batches", help="bare loop batch sizes (1,64,256)")
    p.add_argument("--cache-len", type=int, default=512, help="bare loop: static cache length")
    p.add_argument("--steps", type=int, help="bare loop: timed decode steps (128)")
    p.add_argument("--budget", type=float, default=540.0, help="skip sections after this many s")
    p.add_argument("--redraw", type=Path, help="only redraw table + chart from this JSON")
    a = p.parse_args(argv)
    a.gpu = a.device.startswith("cuda")
    full = {
        "concurrency": "1,16,64,256",
        "new_tokens": 128,
        "duration": 8.0,
        "warmup": 2.0,
        "workers": 8,
        "seconds": 10.0,
        "prompts": 64,
        "batch": 256,
        "bare_batches": "1,64,256",
        "steps": 128,
    }
    quick = {
        **full,
        **{"concurrency": "1,4", "new_tokens": 16, "duration": 3.0, "warmup": 1.0},
        **{"workers": 1, "seconds": 2.0, "prompts": 8, "batch": 8, "bare_batches": "1,4,8"},
        **{"steps": 32},
    }
    for key, value in (quick if a.quick else full).items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    a.tiny = a.tiny or a.quick
    a.dtype = a.dtype or ("bfloat16" if a.gpu else "float32")
    a.levels = [int(c) for c in a.concurrency.split(",") if c.strip()]
    if a.max_num_seqs is None:
        a.max_num_seqs = max(a.levels) if a.quick else max(256, max(a.levels))
    if "OUT" in os.environ:
        a.out = Path(os.environ["OUT"])
    return a


def redraw(path: Path, out: Path) -> int:
    """The table, and the chart into ``out``, from a run's JSON (one fetched from the
    device, whose files lie in a read-only folder)."""
    results = json.loads(path.read_text())
    results["targets"] = _gen_report.targets(results)  # read as this version reads them
    out.mkdir(parents=True, exist_ok=True)
    _gen_report.draw(results, out / "gpu_generation.png")
    _gen_report.print_table(console, results)
    console.print(f"wrote {out / 'gpu_generation.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.redraw:
        return redraw(a.redraw, a.out)
    a.out.mkdir(parents=True, exist_ok=True)
    console.rule(f"GPU generation harness: device {a.device} ({a.dtype}), out {a.out}")
    started = _harness.start(console, a.only, SECTIONS)
    if started is None:
        return 2
    chosen, setup = started
    if "model" not in chosen and a.model is None:
        chosen.insert(0, "model")  # every other section needs it
    if a.model is None and not (a.config / "config.json").is_file():
        console.print(f"[red]no config at {a.config}: run benchmarks/gpu/prepare.py[/red]")
        return 2
    work = Path(tempfile.mkdtemp(prefix="gpu-generation-"))
    with LevelProgress(console) as progress:
        run = Run(a, setup, work, a.out, progress)
        run.run_sections(chosen, SECTIONS)
    _gen_report.print_table(console, run.results)
    took = run.results["elapsed_s"]
    times = ", ".join(f"{k} {v:g} s" for k, v in run.results["sections_s"].items())
    console.print(f"sections: {times}")
    if "chart" in run.results:
        console.print(f"[yellow]chart {run.results['chart']}[/yellow]")
    console.print(f"wrote gpu_generation.json, .png and _logs.txt to {a.out} ({took} s)")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if run.results.get("squeezer", {}).get("levels") else 1


if __name__ == "__main__":
    sys.exit(main())
