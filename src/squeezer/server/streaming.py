"""What every generation dialect needs from HTTP: server-sent events, per-token steps,
and a client that goes away cancelling its work.

A streamed response notices a client gone at its next write (the server's send
fails), which cancels the generator and so the engine's sequence. A non-streamed
response writes nothing until the end, so it watches for the disconnect itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import replace
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import StreamingResponse

from squeezer.server.errors import error_body
from squeezer.tasks.generate import TextDelta, TextDone

T = TypeVar("T")


def random_seed() -> int:
    """A seed for a request that sent none; reported back so it can be replayed."""
    return secrets.randbits(63)


def sse_event(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n\n"


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def error_event(error: Exception, path: str) -> bytes:
    """An error after the response has started: the dialect's error body as an event
    (an unexpected one is logged with its traceback and sent as an internal error)."""
    return sse_event(error_body(error, path))


async def token_steps(
    events: AsyncGenerator[TextDelta | TextDone, None],
) -> AsyncGenerator[tuple[TextDelta, TextDone | None], None]:
    """One item per generated token; the last carries the ``TextDone``.

    A token goes out as soon as it is sampled: the engine marks the last one
    (``final``), and only that one waits, for the ``TextDone`` that comes right after
    it. Text left at the end of a stream that ended unmarked (none does today) goes
    out as an item of its own (token -1). Closing this closes ``events``, which
    cancels the engine's sequence.
    """
    held: TextDelta | None = None
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, TextDone):
                if held is None:  # nothing was generated: cannot happen, but say so
                    raise RuntimeError("generation ended without a token")
                yield held, event
                return
            if held is not None:  # text after the last token: it joins that one
                held = replace(held, text=held.text + event.text)
            elif event.final or event.token < 0:
                held = event
            else:
                yield event, None


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await ``work``, cancelling it if the client disconnects first (a non-streamed
    generation would otherwise run to its end for nobody); None then."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            # A cancelled task is done only once the loop has run it to its end: read
            # before that, ``result()`` raised InvalidStateError (a 500 for a client
            # that had already left; found by benchmarks/fuzz.py).
            await asyncio.wait({task})
    if task.cancelled():
        return None
    return task.result()


_END = object()


async def merge(iterators: list[AsyncGenerator[T, None]]) -> AsyncGenerator[T, None]:
    """Items of several iterators as each produces them (OpenAI's ``n`` > 1 choices
    stream interleaved). Closing this closes all of them."""
    if len(iterators) == 1:
        async with contextlib.aclosing(iterators[0]) as only:
            async for item in only:
                yield item
        return
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump(iterator: AsyncGenerator[T, None]) -> None:
        try:
            async with contextlib.aclosing(iterator):
                async for item in iterator:
                    await queue.put(item)
        except Exception as e:
            await queue.put(e)
        finally:
            await queue.put(_END)

    tasks = [asyncio.ensure_future(pump(it)) for it in iterators]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is _END:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
