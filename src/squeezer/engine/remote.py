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
import inspect
import itertools
import logging
import pickle
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from squeezer.engine.engine import Engine
from squeezer.engine.generation import Event, GenerationRequest, GenerationStream
from squeezer.errors import PayloadTooLargeError, SqueezerError, UnavailableError
from squeezer.types import Answer, EngineRequest

log = logging.getLogger("squeezer")

#: A frame: body size and the request it belongs to, then the pickled (kind, payload).
#: The id is outside the pickle so that a body that cannot be read still fails only
#: its own request.
_HEADER = struct.Struct("!IQ")
#: The largest frame either end writes or reads: a request or result past it fails
#: alone (a 413 / an error for that request), and a header claiming more is a broken
#: peer, not an allocation.
MAX_FRAME = 256 * 2**20
#: Message kinds. Client to engine: SUBMIT, OPEN (a generation), CANCEL, CALL (an
#: operator query or the model lifecycle's operation, by name), NOTE (no answer),
#: REPLY (a PUSH's answer). Engine to client: RESULT, ERROR, EVENT (a generation's
#: token), END (its last message), PUSH (the engine process asks every API process:
#: a new set of model versions, a version to let go of).
SUBMIT, OPEN, CANCEL, CALL, NOTE, REPLY = "submit", "open", "cancel", "call", "note", "reply"
RESULT, ERROR, EVENT, END, PUSH = "result", "error", "event", "end", "push"


class FrameError(Exception):
    """A frame whose body could not be read: only request ``ident`` is affected."""

    def __init__(self, ident: int, reason: str) -> None:
        super().__init__(f"malformed frame for request {ident}: {reason}")
        self.ident = ident


async def _read(reader: asyncio.StreamReader) -> tuple[str, int, Any]:
    size, ident = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > MAX_FRAME:
        raise ConnectionError(f"a frame of {size} bytes (at most {MAX_FRAME}): a broken peer")
    body = await reader.readexactly(size)
    try:
        kind, payload = pickle.loads(body)
    except Exception as e:  # the frame was read whole: the stream is still in step
        raise FrameError(ident, f"{type(e).__name__}: {e}") from e
    return kind, ident, payload


def _frame(kind: str, ident: int, payload: Any) -> bytes:
    body = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    if len(body) > MAX_FRAME:
        raise PayloadTooLargeError(
            f"a {kind} of {len(body) / 2**20:.0f} MiB does not fit the engine socket's "
            f"{MAX_FRAME // 2**20} MiB frames; send fewer or shorter inputs"
        )
    return _HEADER.pack(len(body), ident) + body


def _portable(exc: BaseException) -> BaseException:
    """What an API process can re-raise: squeezer's errors as they are (their status
    depends on the class), anything else as the message of an unexpected failure."""
    if isinstance(exc, SqueezerError):
        return exc
    return RuntimeError(f"{type(exc).__name__}: {exc}")


class EngineCalls(Protocol):
    """The engine as the API layer calls it, in-process (``Engine``) or over the
    socket (``RemoteEngine``)."""

    async def run(self, request: EngineRequest) -> Answer: ...

    async def open_stream(
        self, model: str, request: GenerationRequest
    ) -> GenerationStream | RemoteStream: ...


class EngineLink(EngineCalls, Protocol):
    """An API tier's whole tie to an engine it does not hold: the engine process's
    socket (``RemoteEngine``), or Ray Serve engine deployments
    (``squeezer.cluster.ray_engine.RayEngine``)."""

    #: Answers what the engine side pushes (new catalogs, retirements).
    on_push: Callable[..., Awaitable[Any]] | None
    #: Set when the engine is gone for good: the API process should exit.
    lost: asyncio.Event

    async def connect(self, attempts: int = 1, delay: float = 0.1) -> None: ...

    async def close(self) -> None: ...

    async def call(self, name: str, *args: Any) -> Any: ...

    def note(self, name: str, *args: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Hooks:
    """What the engine process answers besides compute: ``calls`` by name (model
    versions, rendered metrics, the model lifecycle's operations; a call may be a
    coroutine function), ``notes`` by name (HTTP observations from API processes,
    applied to the one metrics registry)."""

    calls: dict[str, Callable[..., Any]]
    notes: dict[str, Callable[..., None]]


class EngineServer:
    """Serves an ``Engine`` to API processes on a Unix socket."""

    def __init__(self, engine: Engine, hooks: Hooks) -> None:
        self.engine = engine
        self.hooks = hooks
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        #: PUSHes not yet answered: their futures, by id, and by connection.
        self._pushes: dict[int, asyncio.Future[Any]] = {}
        self._pushed_to: dict[asyncio.StreamWriter, set[int]] = {}
        self._push_ids = itertools.count(1)

    async def broadcast(self, name: str, *args: Any) -> None:
        """Ask every connected API process ``name(*args)``; returns when all have
        answered (an API process that leaves meanwhile counts as answered: what it
        held went with it). An API process's failure is raised here."""
        loop = asyncio.get_running_loop()
        waits = []
        for writer in list(self._writers):
            if writer.is_closing():
                continue
            ident = next(self._push_ids)
            future: asyncio.Future[Any] = loop.create_future()
            self._pushes[ident] = future
            self._pushed_to.setdefault(writer, set()).add(ident)
            writer.write(_frame(PUSH, ident, (name, args)))
            waits.append(future)
        await asyncio.gather(*waits)

    def _replied(self, writer: asyncio.StreamWriter, ident: int, answer: Any) -> None:
        self._pushed_to.get(writer, set()).discard(ident)
        future = self._pushes.pop(ident, None)
        if future is None or future.done():
            return
        kind, payload = answer
        if kind == ERROR:
            future.set_exception(payload)
        else:
            future.set_result(payload)

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

        async def send(kind: str, ident: int, payload: Any) -> None:
            """One frame, then wait while the API process is behind in reading (its
            socket buffer full): backpressure, not an unbounded write buffer here."""
            try:
                frame = _frame(kind, ident, payload)
            except PayloadTooLargeError as e:  # this answer cannot cross: say so instead
                frame = _frame(ERROR, ident, e)
            if not writer.is_closing():
                writer.write(frame)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()

        try:
            while True:
                try:
                    kind, ident, payload = await _read(reader)
                except FrameError as e:
                    log.error("engine socket: %s", e)
                    await send(ERROR, e.ident, UnavailableError(str(e)))
                    continue
                if kind == CANCEL:  # the HTTP client left: its stream, or its submit
                    if (stream := streams.get(ident)) is not None:
                        stream.cancel()
                    elif (task := running.get(ident)) is not None:
                        task.cancel()
                    continue
                if kind == NOTE:
                    self._note(payload)
                    continue
                if kind == REPLY:
                    self._replied(writer, ident, payload)
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
            for ident in self._pushed_to.pop(writer, set()):
                future = self._pushes.pop(ident, None)
                if future is not None and not future.done():
                    future.set_result(None)
            writer.close()

    def _note(self, payload: Any) -> None:
        """An API process's observation (metrics): one that fails is logged and
        dropped, never the connection that carried it."""
        try:
            name, args = payload
            self.hooks.notes[name](*args)
        except Exception:
            log.exception("engine socket: a note from an API process failed")

    async def _submit(self, ident: int, request: EngineRequest, send: _Send) -> None:
        try:
            result = await self.engine.run(request)
        except Exception as e:
            await send(ERROR, ident, _portable(e))
            return
        await send(RESULT, ident, result)

    async def _call(self, ident: int, payload: tuple[str, tuple[Any, ...]], send: _Send) -> None:
        try:
            name, args = payload
            result = self.hooks.calls[name](*args)
            if inspect.isawaitable(result):
                result = await result
        except Exception as e:
            await send(ERROR, ident, _portable(e))
            return
        await send(RESULT, ident, result)

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
            await send(ERROR, ident, _portable(e))
            return
        streams[ident] = stream
        await send(RESULT, ident, None)
        try:
            async for event in stream:
                await send(EVENT, ident, event)
            await send(END, ident, stream.finished)
        except Exception as e:
            await send(ERROR, ident, _portable(e))
        finally:
            streams.pop(ident, None)


_Send = Callable[[str, int, Any], Awaitable[None]]


def _forget(running: dict[int, Any], ident: int, _: object) -> None:
    running.pop(ident, None)


class RemoteStream(GenerationStream):
    """A generation running in the engine process, read as the engine's own stream:
    the socket's reader pushes its events (tokens, then ``Finished`` or an error)."""

    def __init__(self, ident: int, client: RemoteEngine) -> None:
        super().__init__(ident, client._cancel)

    def push(self, event: Event) -> None:
        """From the socket's reader, on this loop (not a compute thread's hop)."""
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
        #: Answers the engine process's PUSHes (``name, *args``); set before connect.
        self.on_push: Callable[..., Awaitable[Any]] | None = None
        self._push_tasks: set[asyncio.Task[None]] = set()
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

    async def run(self, request: EngineRequest) -> Answer:
        answer: Answer = await self._ask(SUBMIT, request)
        return answer

    async def submit(self, request: EngineRequest) -> list[Any]:
        return (await self.run(request)).results

    async def _drain(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()

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

    async def call(self, name: str, *args: Any) -> Any:
        return await self._ask(CALL, (name, args))

    async def _answer_push(self, ident: int, payload: tuple[str, tuple[Any, ...]]) -> None:
        name, args = payload
        try:
            if self.on_push is None:
                raise UnavailableError(f"this API process answers no push ({name})")
            answer: tuple[str, Any] = (RESULT, await self.on_push(name, *args))
        except Exception as e:
            log.exception("engine socket: push %s failed", name)
            answer = (ERROR, _portable(e))
        with contextlib.suppress(UnavailableError):
            self._send(REPLY, ident, answer)

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
            await self._drain()  # a large request waits for the socket, not in a buffer
            return await future
        except asyncio.CancelledError:  # the HTTP client left: stop the work too
            self._cancel(ident)
            raise
        finally:
            self._calls.pop(ident, None)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    kind, ident, payload = await _read(reader)
                except FrameError as e:  # an answer that cannot be read fails alone
                    log.error("engine socket: %s", e)
                    kind, ident, payload = ERROR, e.ident, UnavailableError(str(e))
                if kind == PUSH:  # answered in its own task: the reader reads on
                    task = asyncio.create_task(self._answer_push(ident, payload))
                    self._push_tasks.add(task)
                    task.add_done_callback(self._push_tasks.discard)
                    continue
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
