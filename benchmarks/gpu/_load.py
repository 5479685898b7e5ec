"""HTTP load at one level, from wrk when there is one, else from ``squeezer bench``.

Both send the same request bodies (``squeezer.bench.workload.build`` over the pydoc
corpus), so a system and the no-op ceiling are measured by the same generator at the same
level. wrk is preferred: one Python client process tops out near a thousand requests/s,
and even ``squeezer bench``'s worker processes may fall short of a GPU server
(../shared/DESIGN.md, "The HTTP hot path"); the ceiling row says which limit was hit.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _procs

from squeezer.bench.workload import WorkloadSpec, build, load_texts, route_kind

LUA = Path(__file__).resolve().parents[1] / "wrk_embed.lua"


@dataclass(frozen=True)
class Level:
    """One shape of load: connections kept busy, sentences per request, their length."""

    concurrency: int
    batch: int = 1
    #: "corpus" sends the sentences as they are; "fixed:N" cuts or repeats them to N words.
    lengths: str = "corpus"

    @property
    def label(self) -> str:
        what = "short" if self.lengths != "corpus" else f"{self.batch}/req"
        return f"{what} c={self.concurrency}"


@dataclass(frozen=True)
class Generator:
    """How load is made: ``wrk`` (a binary path) or ``python`` (squeezer bench workers)."""

    kind: str
    duration_s: float
    warmup_s: float
    timeout_s: float
    wrk: str | None = None
    wrk_threads: int = 4
    workers: int = 8

    def measure(
        self, url: str, level: Level, work: Path, env: dict[str, str], log: Path
    ) -> dict[str, Any]:
        """Warm up (unmeasured), then measure; sentences/s counts 2xx responses only."""
        if self.kind == "wrk":
            return self._wrk(url, level, work, env, log)
        return self._python(url, level, work, env, log)

    def _wrk(
        self, url: str, level: Level, work: Path, env: dict[str, str], log: Path
    ) -> dict[str, Any]:
        if self.wrk is None:
            raise RuntimeError("the wrk generator needs a wrk binary")
        texts = load_texts(None)
        spec = WorkloadSpec(batch_size=level.batch, lengths=level.lengths)
        workload = build(route_kind(url), texts, spec, count=min(len(texts), 1024))
        bodies = work / f"bodies-b{level.batch}-{level.lengths.replace(':', '')}.txt"
        bodies.write_bytes(b"\n".join(workload.bodies) + b"\n")
        per_request = statistics.fmean(workload.items)
        threads = max(1, min(self.wrk_threads, level.concurrency))
        out = work / "wrk.out"
        for seconds in (self.warmup_s, self.duration_s):
            if seconds <= 0:
                continue
            out.unlink(missing_ok=True)
            cmd = [self.wrk, f"-t{threads}", f"-c{level.concurrency}", f"-d{seconds:g}s"]
            cmd += ["--timeout", f"{self.timeout_s:g}s", "--latency", "-s", str(LUA), url]
            _procs.run([*cmd, "--", str(bodies)], out, env, seconds + self.timeout_s + 30)
        text = out.read_text()
        with log.open("a") as f:
            f.write(text)
        lines = [ln for ln in text.splitlines() if ln.startswith("WRK_JSON ")]
        if not lines:
            raise RuntimeError(f"wrk printed no WRK_JSON line:\n{text[-1500:]}")
        rec = json.loads(lines[-1].removeprefix("WRK_JSON "))
        secs = rec["duration_us"] / 1e6
        bad = rec["non2xx"] + rec["malformed"]
        ok = rec["requests"] - bad
        lat = rec["latency_us"]
        return {
            "sentences_per_s": ok * per_request / secs,
            "requests_per_s": ok / secs,
            "p50_ms": lat["p50"] / 1000,
            "p99_ms": lat["p99"] / 1000,
            "requests": ok,
            "errors": bad + sum(rec["errors"].values()),
            "generator": f"wrk -t{threads}",
        }

    def _python(
        self, url: str, level: Level, work: Path, env: dict[str, str], log: Path
    ) -> dict[str, Any]:
        out = work / "bench"
        cmd = [sys.executable, "-m", "squeezer", "bench", url]
        cmd += ["--concurrency", str(level.concurrency), "--duration", f"{self.duration_s:g}"]
        cmd += ["--warmup", f"{self.warmup_s:g}", "--workers", str(self.workers)]
        cmd += ["--batch-size", str(level.batch), "--lengths", level.lengths]
        cmd += ["--timeout", f"{self.timeout_s:g}", "--no-ceiling", "--out", str(out)]
        budget = self.warmup_s + self.duration_s + self.timeout_s + 120
        _procs.run_for(out.with_suffix(".json"), cmd, log, {**env, "COLUMNS": "120"}, budget)
        lv = json.loads(out.with_suffix(".json").read_text())["levels"][0]
        lat = lv["latency_ms"] or {}
        return {
            "sentences_per_s": lv["items_per_s"],
            "requests_per_s": lv["requests_per_s"],
            "p50_ms": lat.get("p50"),
            "p99_ms": lat.get("p99"),
            "requests": lv["ok"],
            "errors": sum(lv["errors"].values()),
            "generator": f"squeezer bench --workers {self.workers}",
        }
