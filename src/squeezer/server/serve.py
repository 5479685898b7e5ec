"""Run the app under uvicorn with a drain that load balancers can see.

On the first SIGTERM/SIGINT the server keeps listening but ``/ready`` turns 503 and
new requests get 503, every accepted request is finished, and only then does uvicorn
close its sockets and run the shutdown (bounded by ``--shutdown-timeout``). A second
signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from squeezer.config import Settings
from squeezer.server import tracing
from squeezer.server.app import create_app
from squeezer.server.logs import access_log, configure_logging

log = logging.getLogger("squeezer")


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        app: FastAPI,
        drain_timeout: float,
        announce: Callable[[int], None],
        drain_delay: float = 0.0,
    ) -> None:
        super().__init__(config)
        self._drain_delay = drain_delay
        self._app = app
        self._announce = announce
        self._drain_timeout = drain_timeout
        self._draining: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started and self.servers:
            port = self.servers[0].sockets[0].getsockname()[1]
            self._announce(port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals on purpose: after a drain the process exits 0
        # instead of uvicorn re-raising the signal at itself.
        if self._draining is not None or not self.started or self._loop is None:
            super().handle_exit(sig, frame)  # second signal, or still starting: plain exit
            return
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        state = self._app.state
        await state.runtime.begin_drain()
        if self._drain_delay > 0:
            log.info("draining: /ready is 503; still serving for %.1f s", self._drain_delay)
            await asyncio.sleep(self._drain_delay)
        log.info("draining: finishing %d request(s) in flight", state.in_flight.count)
        # One deadline for the whole drain: the requests in flight, then uvicorn's wait
        # for its tasks, then the engine's stop each get what is left of it, not a
        # fresh --shutdown-timeout each (which made 3x the documented bound).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._drain_timeout
        state.runtime.drain_deadline = deadline
        try:
            await asyncio.wait_for(state.in_flight.wait_idle(), self._drain_timeout)
        except TimeoutError:
            log.warning("drain timed out after %g s; exiting", self._drain_timeout)
        self.config.timeout_graceful_shutdown = graceful_timeout(deadline - loop.time())
        self.should_exit = True


def announce_serving(settings: Settings, port: int, cold_start_s: float) -> None:
    """The line people (and scripts) wait for: on stdout as text, or as one more JSON
    log line with ``--log-format json`` (a pipeline reading the output sees only JSON)."""
    scheme = "https" if settings.ssl_certfile else "http"
    workers = f"{settings.api_workers} API workers; " if settings.api_workers else ""
    line = (
        f"squeezer serving on {scheme}://{settings.host}:{port} (cold start "
        f"{cold_start_s:.1f} s; models {', '.join(m.name for m in settings.models)}; "
        f"{workers}API docs at /docs)"
    )
    if settings.log_format == "json":
        log.info(line)
    else:
        print(line, flush=True)


def graceful_timeout(seconds: float) -> Any:
    """uvicorn's wait for open connections at shutdown, as a float: its annotation says
    int, and ``int(0.5) or None`` turned a half-second timeout into no limit at all."""
    return max(0.0, seconds)


def start_observing(settings: Settings, *, worker: str = "") -> None:
    """This process's logging (format, request ids, the access log) and, when the
    ``OTEL_*`` variables ask for them, its traces."""
    configure_logging(settings.log_level, settings.log_format, worker=worker)
    if not settings.access_log:
        access_log.setLevel(logging.WARNING)
    tracing.configure()


def uvicorn_config(app: FastAPI, settings: Settings, **where: Any) -> uvicorn.Config:
    """uvicorn as every serving process runs it: TLS when configured, our logging
    (``log_config=None`` keeps uvicorn from installing its own), no access log of its
    own (ours has the request id, the model and the tokens)."""
    return uvicorn.Config(
        app,
        **where,
        log_level=settings.log_level,
        log_config=None,
        timeout_graceful_shutdown=graceful_timeout(settings.shutdown_timeout),
        access_log=False,
        lifespan="on",
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
    )


def run_server(settings: Settings) -> None:
    """Build the app from ``settings`` and serve it until a signal drains it."""
    start_observing(settings)
    if settings.api_workers:
        from squeezer.server.workers import run_with_api_workers

        run_with_api_workers(settings)
        return
    t0 = time.perf_counter()
    app = create_app(settings)
    config = uvicorn_config(app, settings, host=settings.host, port=settings.port)

    def announce(port: int) -> None:
        announce_serving(settings, port, time.perf_counter() - t0)

    server = DrainingServer(
        config, app, settings.shutdown_timeout, announce, drain_delay=settings.drain_delay
    )
    server.run()
    if not server.started:
        raise SystemExit(3)
