"""The engine behind a local socket, for API-server processes in front of it.

One Python process tops out at a few thousand HTTP requests per second: parsing,
validation, tokenization and JSON all hold one GIL. With ``--api-workers N`` that work
runs in N processes and the engine (the models, the batch queues, the device threads)
stays in one process that owns the GPU, the split vLLM makes between its API servers
and its engine core. This module is the wire between them: the engine's two calls
(``submit`` a tokenized request, ``open_stream`` a generation) and what operators read
(model infos, metrics), over a Unix socket with length-prefixed pickle frames.

Pickle, not JSON: requests are tokenized dataclasses and results numpy arrays, which
pickle writes as raw bytes. The socket lives in a directory only this user can open,
and both ends are the same program, so nothing untrusted is ever unpickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import pickle
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from squeezer.engine.engine import Engine
from squeezer.engine.generation import Event, GenerationRequest, GenerationStream
from squeezer.errors import SqueezerError, UnavailableError
from squeezer.types import EngineRequest

log = logging.getLogger("squeezer")

_HEADER = struct.Struct("!I")
#: Message kinds. Client to engine: SUBMIT, OPEN (a generation), CANCEL, CALL (an
#: operator query by name), NOTE (no answer). Engine to client: RESULT, ERROR, EVENT
#: (a generation's token), END (its last message).
SUBMIT, OPEN, CANCEL, CALL, NOTE = "submit", "open", "cancel", "call", "note"
RESULT, ERROR, EVENT, END = "result", "error", "event", "end"


async def _read(reader: asyncio.StreamReader) -> tuple[str, int, Any]:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    kind, ident, payload = pickle.loads(await reader.readexactly(size))
    return kind, ident, payload


def _frame(kind: str, ident: int, payload: Any) -> bytes:
    body = pickle.dumps((kind, ident, payload), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def _portable(exc: BaseException) -> BaseException:
    """What an API process can re-raise: squeezer's errors as they are (their status
    depends on the class), anything else as the message of an unexpected failure."""
    if isinstance(exc, SqueezerError):
        return exc
    return RuntimeError(f"{type(exc).__name__}: {exc}")


class EngineCalls(Protocol):
    """The engine as the API layer calls it, in-process (``Engine``) or over the
    socket (``RemoteEngine``)."""

    async def submit(self, request: EngineRequest) -> list[Any]: ...

    async def open_stream(
        self, model: str, request: GenerationRequest
    ) -> GenerationStream | RemoteStream: ...


@dataclass(frozen=True, slots=True)
class Hooks:
    """What the engine process answers besides compute: ``calls`` by name (model
    infos, rendered metrics), ``notes`` by name (HTTP observations from API
    processes, applied to the one metrics registry)."""

    calls: dict[str, Callable[[], Any]]
    notes: dict[str, Callable[..., None]]


class EngineServer:
    """Serves an ``Engine`` to API processes on a Unix socket."""

    def __init__(self, engine: Engine, hooks: Hooks) -> None:
        self.engine = engine
        self.hooks = hooks
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, path: str) -> None:
        self._server = await asyncio.start_unix_server(self._connection, path=path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):  # API processes see the engine leave
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        streams: dict[int, GenerationStream] = {}
        running: dict[int, asyncio.Task[None]] = {}
        self._writers.add(writer)

        def send(kind: str, ident: int, payload: Any) -> None:
            if not writer.is_closing():
                writer.write(_frame(kind, ident, payload))

        try:
            while True:
                kind, ident, payload = await _read(reader)
                if kind == CANCEL:  # the HTTP client left: its stream, or its submit
                    if (stream := streams.get(ident)) is not None:
                        stream.cancel()
                    elif (task := running.get(ident)) is not None:
                        task.cancel()
                    continue
                if kind == NOTE:
                    name, args = payload
                    self.hooks.notes[name](*args)
                    continue
                if kind == SUBMIT:
                    job = self._submit(ident, payload, send)
                elif kind == OPEN:
                    job = self._open(ident, payload, send, streams)
                else:
                    job = self._call(ident, payload, send)
                task = asyncio.create_task(job)
                running[ident] = task
                self._tasks.add(task)
                task.add_done_callback(functools.partial(_forget, running, ident))
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the API process went away: what it started is of no use to anyone
        finally:
            for stream in streams.values():
                stream.cancel()
            for task in list(running.values()):
                task.cancel()
            self._writers.discard(writer)
            writer.close()

    async def _submit(self, ident: int, request: EngineRequest, send: _Send) -> None:
        try:
            send(RESULT, ident, await self.engine.submit(request))
        except Exception as e:
            send(ERROR, ident, _portable(e))

    async def _call(self, ident: int, name: str, send: _Send) -> None:
        try:
            send(RESULT, ident, self.hooks.calls[name]())
        except Exception as e:
            send(ERROR, ident, _portable(e))

    async def _open(
        self,
        ident: int,
        payload: tuple[str, GenerationRequest],
        send: _Send,
        streams: dict[int, GenerationStream],
    ) -> None:
        model, request = payload
        try:
            stream = self.engine.generate(model, request)
        except Exception as e:  # refused before it started: a 4xx, not a broken stream
            send(ERROR, ident, _portable(e))
            return
        streams[ident] = stream
        send(RESULT, ident, None)
        try:
            async for event in stream:
                send(EVENT, ident, event)
            send(END, ident, stream.finished)
        except Exception as e:
            send(ERROR, ident, _portable(e))
        finally:
            streams.pop(ident, None)


_Send = Callable[[str, int, Any], None]


def _forget(running: dict[int, Any], ident: int, _: object) -> None:
    running.pop(ident, None)


class RemoteStream(GenerationStream):
    """A generation running in the engine process, read as the engine's own stream:
    the socket's reader pushes its events (tokens, then ``Finished`` or an error)."""

    def __init__(self, ident: int, client: RemoteEngine) -> None:
        # Not the scheduler's stream: nothing here is pushed from a compute thread.
        self.id = ident
        self._client = client
        self._queue = asyncio.Queue()
        self.finished = None

    def cancel(self) -> None:
        self._client._cancel(self.id)

    def push(self, event: Event) -> None:
        self._queue.put_nowait(event)


class RemoteEngine:
    """The engine's calls, made from an API process over the engine's socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, RemoteStream] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        #: Set when the engine process went away; the API process should exit.
        self.lost = asyncio.Event()

    async def connect(self, attempts: int = 1, delay: float = 0.1) -> None:
        for attempt in range(attempts):
            try:
                reader, self._writer = await asyncio.open_unix_connection(self.path)
                break
            except OSError:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(delay)
        self._reading = asyncio.create_task(self._read_loop(reader))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading

    async def submit(self, request: EngineRequest) -> list[Any]:
        result: list[Any] = await self._ask(SUBMIT, request)
        return result

    async def open_stream(self, model: str, request: GenerationRequest) -> RemoteStream:
        """Start a generation; refusals (overload, unknown model) raise here."""
        ident = next(self._ids)
        stream = RemoteStream(ident, self)
        self._streams[ident] = stream
        try:
            await self._ask(OPEN, (model, request), ident=ident)
        except BaseException:
            self._streams.pop(ident, None)
            raise
        return stream

    async def call(self, name: str) -> Any:
        return await self._ask(CALL, name)

    def note(self, name: str, *args: Any) -> None:
        self._send(NOTE, 0, (name, args))

    def _cancel(self, ident: int) -> None:
        with contextlib.suppress(UnavailableError):
            self._send(CANCEL, ident, None)

    def _send(self, kind: str, ident: int, payload: Any) -> None:
        if self._writer is None or self._writer.is_closing() or self.lost.is_set():
            raise UnavailableError("the engine process is not reachable")
        self._writer.write(_frame(kind, ident, payload))

    def _ask(self, kind: str, payload: Any, *, ident: int | None = None) -> Awaitable[Any]:
        ident = next(self._ids) if ident is None else ident
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[ident] = future
        try:
            self._send(kind, ident, payload)
        except BaseException:
            self._calls.pop(ident, None)
            raise
        return self._answer(ident, future)

    async def _answer(self, ident: int, future: asyncio.Future[Any]) -> Any:
        try:
            return await future
        except asyncio.CancelledError:  # the HTTP client left: stop the work too
            self._cancel(ident)
            raise
        finally:
            self._calls.pop(ident, None)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, ident, payload = await _read(reader)
                if kind in (EVENT, END) or (kind == ERROR and ident not in self._calls):
                    stream = (
                        self._streams.get(ident)
                        if kind == EVENT
                        else self._streams.pop(ident, None)
                    )
                    if stream is not None:
                        stream.push(payload)
                    continue
                # Taken out at once: a stream's ERROR may follow its acceptance in
                # the same read, and must go to the stream, not to the answered call.
                future = self._calls.pop(ident, None)
                if future is None or future.done():
                    continue
                if kind == ERROR:
                    future.set_exception(payload)
                else:
                    future.set_result(payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.error("the engine process closed its socket; this API process stops")
        finally:
            self.lost.set()
            gone = UnavailableError("the engine process went away")
            for future in self._calls.values():
                if not future.done():
                    future.set_exception(gone)
            for stream in self._streams.values():
                stream.push(gone)
            self._streams.clear()
