"""The engine over its Unix socket (``engine/remote.py``), as API processes use it:
results and errors as the engine gives them, streams as the scheduler samples them,
and whoever leaves (client or engine) leaves nothing running behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from squeezer.backends.torch_generation import TorchGenerationBackend
from squeezer.engine import Engine, EngineLimits
from squeezer.engine import remote as remote_module
from squeezer.engine.generation import FinishReason, GenerationRequest, GenerationStream
from squeezer.engine.remote import EngineServer, Hooks, RemoteEngine
from squeezer.errors import (
    BackendError,
    ModelNotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    UnavailableError,
)
from tests.unit.test_engine import FakeBackend, FakeRunner, Gate, Recorder, req, until
from tests.unit.test_torch_generation import PROMPTS, _alone, _build


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("llama"), "llama")


@dataclass
class Wired:
    engine: Engine
    server: EngineServer
    remote: RemoteEngine
    gate: Gate
    notes: list[tuple[str, ...]]


@pytest.fixture
async def wired(tiny_llama: Path, tmp_path: Path) -> AsyncIterator[Wired]:
    gate = Gate()
    engine = Engine(EngineLimits(max_concurrent_requests=2))
    engine.add_model("m", FakeBackend("m", Recorder(), gate), FakeRunner(), device="cpu")
    backend = TorchGenerationBackend(tiny_llama, max_slots=2, max_len=64)
    engine.add_generator(
        "llama", backend, device="cpu", max_batch_total_tokens=4096, max_concurrent_requests=8
    )
    await engine.start()
    notes: list[tuple[str, ...]] = []
    hooks = Hooks(
        calls={"models": lambda: ["m", "llama"]},
        notes={"seen": lambda *args: notes.append(args)},
    )
    server = EngineServer(engine, hooks)
    path = str(tmp_path / "engine.sock")
    await server.start(path)
    remote = RemoteEngine(path)
    await remote.connect()
    yield Wired(engine, server, remote, gate, notes)
    gate.open()
    await remote.close()
    await server.close()
    await engine.stop(5)


async def test_results_and_errors_come_back_as_the_engine_gives_them(wired: Wired) -> None:
    wired.gate.open()
    assert await wired.remote.submit(req("m", "a", "b")) == ["m:a", "m:b"]
    with pytest.raises(BackendError, match="RuntimeError: boom in forward"):
        await wired.remote.submit(req("m", "boom"))
    with pytest.raises(ModelNotFoundError, match="'nope' is not served"):
        await wired.remote.submit(req("nope", "a"))
    assert await wired.remote.call("models") == ["m", "llama"]
    wired.remote.note("seen", "x", 1)
    await until(lambda: wired.notes == [("x", 1)], "the note arrived")


async def test_timings_cross_the_socket_with_the_answer(wired: Wired) -> None:
    """What an API process stamps its trace spans and access-log line from: the
    engine's queue wait and the batches the request's items were in."""
    wired.gate.open()
    answer = await wired.remote.run(req("m", "a", "b", "c"))
    assert answer.results == ["m:a", "m:b", "m:c"]
    timing = answer.timing
    assert timing.queued_s >= 0 and timing.batches
    assert sum(b.size for b in timing.batches) >= 3
    for b in timing.batches:
        assert b.start_ns <= b.forward_start_ns <= b.forward_end_ns <= b.end_ns
    assert timing.compute_s == sum(b.end_ns - b.start_ns for b in timing.batches) / 1e9


async def test_overload_keeps_its_retry_after(wired: Wired) -> None:
    held = [asyncio.create_task(wired.remote.submit(req("m", f"h{i}"))) for i in range(2)]
    await wired.gate.wait_entered(1)
    await until(lambda: wired.engine.in_flight == 2, "both admitted")
    with pytest.raises(OverloadedError) as refused:
        await wired.remote.submit(req("m", "third"))
    assert refused.value.retry_after_s == 1.0  # the attribute survives the socket
    wired.gate.open()
    assert [await t for t in held] == [["m:h0"], ["m:h1"]]


async def test_a_cancelled_call_drops_its_queued_items_in_the_engine(wired: Wired) -> None:
    first = asyncio.create_task(wired.remote.submit(req("m", "first")))
    await wired.gate.wait_entered(1)
    gone = asyncio.create_task(wired.remote.submit(req("m", "gone")))
    await until(lambda: wired.engine.queue_depth("m") == 1, "queued behind the first")
    gone.cancel()  # the HTTP client left
    await until(lambda: wired.engine.queue_depth("m") == 0, "dropped in the engine")
    wired.gate.open()
    assert await first == ["m:first"]
    assert wired.engine.in_flight == 0


async def test_streams_equal_generate_and_leaving_one_frees_its_slot(
    wired: Wired, tiny_llama: Path
) -> None:
    stream = await wired.remote.open_stream("llama", GenerationRequest(PROMPTS[0], 6))
    assert [out.token async for out in stream] == _alone(tiny_llama, PROMPTS[0], 6)
    assert stream.finished is not None and stream.finished.reason is FinishReason.LENGTH

    long = await wired.remote.open_stream("llama", GenerationRequest(PROMPTS[1], 50))
    async for _ in long:
        break  # leaving the loop cancels, as a disconnect does
    scheduler = wired.engine.generator("llama")
    await until(lambda: scheduler.load == (0, 0), "the sequence left the engine")

    with pytest.raises(ModelNotFoundError):  # refused before it started: not mid-stream
        await wired.remote.open_stream("m2", GenerationRequest(PROMPTS[0], 2))


async def test_a_lost_client_cancels_its_streams(wired: Wired) -> None:
    other = RemoteEngine(wired.remote.path)
    await other.connect()
    await other.open_stream("llama", GenerationRequest(PROMPTS[1], 50))
    scheduler = wired.engine.generator("llama")
    await until(lambda: scheduler.load[0] == 1, "decoding")
    await other.close()  # an API process that died
    await until(lambda: scheduler.load == (0, 0), "cancelled in the engine")


async def test_a_lost_engine_fails_what_waits_and_what_comes(wired: Wired) -> None:
    waiting = asyncio.create_task(wired.remote.submit(req("m", "held")))
    await wired.gate.wait_entered(1)
    await wired.server.close()  # the engine process went away
    with pytest.raises(UnavailableError, match="engine process went away"):
        await waiting
    assert wired.remote.lost.is_set()
    with pytest.raises(UnavailableError, match="not reachable"):
        await wired.remote.submit(req("m", "after"))


async def test_a_failing_note_or_a_malformed_frame_ends_no_other_request(
    wired: Wired,
) -> None:
    """A note whose handler raises, an unknown note and a frame whose body cannot be
    unpickled each fail at most their own request: the connection, and the API
    process on it, go on serving."""
    wired.gate.open()
    wired.remote.note("unknown-note", 1)
    wired.remote.note("seen")  # the handler is fine; missing arguments are not
    wired.remote.note("seen", "ok")
    writer = wired.remote._writer
    assert writer is not None
    future = asyncio.get_running_loop().create_future()
    wired.remote._calls[77] = future
    writer.write(remote_module._HEADER.pack(5, 77) + b"\x80junk")  # not a pickle
    with pytest.raises(UnavailableError, match="malformed frame for request 77"):
        await asyncio.wait_for(future, 5)
    assert await wired.remote.submit(req("m", "after")) == ["m:after"]
    await until(lambda: ("ok",) in wired.notes, "later notes arrive")
    assert not wired.remote.lost.is_set()


async def test_a_frame_past_the_bound_fails_only_its_request(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    wired.gate.open()
    monkeypatch.setattr(remote_module, "MAX_FRAME", 4096)
    with pytest.raises(PayloadTooLargeError, match="engine socket"):
        await wired.remote.submit(req("m", *(f"item{i}" for i in range(400))))
    assert await wired.remote.submit(req("m", "small")) == ["m:small"]


async def test_a_remote_stream_is_a_whole_generation_stream(wired: Wired) -> None:
    """RemoteStream initialises as GenerationStream does (it skipped the base's
    __init__, so attributes the base set were missing)."""
    stream = await wired.remote.open_stream("llama", GenerationRequest(PROMPTS[1], 3))
    base = GenerationStream(0, lambda seq: None)
    assert {"id", "_queue", "_loop", "finished", "_on_cancel"} <= set(vars(stream))
    assert set(vars(base)) <= set(vars(stream))
    assert len([t async for t in stream]) == 3 and stream.finished is not None
