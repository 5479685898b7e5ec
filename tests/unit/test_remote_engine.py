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
from squeezer.engine.generation import FinishReason, GenerationRequest
from squeezer.engine.remote import EngineServer, Hooks, RemoteEngine
from squeezer.errors import (
    BackendError,
    ModelNotFoundError,
    OverloadedError,
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
