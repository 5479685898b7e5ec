"""Make a bare GPU machine able to run squeezer from the checkout, from ``.gpu-carry`` alone.

The device's ``python3`` has torch, transformers and sentence-transformers but no web
stack, and it reaches no package index (../shared/DESIGN.md, "The GPU"). What it lacks
travels in ``.gpu-carry/`` (``fetch_wheels.sh``, ``prepare.py``) and is installed per run
into ``/tmp``, never into the system: wheels with ``pip --target``, wrk's .deb files with
``dpkg -x``. Here, where the venv has everything, nothing is installed, and the same code
path runs (the dry run).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CARRY = ROOT / ".gpu-carry"
SITE = Path("/tmp/site")
WRK_ROOT = Path("/tmp/wrk-root")
#: Imports `squeezer serve` needs that the device's python3 does not have.
SERVE_IMPORTS = ("fastapi", "starlette", "pydantic", "uvicorn", "orjson", "httptools")


@dataclass
class Setup:
    """What the run's subprocesses need: environment, load generator, what was done."""

    env: dict[str, str]
    #: A working wrk binary (carried or on PATH), or None: use squeezer bench instead.
    wrk: str | None
    notes: list[str] = field(default_factory=list)


def prepare(carry: Path = CARRY) -> Setup:
    """Install what is missing, raise the open-files limit, build the children's env."""
    notes: list[str] = []
    missing = [m for m in SERVE_IMPORTS if importlib.util.find_spec(m) is None]
    if missing:
        notes.append(f"installed {install_wheels(carry / 'wheels')} for {missing}")
    if str(SITE) not in sys.path and SITE.is_dir():
        # Before site-packages, as PYTHONPATH=src:/tmp/site puts it for the children.
        sys.path.insert(1, str(SITE))
        importlib.invalidate_caches()
    still = [m for m in SERVE_IMPORTS if importlib.util.find_spec(m) is None]
    if still:
        raise RuntimeError(f"cannot import {still} even after installing the carried wheels")
    notes.append(raise_open_files())
    env = child_env()
    wrk = find_wrk(carry / "debs", env, notes)
    # Children started by library helpers (squeezer.bench.run.noop_server) inherit this.
    os.environ.update(env)
    return Setup(env=env, wrk=wrk, notes=notes)


def install_wheels(wheels: Path) -> int:
    """``pip install --no-deps --target /tmp/site`` every carried wheel; returns the count."""
    files = sorted(wheels.glob("*.whl"))
    if not files:
        raise RuntimeError(
            f"no wheels in {wheels}: run benchmarks/gpu/fetch_wheels.sh here and carry "
            ".gpu-carry (see benchmarks/gpu/README.md)"
        )
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    cmd += ["--no-compile", "--no-cache-dir", "--upgrade", "--target", str(SITE)]
    subprocess.run([*cmd, *map(str, files)], check=True)
    return len(files)


def raise_open_files() -> str:
    """1,024 connections need more descriptors than a default soft limit of 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return f"open files limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"


def child_env() -> dict[str, str]:
    """The checkout's ``src`` and the carried site first; no hub look-ups (no network)."""
    paths = [str(ROOT / "src"), str(SITE), str(ROOT / "benchmarks")]
    old = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*paths, *([old] if old else [])]),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def find_wrk(debs: Path, env: dict[str, str], notes: list[str]) -> str | None:
    """wrk unpacked from the carried .deb files (into /tmp, not /), else one on PATH.

    ``env`` gains the LD_LIBRARY_PATH the unpacked binary needs for LuaJIT."""
    candidates: list[str] = []
    if sorted(debs.glob("*.deb")):
        try:
            for deb in sorted(debs.glob("*.deb")):
                subprocess.run(["dpkg", "-x", str(deb), str(WRK_ROOT)], check=True)
            lib = WRK_ROOT / "usr" / "lib" / "x86_64-linux-gnu"
            old = env.get("LD_LIBRARY_PATH")
            env["LD_LIBRARY_PATH"] = os.pathsep.join([str(lib), *([old] if old else [])])
            candidates.append(str(WRK_ROOT / "usr" / "bin" / "wrk"))
        except (OSError, subprocess.CalledProcessError) as e:
            notes.append(f"could not unpack the carried wrk: {e}")
    on_path = shutil.which("wrk")
    if on_path:
        candidates.append(on_path)
    for wrk in candidates:
        try:
            out = subprocess.run([wrk, "-v"], env=env, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.stdout.startswith("wrk"):  # -v prints the version, then exits 1
            notes.append(f"wrk: {wrk} ({out.stdout.splitlines()[0][:60]})")
            return wrk
    notes.append("no working wrk: load from squeezer bench's worker processes")
    return None
