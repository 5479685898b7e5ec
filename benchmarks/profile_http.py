"""Where a loaded embedding server's CPU goes: py-spy over ``squeezer serve`` under wrk.

    python benchmarks/profile_http.py [ARTIFACT] [--concurrency 32] [--seconds 12]

Starts the server on ARTIFACT (default: the packaged model), loads it with wrk (one
corpus sentence per request, as ``embed_http.py`` does), and samples every thread
with py-spy (``--native``, so time inside runtimes' C++ shows as such). Samples are
grouped per thread and by the innermost frame that names a squeezer, runtime or
server module, and printed as shares of all samples. Writes OUT/profile.txt (collapsed
stacks, loadable in speedscope) and OUT/summary.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _corpus  # noqa: E402
import embed_http  # noqa: E402

SQUEEZER = Path(sys.executable).parent / "squeezer"
NAME = "all-MiniLM-L6-v2"
#: Frame paths that say what a sample was doing; a sample goes to the innermost frame
#: that matches one.
BUCKETS = (
    ("model forward (backend)", ("squeezer/backends/",)),
    ("tokenizer", ("squeezer/tasks/tokenizer",)),
    ("engine (batching, pooling)", ("squeezer/engine/", "squeezer/tasks/")),
    (
        "HTTP + JSON",
        ("uvicorn/", "starlette/", "fastapi/", "pydantic", "h11/", "httptools/", "json/"),
    ),
    ("squeezer server and dialects", ("squeezer/",)),
    ("event loop", ("asyncio/", "uvloop/", "selectors")),
)


def bucket(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):  # innermost first
        for name, prefixes in BUCKETS:
            if any(p in frame for p in prefixes):
                return name
    return "other"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact", nargs="?", type=Path)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=int, default=12)
    p.add_argument("--rate", type=int, default=250)
    p.add_argument("--out", type=Path, default=HERE.parent / "bench-results" / "profile_http")
    a = p.parse_args()
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    a.out.mkdir(parents=True, exist_ok=True)
    port = embed_http._free_port()
    model = ["--model", f"{NAME}={a.artifact}"] if a.artifact else []
    cmd = [str(SQUEEZER), "serve", *model, "--port", str(port), "--host", embed_http.HOST]
    with tempfile.TemporaryDirectory(prefix="profile_http_") as tmp:
        bodies = Path(tmp) / "bodies.jsonl"
        bodies.write_text("".join(json.dumps({"inputs": s}) + "\n" for s in _corpus.sentences(512)))
        log = a.out / "server.log"
        with log.open("wb") as log_file:
            proc, t0 = embed_http.start_server(cmd, log_file)
            try:
                base = f"http://{embed_http.HOST}:{port}"
                embed_http.wait_ready(proc, t0, base, 300, log)
                url = f"{base}/embed"
                embed_http.run_wrk(url, bodies, a.concurrency, 3, "warm-up", a.out / "wrk.log")
                raw = a.out / "profile.txt"
                spy_cmd = [spy, "record", "--pid", str(proc.pid), "--duration", str(a.seconds)]
                # Not --native: sampling native stacks stops the process each time (py-spy
                # refuses it with --nonblocking) and would shape what it measures.
                spy_cmd += ["--rate", str(a.rate), "--format", "raw", "--threads"]
                spy_cmd += ["--output", str(raw), "--nonblocking"]
                spied: list[subprocess.CompletedProcess[str]] = []
                sampler = threading.Thread(
                    target=lambda: spied.append(
                        subprocess.run(spy_cmd, capture_output=True, text=True, check=False)
                    )
                )
                sampler.start()
                rec = embed_http.run_wrk(
                    url, bodies, a.concurrency, a.seconds + 2, "profiling", a.out / "wrk.log"
                )
                sampler.join()
            finally:
                embed_http.stop_server(proc)
    if not raw.is_file():
        raise SystemExit(f"py-spy wrote no profile: {spied[0].stderr[-2000:] if spied else ''}")
    per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread = stack.split(";", 1)[0]
        n = int(count)
        per_thread[thread][bucket(stack)] += n
        total += n
    summary = {
        "artifact": str(a.artifact) if a.artifact else "packaged default",
        "concurrency": a.concurrency,
        "rps": round(rec["requests"] / (a.seconds + 2), 1),
        "samples": total,
        "threads": {
            t: {k: round(v / total, 3) for k, v in c.most_common()}
            for t, c in sorted(per_thread.items(), key=lambda tc: -sum(tc[1].values()))
        },
    }
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
