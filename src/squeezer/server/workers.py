"""``--api-workers N``: N API-server processes in front of one engine process.

The process ``squeezer serve`` starts becomes the engine process: it loads and warms
the models, serves its engine on a Unix socket (``engine/remote.py``), binds the TCP
port once and starts N API processes that inherit it, so the kernel hands each new
connection to one of them. API processes parse HTTP, tokenize, detokenize and write
JSON; only tokenized requests and results cross the socket.

Signals go to the engine process (API processes run in their own session, so a
terminal's Ctrl-C reaches them once, from here): it tells every API process to drain,
waits until they have answered what they accepted (the engine keeps computing for
them meanwhile), then stops the engine. An API process that dies on its own is
replaced: the connections it held are lost to their clients, and no other request
fails (the engine cancels only what that process had started). One that keeps dying
(more deaths in a minute than twice the workers, or before the server was ever ready)
stops the server with exit status 1, for a supervisor to see.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from squeezer.config import Settings
from squeezer.engine.remote import EngineServer, Hooks, RemoteEngine
from squeezer.server.app import create_app
from squeezer.server.lifecycle import ModelStatus
from squeezer.server.metrics import Metrics, RemoteMetrics
from squeezer.server.routes.admin import render_metrics
from squeezer.server.runtime import Runtime, default_tokenizer_workers
from squeezer.server.serve import (
    DrainingServer,
    announce_serving,
    start_observing,
    uvicorn_config,
)

log = logging.getLogger("squeezer")

_SETTINGS_ENV = "SQUEEZER_API_WORKER_SETTINGS"


def run_with_api_workers(settings: Settings) -> None:
    """Serve ``settings`` with ``settings.api_workers`` API processes; returns when
    all have stopped (exit status 1 when one died on its own)."""
    code = asyncio.run(_EngineProcess(settings).run())
    if code:
        raise SystemExit(code)


class _EngineProcess:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.runtime = Runtime(settings, observer=self.metrics)
        self.ready = asyncio.Event()
        self.ready_count = 0
        self.stop = asyncio.Event()
        self.children: list[subprocess.Popen[bytes]] = []
        self._socket_path = ""
        self._listener: socket.socket | None = None

    async def run(self) -> int:
        s = self.settings
        t0 = time.perf_counter()
        server = EngineServer(self.runtime.engine, self._hooks())
        self.runtime.models.peers = ApiProcesses(server)
        await self.runtime.start()
        folder = Path(tempfile.mkdtemp(prefix="squeezer-engine-"))  # mode 0700
        listener = _listen(s.host, s.port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        try:
            self._socket_path, self._listener = str(folder / "engine.sock"), listener
            await server.start(self._socket_path)
            self.children = [self._spawn() for _ in range(s.api_workers)]
            watch = asyncio.create_task(self._watch_children())
            await asyncio.wait(
                [asyncio.create_task(self.ready.wait()), watch],
                return_when=asyncio.FIRST_COMPLETED,
            )
            if self.ready.is_set():
                port = listener.getsockname()[1]
                announce_serving(s, port, time.perf_counter() - t0)
            await self.stop.wait()
            died = watch.done()
            await self._stop_children(graceful=not died)
            watch.cancel()
            return 1 if died else 0
        finally:
            listener.close()
            await server.close()
            await self.runtime.stop()
            shutil.rmtree(folder, ignore_errors=True)

    def _hooks(self) -> Hooks:
        return Hooks(
            calls={
                "catalog": self.runtime.models.status,
                "admin": self.runtime.admin,
                "metrics": lambda: render_metrics(self.runtime, self.metrics),
            },
            notes={
                "http_start": self.metrics.request_started,
                "http_end": self.metrics.request_finished,
                "ready": self._child_ready,
                "load_soon": self.runtime.models.load_soon,
            },
        )

    def _child_ready(self) -> None:
        self.ready_count += 1
        if self.ready_count == len(self.children):
            self.ready.set()

    def _spawn(self) -> subprocess.Popen[bytes]:
        s, path, listener = self.settings, self._socket_path, self._listener
        assert listener is not None
        # Tokenizer threads: the engine process's share, divided among the API processes.
        per_worker = max(1, (s.tokenizer_workers or default_tokenizer_workers(s)) // s.api_workers)
        child = s.model_copy(update={"tokenizer_workers": per_worker, "api_workers": 0})
        env = {**os.environ, _SETTINGS_ENV: child.model_dump_json()}
        cmd = [sys.executable, "-m", "squeezer.server.workers", path, str(listener.fileno())]
        return subprocess.Popen(cmd, env=env, pass_fds=(listener.fileno(),), start_new_session=True)

    def _on_signal(self) -> None:
        if self.stop.is_set():  # a second signal: no more waiting
            for child in self.children:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            return
        log.info("draining %d API worker(s)", len(self.children))
        self.stop.set()

    async def _watch_children(self) -> None:
        """Replaces an API process that exits on its own; returns (and stops the
        server) when they keep dying (see the module docstring)."""
        deaths: deque[float] = deque()
        while not self.stop.is_set():
            for i, child in enumerate(self.children):
                if child.poll() is None:
                    continue
                now = time.monotonic()
                deaths.append(now)
                while now - deaths[0] > 60:
                    deaths.popleft()
                if not self.ready.is_set() or len(deaths) > 2 * len(self.children):
                    log.error(
                        "API worker %d exited with %s (%d deaths in a minute); stopping",
                        child.pid,
                        child.returncode,
                        len(deaths),
                    )
                    self.stop.set()
                    return
                self.children[i] = self._spawn()
                self.metrics.api_worker_restarts.inc()
                log.error(
                    "API worker %d exited with %s; started %d in its place",
                    child.pid,
                    child.returncode,
                    self.children[i].pid,
                )
            await asyncio.sleep(0.2)
        await asyncio.Event().wait()  # a signal stopped us: not a death

    async def _stop_children(self, *, graceful: bool) -> None:
        s = self.settings
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        deadline = time.monotonic() + s.drain_delay + s.shutdown_timeout + 5
        for child in self.children:
            try:
                await asyncio.to_thread(child.wait, max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                await asyncio.to_thread(child.wait)


class ApiProcesses:
    """The model lifecycle's peers (``lifecycle.Peers``): every API process, over the
    engine socket."""

    def __init__(self, server: EngineServer) -> None:
        self.server = server

    async def publish(self, snapshot: list[ModelStatus]) -> None:
        await self.server.broadcast("catalog", snapshot)

    async def retire(self, engine_key: str, timeout: float) -> None:
        await self.server.broadcast("retire", engine_key, timeout)


def _listen(host: str, port: int) -> socket.socket:
    """The TCP socket every API process accepts on, bound once here."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def api_worker(path: str, fd: int) -> None:
    """One API process: the app on the inherited socket, the engine over ``path``."""
    settings = Settings.model_validate_json(os.environ.pop(_SETTINGS_ENV))
    start_observing(settings, worker=f"api {os.getpid()}")
    remote = RemoteEngine(path)
    runtime = Runtime(settings, remote=remote)
    app = create_app(settings, runtime=runtime, metrics=RemoteMetrics(remote.note))
    config = uvicorn_config(app, settings)
    server = DrainingServer(
        config,
        app,
        settings.shutdown_timeout,
        lambda _: _serving(server, remote),
        drain_delay=settings.drain_delay,
    )
    # Not uvicorn's ``fd=``: it wraps the descriptor as AF_UNIX, so asyncio never sets
    # TCP_NODELAY on accepted connections, and Nagle's algorithm against delayed ACKs
    # then held every response ~40 ms. ``socket(fileno=)`` reads the real family.
    server.run(sockets=[socket.socket(fileno=fd)])
    if not server.started:
        raise SystemExit(3)


def _serving(server: DrainingServer, remote: RemoteEngine) -> None:
    """Tell the engine process this one is up; exit if the engine goes away."""
    remote.note("ready")

    async def watch() -> None:
        await remote.lost.wait()
        server.should_exit = True

    asyncio.get_running_loop().create_task(watch())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="a squeezer API process (started by serve)")
    p.add_argument("socket")
    p.add_argument("fd", type=int)
    args = p.parse_args()
    api_worker(args.socket, args.fd)
