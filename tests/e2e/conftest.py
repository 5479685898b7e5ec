"""Start the real ``squeezer serve`` process on a free port and stop it with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_and_llama(tiny_bert: Path, tiny_llama: Path) -> list[str]:
    """``serve`` arguments for an embedding model ``tiny`` and a generation model
    ``llama`` (256 tokens per sequence)."""
    return ["--model", f"tiny={tiny_bert}", "--model", f"llama={tiny_llama}",
            "--max-total-tokens", "256"]  # fmt: skip


def start_server(
    args: list[str], log: Path, timeout: float = 180, *, tls: ssl.SSLContext | None = None
) -> ServerProcess:
    """``squeezer serve ARGS`` on a free port, once ``/ready`` answers 200 (over
    ``https://`` with ``tls``, the context that trusts the server's certificate)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SQUEEZER_LOG_LEVEL": "info"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "squeezer", "serve", "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    scheme = "https" if tls is not None else "http"
    server = ServerProcess(f"{scheme}://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.output()}")
        try:
            ready = httpx.get(f"{server.url}/ready", timeout=1, verify=tls or True)
            if ready.status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise RuntimeError(f"server not ready after {timeout} s:\n{server.output()}")


@pytest.fixture(scope="module")
def server(
    tiny_bert: Path, tiny_bert_cls: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Two tiny models in one real server process."""
    log = tmp_path_factory.mktemp("e2e") / "server.log"
    s = start_server(["--model", f"tiny={tiny_bert}", "--model", f"tiny-cls={tiny_bert_cls}"], log)
    yield s
    assert s.terminate() == 0, s.output()
