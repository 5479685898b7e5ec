"""A non-streamed generation whose client leaves is cancelled and answered with
nothing, not a 500 (found by benchmarks/fuzz.py: ``InvalidStateError`` when the
cancelled task was read before the loop had run it to its end)."""

from __future__ import annotations

import asyncio
from typing import Any

from squeezer.server.streaming import unless_disconnected


class _Gone:
    async def receive(self) -> dict[str, Any]:
        return {"type": "http.disconnect"}


class _Staying:
    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}


async def test_a_client_gone_cancels_the_work_and_gets_none() -> None:
    cancelled = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    assert await unless_disconnected(_Gone(), work()) is None  # type: ignore[arg-type]
    assert cancelled.is_set()


async def test_a_client_that_stays_gets_the_result_or_the_error() -> None:
    async def answer() -> str:
        return "done"

    async def failing() -> str:
        raise ValueError("bad")

    assert await unless_disconnected(_Staying(), answer()) == "done"  # type: ignore[arg-type]
    try:
        await unless_disconnected(_Staying(), failing())  # type: ignore[arg-type]
    except ValueError as e:
        assert str(e) == "bad"
    else:
        raise AssertionError("the work's error must reach the route")
