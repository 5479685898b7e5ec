"""What every GPU harness script shares: the run's state and time budget, sections that
fail alone, and results written after each one (a run stopped at the device's time
limit keeps what it measured).

A script subclasses ``Harness`` (its ``name``, ``summarize`` and ``draw``), lists its
sections (functions of the run) and calls ``start`` then ``run_sections``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import _carry
import _procs
from rich.console import Console

from squeezer.bench.run import LevelProgress, machine


@dataclass
class Harness:
    """What every section reads (settings, environment) and writes (results)."""

    #: Output files: NAME.json, NAME.png, NAME_logs.txt.
    name: ClassVar[str] = "gpu"
    #: Said when the chart cannot be drawn here (no matplotlib on the GPU machine).
    redraw_hint: ClassVar[str] = ""

    args: argparse.Namespace
    setup: _carry.Setup
    work: Path
    out: Path
    progress: LevelProgress
    results: dict[str, Any] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)

    def left_s(self) -> float:
        return self.args.budget - (time.monotonic() - self.t0)

    def timeout_s(self) -> float:
        """A child may run past the budget by a minute (the device's limit is later)."""
        return max(60.0, self.left_s() + 60.0)

    @contextlib.contextmanager
    def serve(
        self,
        label: str,
        cmd: list[str],
        ready_url: str,
        expect_s: float = 30.0,
        wait_s: float = 300.0,
    ) -> Iterator[None]:
        """A server for the body of the ``with``; its start-up shown as progress."""
        log = self.work / f"server-{label.split()[0].lower()}.log"
        with contextlib.ExitStack() as stack:
            with self.progress.level(f"{label}: starting", expect_s):
                stack.enter_context(_procs.server(cmd, ready_url, log, self.setup.env, wait_s))
            yield

    def summarize(self) -> dict[str, Any]:
        """Figures derived from the results (targets, rows), refreshed at every save."""
        return {}

    def draw(self, path: Path) -> None:
        raise NotImplementedError

    def save(self) -> None:
        self.results.update(self.summarize())
        self.results["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        path = self.out / f"{self.name}.json"
        path.write_text(json.dumps(self.results, indent=2, default=str))

    def finish(self) -> None:
        """Write the JSON, the chart and the logs as they stand."""
        self.save()
        try:
            self.draw(self.out / f"{self.name}.png")
        except ImportError as e:  # no matplotlib on the GPU machine: the JSON has it all
            self.results["chart"] = f"not drawn ({e}){self.redraw_hint}"
            self.save()
        write_logs(self.work, self.out / f"{self.name}_logs.txt")

    def run_section(self, name: str, section: Callable[[Any], None]) -> None:
        """One section; a failure is recorded as skipped, with its reason, and the run
        goes on."""
        if self.left_s() <= 0:
            self.results["skipped"][name] = f"time budget of {self.args.budget:g} s spent"
            return
        t0 = time.monotonic()
        try:
            section(self)
        except Exception as e:
            self.results["skipped"][name] = f"{type(e).__name__}: {e}"
        except BaseException:
            self.results["skipped"][name] = "interrupted (SIGTERM, SIGHUP or Ctrl-C)"
            raise
        finally:
            self.results["sections_s"][name] = round(time.monotonic() - t0, 1)
            self.finish()

    def run_sections(
        self, chosen: list[str], sections: Mapping[str, Callable[[Any], None]]
    ) -> None:
        self.results.update(
            machine=describe_machine(self.args.device),
            command=" ".join(sys.argv),
            settings={k: str(v) for k, v in vars(self.args).items()},
            setup=self.setup.notes,
            skipped={},
            sections_s={},
        )
        try:
            for name in chosen:
                self.run_section(name, sections[name])
        finally:  # also on SIGTERM at the device's time limit: keep what was measured
            _procs.stop_all()
            self.finish()


def start(
    console: Console, argv_only: str | None, sections: Mapping[str, Any]
) -> tuple[list[str], _carry.Setup] | None:
    """The sections asked for and the carried set-up; None (said why) when either fails."""
    _procs.exit_on_signals()
    chosen = argv_only.split(",") if argv_only else list(sections)
    if unknown := sorted(set(chosen) - set(sections)):
        console.print(f"[red]unknown sections {unknown}; known: {', '.join(sections)}[/red]")
        return None
    try:
        setup = _carry.prepare()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        console.print(f"[red]setup failed: {e}[/red]")
        return None
    for note in setup.notes:
        console.print(f"setup: {note}")
    return chosen, setup


def describe_machine(device: str) -> dict[str, Any]:
    """CPU, GPU and library versions, without importing torch in this process."""
    info: dict[str, Any] = {**machine(), "device": device}
    info["cpu_cores"] = info.pop("cores", None)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        query = "--query-gpu=name,memory.total,driver_version"
        smi = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True
        )
        if smi.returncode == 0 and smi.stdout.strip():
            info["gpu"] = smi.stdout.strip().splitlines()[0]
    versions = {}
    for name in ("torch", "transformers", "sentence-transformers", "tokenizers", "fastapi"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    info["versions"] = versions
    return info


def write_logs(work: Path, path: Path, keep: int = 100_000) -> None:
    """Every log of the run in one file (the last ``keep`` characters of each)."""
    with path.open("w") as out:
        for log in sorted(work.glob("*.log")):
            out.write(f"\n===== {log.name}\n{_procs.tail(log, keep)}")
