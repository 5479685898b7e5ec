"""The GPU comparison for encoders, whole, in one run (issue 13): squeezer against baselines.

    python3 benchmarks/gpu/encoders.py --device cuda                  # the GPU machine
    .venv/bin/python benchmarks/gpu/encoders.py --device cpu --quick  # dry run here

all-MiniLM-L6-v2 (its real weights, carried in fp16: ``prepare.py``) over the pydoc
sentences, one process orchestrating subprocesses, in this order:

1. in-process baselines, each in a subprocess (``_jobs.py``): HF ``pipeline`` one request
   at a time (fp32), sentence-transformers ``encode`` (fp16 bs256, fp32 bs32);
2. the ceilings: squeezer's own forward pass on pre-tokenized, length-sorted batches,
   and the HTTP stack (a no-op ASGI server) under each level of load;
3. accuracy: squeezer's backend per dtype, and ``/embed`` as served, against fp32
   sentence-transformers on held-out sentences;
4. ``squeezer serve`` over HTTP on loopback: TEI ``POST /embed`` with one sentence per
   request at each ``--concurrency``, ``--batch`` sentences per request, and one short
   request at a time (latency);
5. the server users write by hand (FastAPI + sentence-transformers, ``st_server.py``)
   under the same load.

Every measurement is a function of its own in ``SECTIONS``; one that fails is recorded
as skipped with its reason and the run goes on. Results are written after each section
(a run stopped at its time limit keeps what it measured) to ``$OUT`` when set, else
``--out``: ``gpu_encoders.json``, ``gpu_encoders.png`` and ``gpu_encoders_logs.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
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
import _harness  # noqa: E402
import _procs  # noqa: E402
import _report  # noqa: E402
import numpy as np  # noqa: E402
from _harness import Harness  # noqa: E402
from _load import Generator, Level  # noqa: E402
from peers import free_port  # noqa: E402
from rich.console import Console  # noqa: E402

from squeezer.bench.run import LevelProgress  # noqa: E402

console = Console(width=None if sys.stdout.isatty() else 160)
SQUEEZER = "squeezer"
HANDWRITTEN = "FastAPI + sentence-transformers"


@dataclass(kw_only=True)
class Run(Harness):
    """What every section reads (settings, environment, load) and writes (results)."""

    name: ClassVar[str] = "gpu_encoders"
    generator: Generator
    levels: list[Level]

    def job(self, name: str, *extra: str, expect_s: float) -> dict[str, Any]:
        """Run one ``_jobs.py`` measurement in a subprocess; its JSON result."""
        out = self.work / f"job-{name}.json"
        cmd = [sys.executable, str(HERE / "_jobs.py"), name, "--model", str(self.args.model)]
        cmd += ["--device", self.args.device, "--out", str(out)]
        cmd += ["--seconds", f"{self.args.seconds:g}", *extra]
        with self.progress.level(f"in-process: {name}", expect_s):
            _procs.run(cmd, self.work / f"job-{name}.log", self.setup.env, self.timeout_s())
        result: dict[str, Any] = json.loads(out.read_text())
        return result

    def load(self, system: str, url: str) -> None:
        """Every level against ``url``; one failing level is recorded, the others run."""
        measured = self.results.setdefault("http", {}).setdefault(system, {})
        log = self.work / f"load-{system.split()[0].lower()}.log"
        for level in self.levels:
            g = self.generator
            with self.progress.level(f"{system}: {level.label}", g.warmup_s + g.duration_s):
                try:
                    rec = g.measure(url, level, self.work, self.setup.env, log)
                except (RuntimeError, OSError, ValueError, KeyError) as e:
                    self.results.setdefault("skipped", {})[f"{system} {level.label}"] = str(e)
                    continue
            measured[level.label] = {
                **rec,
                "concurrency": level.concurrency,
                "batch": level.batch,
                "lengths": level.lengths,
            }

    def summarize(self) -> dict[str, Any]:
        return {"targets": _report.targets(self.results)}

    def draw(self, path: Path) -> None:
        _report.draw(self.results, path)


# --------------------------------------------------------------------------------------------
# Sections: each measures one thing into run.results. Issue 14 adds generation the same way.


def inprocess_pipeline(run: Run) -> None:
    """HF ``pipeline("feature-extraction")``, fp32, one request at a time."""
    result = run.job("pipeline", expect_s=run.args.seconds + 20)
    run.results.setdefault("inprocess", {})["pipeline"] = result


def inprocess_st(run: Run) -> None:
    """sentence-transformers ``encode`` over the corpus (fp16 bs256 on a GPU)."""
    extra = ["--st-runs", run.args.st_runs]
    if run.args.st_sentences:
        extra += ["--st-sentences", str(run.args.st_sentences)]
    result = run.job("st", *extra, expect_s=3 * run.args.seconds + 20)
    run.results.setdefault("inprocess", {})["st"] = result


def forward_ceiling(run: Run) -> None:
    """squeezer's forward pass alone on length-sorted batches: the compute ceiling."""
    extra = ["--dtype", run.args.dtype, "--batches", run.args.batches]
    extra += ["--forward-sentences", str(run.args.forward_sentences)]
    run.results["forward"] = run.job("forward", *extra, expect_s=3 * run.args.seconds + 20)


def accuracy(run: Run) -> None:
    """squeezer's backend per dtype against fp32 sentence-transformers (held-out text)."""
    dtypes = "float32,float16,bfloat16"
    extra = ["--texts", str(run.args.texts), "--dtypes", dtypes]
    extra += ["--reference", str(run.work / "reference.npz")]
    run.results["accuracy"] = run.job("accuracy", *extra, expect_s=30)


def http_ceiling(run: Run) -> None:
    """A no-op /embed (``_noop.py``) at every level: what the HTTP stack can answer."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, str(HERE / "_noop.py"), str(port)]
    with run.serve("no-op server", [*cmd, "--workers", str(run.args.noop_workers)], base):
        run.load(_report.CEILING, base + "/embed")


def squeezer_http(run: Run) -> None:
    """``squeezer serve`` on the device, one process: its /info, its /embed accuracy,
    every level."""
    _squeezer(run, SQUEEZER, [])


def squeezer_api_workers(run: Run) -> None:
    """The same with ``--api-workers N``: HTTP, tokenization and JSON in N processes in
    front of the engine process (what lifts the one-process HTTP ceiling)."""
    n = run.args.api_workers
    _squeezer(run, f"{SQUEEZER} --api-workers {n}", ["--api-workers", str(n)])


def _squeezer(run: Run, label: str, flags: list[str]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    most = max(lv.concurrency for lv in run.levels)
    cmd = [sys.executable, "-m", "squeezer", "serve", "--device", run.args.device]
    cmd += ["--dtype", run.args.dtype, "--model", f"minilm={run.args.model}"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--max-concurrent-requests", str(max(4 * most, 4096)), *flags]
    cmd += run.args.serve_args.split()
    with run.serve(label, cmd, base + "/ready"):
        if not flags:  # what the server says of itself, and its answers' accuracy: once
            with urllib.request.urlopen(base + "/info", timeout=10) as r:
                info = json.loads(r.read())
            run.results["squeezer_info"] = info
            run.results["machine"]["served_dtype"] = info.get("model_dtype")
            reference = run.work / "reference.npz"
            if reference.is_file():
                run.results["squeezer_http_accuracy"] = embed_accuracy(base + "/embed", reference)
        run.load(label, base + "/embed")


def handwritten_http(run: Run) -> None:
    """The server users write by hand (``st_server.py``), fp16 on a GPU, same load."""
    port = free_port()
    dtype = "float16" if run.args.device.startswith("cuda") else "float32"
    cmd = [sys.executable, str(HERE / "st_server.py"), str(run.args.model), str(port)]
    cmd += ["--device", run.args.device, "--dtype", dtype]
    base = f"http://127.0.0.1:{port}"
    with run.serve(HANDWRITTEN, cmd, base + "/health"):
        run.load(HANDWRITTEN, base + "/embed")


SECTIONS: dict[str, Callable[[Run], None]] = {
    "pipeline": inprocess_pipeline,
    "st": inprocess_st,
    "forward": forward_ceiling,
    "accuracy": accuracy,
    "http-ceiling": http_ceiling,
    "squeezer": squeezer_http,
    "squeezer-workers": squeezer_api_workers,
    "handwritten": handwritten_http,
}


def embed_accuracy(url: str, reference: Path, per_request: int = 32) -> dict[str, float]:
    """/embed's vectors for the held-out sentences against the fp32 reference."""
    saved = np.load(reference)
    texts, want = [str(t) for t in saved["texts"]], saved["vectors"]
    got: list[list[float]] = []
    for start in range(0, len(texts), per_request):
        body = json.dumps({"inputs": texts[start : start + per_request]}).encode()
        req = urllib.request.Request(url, body, {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            got += json.loads(r.read())
    vectors = np.asarray(got, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    want = want / np.linalg.norm(want, axis=1, keepdims=True)
    cosines = np.sum(vectors * want, axis=1)
    return {"min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean())}


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (the dry run)")
    p.add_argument("--dtype", default="auto", help="squeezer's --dtype (auto: bf16/fp16 on GPU)")
    p.add_argument("--model", type=Path, default=_carry.CARRY / "minilm")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "gpu")
    p.add_argument("--quick", action="store_true", help="dry-run sizes: seconds, not minutes")
    p.add_argument("--only", help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    p.add_argument("--concurrency", help="one sentence per request: levels (256,1024)")
    p.add_argument("--batch", type=int, default=32, help="sentences per request, batched level")
    p.add_argument("--batch-concurrency", type=int, help="connections, batched level (64)")
    p.add_argument("--short-words", type=int, default=8, help="latency level: words per request")
    p.add_argument("--duration", type=float, help="seconds measured per level (8)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each level (2)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a request fails")
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--wrk-threads", type=int, help="wrk threads (4)")
    p.add_argument("--workers", type=int, help="squeezer bench worker processes (8)")
    p.add_argument("--seconds", type=float, help="in-process timed loops (5)")
    p.add_argument("--batches", help="forward-pass ceiling batch sizes (256,1024)")
    p.add_argument("--forward-sentences", type=int, help="sentences per ceiling pass (8192)")
    p.add_argument("--st-runs", help="sentence-transformers DTYPE:BATCH runs")
    p.add_argument("--st-sentences", type=int, help="corpus prefix for encode (all)")
    p.add_argument("--texts", type=int, help="held-out sentences for accuracy (256)")
    p.add_argument("--serve-args", default="", help="extra `squeezer serve` flags")
    p.add_argument(
        "--noop-workers", type=int, default=1, help="HTTP processes of the ceiling's server"
    )
    p.add_argument("--api-workers", type=int, help="squeezer-workers section: N (4; 2 quick)")
    p.add_argument("--budget", type=float, default=540.0, help="skip sections after this many s")
    a = p.parse_args(argv)
    gpu = a.device.startswith("cuda")
    full = {
        "concurrency": "256,1024",
        "batch_concurrency": 64,
        "duration": 8.0,
        "warmup": 2.0,
        "wrk_threads": 4,
        "workers": 8,
        "seconds": 5.0,
        "batches": "256,1024",
        "forward_sentences": 8192,
        "st_runs": "float16:256,float32:32" if gpu else "float32:256,float32:32",
        "texts": 256,
        "api_workers": 4,
    }
    quick = {
        **full,
        **{"concurrency": "8,32", "batch_concurrency": 4, "duration": 3.0, "warmup": 1.0},
        **{"wrk_threads": 1, "workers": 2, "seconds": 2.0, "batches": "16,64"},
        **{"forward_sentences": 256, "st_runs": "float32:32", "st_sentences": 128, "texts": 32},
        **{"api_workers": 2},
    }
    for key, value in (quick if a.quick else full).items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    if "OUT" in os.environ:
        a.out = Path(os.environ["OUT"])
    return a


def levels_of(a: argparse.Namespace) -> list[Level]:
    """One sentence per request at each concurrency, then batched, then one short request."""
    levels = [Level(int(c)) for c in a.concurrency.split(",") if c.strip()]
    levels.append(Level(a.batch_concurrency, batch=a.batch))
    levels.append(Level(1, lengths=f"fixed:{a.short_words}"))
    return levels


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    console.rule(f"GPU encoders harness: device {a.device}, out {a.out}")
    started = _harness.start(console, a.only, SECTIONS)
    if started is None:
        return 2
    chosen, setup = started
    if not (a.model / "config.json").is_file():
        console.print(f"[red]no model at {a.model}: run benchmarks/gpu/prepare.py[/red]")
        return 2
    kind = a.loadgen if a.loadgen != "auto" else ("wrk" if setup.wrk else "python")
    if kind == "wrk" and not setup.wrk:
        console.print("[red]--loadgen wrk: no working wrk[/red]")
        return 2
    generator = Generator(
        kind, a.duration, a.warmup, a.timeout, setup.wrk, a.wrk_threads, a.workers
    )
    work = Path(tempfile.mkdtemp(prefix="gpu-encoders-"))
    with LevelProgress(console) as progress:
        run = Run(a, setup, work, a.out, progress, generator=generator, levels=levels_of(a))
        run.results["generator"] = f"{kind}: {generator}"
        run.run_sections(chosen, SECTIONS)
    _report.print_table(console, run.results)
    took = run.results["elapsed_s"]
    console.print(f"wrote gpu_encoders.json, .png and _logs.txt to {a.out} ({took} s)")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if run.results.get("http", {}).get(SQUEEZER) else 1


if __name__ == "__main__":
    sys.exit(main())
