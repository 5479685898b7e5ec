"""Subprocesses that never outlive the harness: servers, measurement jobs, load generators.

Why not ``peers.started``: it starts servers in a new session (``setsid``), and on the GPU
machine a process in a session of its own survives the call that started it, holding
the GPU until the machine is given back, if the harness is ever killed at its time limit.
Here every child gets a process group of its own (so that a whole tree is stopped at
once: uvicorn, a load generator's workers) inside the harness's session, is stopped in a
``finally``, and SIGTERM/SIGHUP to the harness become ``SystemExit`` so that those
``finally`` blocks run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from peers import wait_ready

#: Every child still running, stopped at exit whatever happens.
_LIVE: set[subprocess.Popen[bytes]] = set()


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP unwind the stack (running the cleanups) instead of killing."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def stop_all() -> None:
    for proc in list(_LIVE):
        stop(proc)


def spawn(cmd: Sequence[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a process group of its own, output appended to ``log``."""
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(map(str, cmd)),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            process_group=0,
        )
    _LIVE.add(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM to the whole group, SIGKILL after ``grace_s``."""
    _LIVE.discard(proc)
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; its group may not be (a load generator's workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def tail(log: Path, chars: int = 1500) -> str:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace")[-chars:]
    return ""


def run(cmd: Sequence[str], log: Path, env: dict[str, str], timeout_s: float) -> None:
    """Run ``cmd`` to completion; a failure or timeout raises with the log's tail."""
    proc = spawn(cmd, log, env)
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout_s:.0f} s; log:\n{tail(log)}") from None
    finally:
        stop(proc)
    if code != 0:
        raise RuntimeError(f"exited with {code}; log:\n{tail(log)}")


def run_for(
    product: Path, cmd: Sequence[str], log: Path, env: dict[str, str], timeout_s: float
) -> str | None:
    """``run`` a command for the file it writes. If it fails after writing ``product``
    (``squeezer bench`` draws its chart last, and the GPU machine may have no
    matplotlib), the product is kept and the failure returned as a note; else None."""
    product.unlink(missing_ok=True)
    try:
        run(cmd, log, env, timeout_s)
    except RuntimeError as e:
        if not product.is_file():
            raise
        return f"exited with an error after writing {product.name}: {str(e).splitlines()[-1]}"
    return None


@contextlib.contextmanager
def server(
    cmd: Sequence[str], ready_url: str, log: Path, env: dict[str, str], timeout_s: float
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait until ``ready_url`` answers 200, stop it on the way out."""
    proc = spawn(cmd, log, env)
    try:
        wait_ready(proc, ready_url, timeout_s, f"(log {log}):\n{tail(log)}")
        yield proc
    finally:
        stop(proc)
