"""A drain ends within --shutdown-timeout: one deadline shared by the requests in
flight, uvicorn's wait for its connections and the engine's stop."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import uvicorn

from squeezer.config import Settings
from squeezer.server.runtime import Runtime
from squeezer.server.serve import DrainingServer, graceful_timeout


class _StuckRequests:
    count = 1

    async def wait_idle(self) -> None:
        await asyncio.Event().wait()  # a stream that would outlive any timeout


class _Runtime:
    drain_deadline: float | None = None

    async def begin_drain(self) -> None:
        pass


def test_a_fractional_timeout_stays_a_timeout() -> None:
    """``int(0.5) or None`` made uvicorn wait forever for open connections."""
    config = uvicorn.Config(app=None, timeout_graceful_shutdown=graceful_timeout(0.5))
    assert config.timeout_graceful_shutdown == 0.5
    assert graceful_timeout(0) == 0.0 and graceful_timeout(-1.0) == 0.0


async def test_the_drain_hands_what_is_left_of_its_deadline_on() -> None:
    state = SimpleNamespace(runtime=_Runtime(), in_flight=_StuckRequests())
    app: Any = SimpleNamespace(state=state)
    config = uvicorn.Config(app=None, timeout_graceful_shutdown=graceful_timeout(0.3))
    server = DrainingServer(config, app, 0.3, lambda port: None)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await server._drain()
    assert server.should_exit
    # uvicorn gets what is left (about nothing), not another 0.3 s.
    assert 0.0 <= config.timeout_graceful_shutdown <= 0.05
    assert abs(state.runtime.drain_deadline - (start + 0.3)) < 0.05


async def test_the_engine_stop_gets_what_is_left_of_the_drain(monkeypatch: Any) -> None:
    runtime = Runtime(Settings(models=[], shutdown_timeout=30))
    seen: list[float] = []

    async def stop(timeout: float) -> None:
        seen.append(timeout)

    monkeypatch.setattr(runtime.engine, "stop", stop)
    runtime.drain_deadline = asyncio.get_running_loop().time() - 1  # spent on requests
    await runtime.stop()
    assert seen == [0.0]
