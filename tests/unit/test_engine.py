"""Engine (engine/engine.py + engine/queue.py): admission, batching, turns, deadlines, drain.

No wall-clock assertions: a fake clock drives deadlines and queue waits, and a gate
holds the compute thread inside ``forward`` so work can be queued behind it and the
next batch's shape asserted once the gate opens.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from squeezer.engine import Engine, EngineLimits
from squeezer.errors import (
    BackendError,
    DeadlineExceededError,
    DeviceOutOfMemoryError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    UnavailableError,
)
from squeezer.types import EngineRequest, NamedArrays

# -- fakes ---------------------------------------------------------------------------


@dataclass
class Item:
    tag: str
    num_tokens: int = 4


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Gate:
    """Holds every forward pass until released; counts passes that have entered."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._permits = 0
        self._open = False
        self.entered = 0

    def pass_through(self) -> None:
        with self._cond:
            self.entered += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._open or self._permits > 0, timeout=10)
            if not self._open and self._permits > 0:
                self._permits -= 1

    def release(self, n: int = 1) -> None:
        with self._cond:
            self._permits += n
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    async def wait_entered(self, n: int) -> None:
        def wait() -> bool:
            with self._cond:
                return self._cond.wait_for(lambda: self.entered >= n, timeout=5)

        assert await asyncio.to_thread(wait), f"forward pass {n} never started"


@dataclass
class Recorder:
    """What every forward pass saw, shared by all fake backends of a test."""

    batches: list[tuple[str, list[str]]] = field(default_factory=list)
    lengths: list[list[int]] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    active: int = 0
    max_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tags(self, model: str | None = None) -> list[list[str]]:
        return [tags for m, tags in self.batches if model is None or m == model]

    def seen(self) -> set[str]:
        return {t for _, tags in self.batches for t in tags}


class FakeBackend:
    name = "fake"
    dtype = "float32"
    output_names = ("tags",)

    def __init__(
        self, model: str, rec: Recorder, gate: Gate | None = None, device: str = "cpu"
    ) -> None:
        self.model, self.rec, self.gate, self.device = model, rec, gate, device
        #: Device memory for this many rows at most; "huge" inputs never fit.
        self.max_rows: int | None = None

    def forward(self, inputs: NamedArrays, outputs: Sequence[str] | None = None) -> NamedArrays:
        assert outputs == ("tags",)
        tags = [str(t) for t in inputs["tags"]]
        with self.rec.lock:
            self.rec.active += 1
            self.rec.max_active = max(self.rec.max_active, self.rec.active)
            self.rec.batches.append((self.model, tags))
            self.rec.lengths.append([int(n) for n in inputs["lens"]])
            self.rec.threads.add(threading.current_thread().name)
        try:
            if self.gate is not None:
                self.gate.pass_through()
            if any(t.startswith("boom") for t in tags):
                raise RuntimeError("boom in forward")
            if self.max_rows is not None and (
                len(tags) > self.max_rows or any(t.startswith("huge") for t in tags)
            ):
                raise DeviceOutOfMemoryError(f"{len(tags)} rows did not fit")
            return {"tags": np.array([f"{self.model}:{t}" for t in tags], dtype=object)}
        finally:
            with self.rec.lock:
                self.rec.active -= 1

    def close(self) -> None:
        pass


class FakeRunner:
    def __init__(self, split_error: Exception | None = None, short_split: bool = False) -> None:
        self.split_error = split_error
        self.short_split = short_split

    def outputs(self, items: Sequence[Item]) -> tuple[str, ...]:
        return ("tags",)

    def collate(self, items: Sequence[Item]) -> NamedArrays:
        return {
            "tags": np.array([i.tag for i in items], dtype=object),
            "lens": np.array([i.num_tokens for i in items]),
        }

    def split(self, outputs: NamedArrays, items: Sequence[Item]) -> list[str]:
        if self.split_error is not None and any(i.tag == "bad" for i in items):
            raise self.split_error
        out = [str(x) for x in outputs["tags"]]
        return out[:-1] if self.short_split else out


class Observer:
    def __init__(self) -> None:
        self.batches: list[tuple[str, int, int, int]] = []
        self.waits: list[tuple[str, float]] = []
        self.depths: list[tuple[str, int]] = []

    def on_batch(
        self, model: str, size: int, padded_tokens: int, real_tokens: int, compute_s: float
    ) -> None:
        assert compute_s >= 0
        self.batches.append((model, size, padded_tokens, real_tokens))

    def on_queue_wait(self, model: str, seconds: float) -> None:
        self.waits.append((model, seconds))

    def on_queue_depth(self, model: str, depth: int) -> None:
        self.depths.append((model, depth))


@dataclass
class Env:
    clock: Clock
    rec: Recorder
    gate: Gate
    engines: list[Engine] = field(default_factory=list)

    def engine(self, observer: Any = None, **limits: Any) -> Engine:
        engine = Engine(EngineLimits(**limits), observer=observer, clock=self.clock)
        self.engines.append(engine)
        return engine

    def model(
        self,
        engine: Engine,
        name: str = "m",
        *,
        device: str = "cpu",
        gated: bool = True,
        runner: FakeRunner | None = None,
        **kw: Any,
    ) -> None:
        backend = FakeBackend(name, self.rec, self.gate if gated else None, device)
        engine.add_model(name, backend, runner or FakeRunner(), device=device, **kw)


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = Env(Clock(), Recorder(), Gate())
    yield e
    e.gate.open()
    for engine in e.engines:
        await engine.stop(5)


def req(model: str, *tags: str | tuple[str, int], deadline: float | None = None) -> EngineRequest:
    items = [Item(t) if isinstance(t, str) else Item(*t) for t in tags]
    return EngineRequest(model=model, items=items, deadline=deadline)


def submit(engine: Engine, request: EngineRequest) -> asyncio.Task[list[Any]]:
    return asyncio.create_task(engine.submit(request))


async def until(cond: Callable[[], bool], what: str) -> None:
    """Wait for a condition another task or thread makes true (bounded, not timed)."""
    for _ in range(5000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


async def busy(env: Env, engine: Engine, model: str = "m", tag: str = "busy") -> asyncio.Task:
    """Occupy the compute thread with one gated forward pass of ``model``."""
    task = submit(engine, req(model, tag))
    await env.gate.wait_entered(env.gate.entered + 1)
    return task


# -- dispatch and batch shape ---------------------------------------------------------


async def test_first_request_runs_alone_and_those_queued_meanwhile_batch_next(env: Env) -> None:
    engine = env.engine()
    env.model(engine)
    await engine.start()
    first = await busy(env, engine, tag="r1")
    r2, r3 = submit(engine, req("m", "r2")), submit(engine, req("m", "r3"))
    await until(lambda: engine.queue_depth("m") == 2, "two queued")
    env.gate.open()
    assert await first == ["m:r1"]
    assert await r2 == ["m:r2"] and await r3 == ["m:r3"]
    assert env.rec.tags() == [["r1"], ["r2", "r3"]]


async def test_batches_respect_the_padded_token_budget_and_the_request_cap(env: Env) -> None:
    engine = env.engine(max_batch_tokens=64, max_batch_requests=3)
    env.model(engine)
    await engine.start()
    first = await busy(env, engine)
    lengths = [5, 30, 7, 16, 16, 2, 40, 9, 3, 31, 8, 12]
    tasks = [submit(engine, req("m", (f"t{i}", n))) for i, n in enumerate(lengths)]
    await until(lambda: engine.queue_depth("m") == len(lengths), "all queued")
    env.gate.open()
    await first
    for i, task in enumerate(tasks):
        assert await task == [f"m:t{i}"]
    for batch in env.rec.lengths[1:]:
        assert len(batch) <= 3
        assert len(batch) * max(batch) <= 64
    assert sorted(n for b in env.rec.lengths[1:] for n in b) == sorted(lengths)


async def test_a_single_item_over_the_budget_runs_alone(env: Env) -> None:
    engine = env.engine(max_batch_tokens=32)
    env.model(engine)
    await engine.start()
    first = await busy(env, engine)
    big = submit(engine, req("m", ("big", 100)))
    small = submit(engine, req("m", ("s1", 4), ("s2", 4)))
    await until(lambda: engine.queue_depth("m") == 3, "queued")
    env.gate.open()
    await first
    assert await big == ["m:big"]
    assert await small == ["m:s1", "m:s2"]
    assert env.rec.tags()[1:] == [["big"], ["s1", "s2"]]


async def test_results_keep_item_order_across_mixed_batches_and_spanning_requests(
    env: Env,
) -> None:
    engine = env.engine(max_batch_requests=2)
    env.model(engine)
    await engine.start()
    first = await busy(env, engine)
    a = submit(engine, req("m", ("a0", 50), ("a1", 3), ("a2", 50), ("a3", 3), ("a4", 20)))
    b = submit(engine, req("m", ("b0", 3), ("b1", 50)))
    await until(lambda: engine.queue_depth("m") == 7, "queued")
    env.gate.open()
    await first
    assert await a == ["m:a0", "m:a1", "m:a2", "m:a3", "m:a4"]
    assert await b == ["m:b0", "m:b1"]
    batches = env.rec.tags()[1:]
    assert len(batches) == 4  # 7 items, at most 2 per batch
    # The oldest (a0, 50 tokens) went first with the other 50-token item, not FIFO's a1.
    assert batches[0] == ["a0", "a2"]


async def test_length_grouping_cuts_padding_but_the_oldest_goes_first(env: Env) -> None:
    engine = env.engine(max_batch_requests=2)
    env.model(engine)
    await engine.start()
    first = await busy(env, engine)
    tasks = [submit(engine, req("m", (t, n))) for t, n in [("L0", 60), ("s0", 4), ("L1", 60)]]
    tasks += [submit(engine, req("m", (f"s{i}", 4))) for i in range(1, 4)]
    await until(lambda: engine.queue_depth("m") == 6, "queued")
    env.gate.open()
    await first
    await asyncio.gather(*tasks)
    assert env.rec.tags()[1:] == [["L0", "L1"], ["s0", "s1"], ["s2", "s3"]]
    assert [len(b) * max(b) for b in env.rec.lengths[1:]] == [120, 8, 8]


async def test_per_model_limits_override_the_engine_defaults(env: Env) -> None:
    engine = env.engine(max_batch_requests=64)
    env.model(engine, max_batch_requests=2)
    await engine.start()
    first = await busy(env, engine)
    task = submit(engine, req("m", "a", "b", "c", "d", "e"))
    await until(lambda: engine.queue_depth("m") == 5, "queued")
    env.gate.open()
    await first
    assert await task == ["m:a", "m:b", "m:c", "m:d", "m:e"]
    assert [len(b) for b in env.rec.tags()[1:]] == [2, 2, 1]


# -- admission ------------------------------------------------------------------------


async def test_admission_errors(env: Env) -> None:
    engine = env.engine()
    env.model(engine, gated=False)
    with pytest.raises(UnavailableError):
        await engine.submit(req("m", "x"))
    assert not engine.accepting
    await engine.start()
    assert engine.accepting
    with pytest.raises(ModelNotFoundError):
        await engine.submit(req("nope", "x"))
    with pytest.raises(ModelNotFoundError):
        engine.queue_depth("nope")
    assert await engine.submit(req("m")) == []
    assert await engine.submit(req("m", "x")) == ["m:x"]


async def test_overloaded_at_the_concurrency_cap(env: Env) -> None:
    engine = env.engine(max_concurrent_requests=2)
    env.model(engine)
    await engine.start()
    first = await busy(env, engine)
    second = submit(engine, req("m", "q"))
    await until(lambda: engine.in_flight == 2, "two in flight")
    with pytest.raises(OverloadedError) as info:
        await engine.submit(req("m", "over"))
    assert info.value.retry_after_s == pytest.approx(1.0)
    env.gate.open()
    await first
    await second
    assert engine.in_flight == 0
    assert await engine.submit(req("m", "again")) == ["m:again"]
    assert "over" not in env.rec.seen()


# -- deadlines, cancellation, failures -------------------------------------------------


async def test_expired_deadline_is_answered_without_computing(env: Env) -> None:
    engine = env.engine()
    env.model(engine)
    await engine.start()
    first = await busy(env, engine)
    late = submit(engine, req("m", "late0", "late1", deadline=10.0))
    ok = submit(engine, req("m", "ok", deadline=100.0))
    await until(lambda: engine.queue_depth("m") == 3, "queued")
    env.clock.t = 12.5
    env.gate.open()
    await first
    with pytest.raises(DeadlineExceededError, match=r"waited 12\.500s"):
        await late
    assert await ok == ["m:ok"]
    assert not {"late0", "late1"} & env.rec.seen()
    assert engine.queue_depth("m") == 0 and engine.in_flight == 0


async def test_deadline_is_answered_while_the_worker_is_still_busy(env: Env) -> None:
    # The timer runs on the event loop: the answer does not wait for the forward pass
    # holding the compute thread. Real clock here, since the loop's timer is real.
    import time

    engine = Engine(EngineLimits())
    env.engines.append(engine)
    engine.add_model("m", FakeBackend("m", env.rec, env.gate, "cpu"), FakeRunner(), device="cpu")
    await engine.start()
    first = await busy(env, engine)
    late = submit(engine, req("m", "late", deadline=time.monotonic() + 0.05))
    with pytest.raises(DeadlineExceededError, match="passed its deadline"):
        await late
    assert env.gate.entered == 1 and not first.done()  # the worker is still held
    assert engine.queue_depth("m") == 0
    env.gate.open()
    assert await first == ["m:busy"]
    assert "late" not in env.rec.seen()


async def test_a_request_partly_computed_stops_at_its_deadline(env: Env) -> None:
    """A request of many items (a long context's windows) stops costing compute at its
    deadline: its queued items are dropped, and it fails saying how many were left."""
    engine = env.engine(max_batch_requests=1)
    env.model(engine)
    await engine.start()
    first = await busy(env, engine)
    split = submit(engine, req("m", "a", "b", deadline=10.0))  # one item per batch
    await until(lambda: engine.queue_depth("m") == 2, "queued")
    env.gate.release(1)  # "busy" finishes; "a" enters the gate; "b" stays queued
    await env.gate.wait_entered(2)
    assert engine.queue_depth("m") == 1
    env.clock.t = 20.0  # past the deadline while "a" is computing and "b" is queued
    env.gate.open()
    await first
    with pytest.raises(DeadlineExceededError, match=r"\(1 of its 2 items\)"):
        await split
    await until(lambda: engine.queue_depth("m") == 0, "dropped")
    assert "b" not in env.rec.seen()


async def test_deadline_already_passed_at_submit(env: Env) -> None:
    engine = env.engine()
    env.model(engine, gated=False)
    await engine.start()
    env.clock.t = 5.0
    with pytest.raises(DeadlineExceededError):
        await engine.submit(req("m", "x", deadline=4.0))
    assert "x" not in env.rec.seen()


async def test_cancelled_request_items_are_never_computed(env: Env) -> None:
    engine = env.engine()
    env.model(engine)
    await engine.start()
    first = await busy(env, engine)
    gone = submit(engine, req("m", "gone0", "gone1"))
    stays = submit(engine, req("m", "stays"))
    await until(lambda: engine.queue_depth("m") == 3, "queued")
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert engine.queue_depth("m") == 1
    env.gate.open()
    await first
    assert await stays == ["m:stays"]
    assert not {"gone0", "gone1"} & env.rec.seen()
    assert env.rec.tags()[1:] == [["stays"]]


async def test_a_failing_batch_fails_only_its_requests(env: Env) -> None:
    engine = env.engine(max_batch_requests=2)
    env.model(engine)
    await engine.start()
    first = await busy(env, engine)
    bad = submit(engine, req("m", "boom", ("bad-later", 40)))  # would go in a later batch
    neighbour = submit(engine, req("m", "n"))  # shares the failing batch ("boom", "n")
    after = submit(engine, req("m", "after"))
    await until(lambda: engine.queue_depth("m") == 4, "queued")
    env.gate.open()
    await first
    for task in (bad, neighbour):
        with pytest.raises(BackendError, match="RuntimeError: boom in forward"):
            await task
    assert await after == ["m:after"]
    assert "bad-later" not in env.rec.seen()
    assert await engine.submit(req("m", "still")) == ["m:still"]


async def test_a_batch_over_the_memory_cap_is_halved_until_it_fits(env: Env) -> None:
    engine = env.engine(max_batch_requests=8, observer=(observer := Observer()))
    backend = FakeBackend("m", env.rec, env.gate)
    backend.max_rows = 2
    engine.add_model("m", backend, FakeRunner(), device="cpu")
    await engine.start()
    first = await busy(env, engine)
    queued = [submit(engine, req("m", f"r{i}")) for i in range(5)]
    huge = submit(engine, req("m", "huge", "h2"))  # one input fits nowhere: its request fails
    await until(lambda: engine.queue_depth("m") == 7, "queued")
    env.gate.open()
    await first
    assert [await t for t in queued] == [[f"m:r{i}"] for i in range(5)]
    with pytest.raises(DeviceOutOfMemoryError, match="1 rows did not fit"):
        await huge
    # Halves, depth first, in order; each input is computed once in the end.
    assert env.rec.tags()[1:] == [
        ["r0", "r1", "r2", "r3", "r4", "huge", "h2"],
        ["r0", "r1", "r2"],
        ["r0"],
        ["r1", "r2"],
        ["r3", "r4", "huge", "h2"],
        ["r3", "r4"],
        ["huge", "h2"],
        ["huge"],
        ["h2"],
    ]
    assert observer.batches[-1][:2] == ("m", 7)  # one batch as far as metrics go
    assert await engine.submit(req("m", "after")) == ["m:after"]


async def test_a_squeezer_error_from_the_runner_passes_through_unchanged(env: Env) -> None:
    err = InvalidRequestError("bad input", param="input")
    engine = env.engine()
    env.model(engine, gated=False, runner=FakeRunner(split_error=err))
    await engine.start()
    with pytest.raises(InvalidRequestError) as info:
        await engine.submit(req("m", "bad"))
    assert info.value is err
    assert await engine.submit(req("m", "good")) == ["m:good"]


async def test_split_returning_the_wrong_count_is_a_backend_error(env: Env) -> None:
    engine = env.engine()
    env.model(engine, gated=False, runner=FakeRunner(short_split=True))
    await engine.start()
    with pytest.raises(BackendError, match="split returned 1 results for 2"):
        await engine.submit(req("m", "a", "b"))


# -- devices and turns ----------------------------------------------------------------


async def test_round_robin_a_deep_queue_does_not_starve_another_model(env: Env) -> None:
    engine = env.engine(max_batch_requests=2)
    env.model(engine, "A")
    env.model(engine, "B")
    await engine.start()
    deep = submit(engine, req("A", *[f"a{i}" for i in range(8)]))
    await env.gate.wait_entered(1)  # A's first batch is computing
    single = submit(engine, req("B", "b"))
    await until(lambda: engine.queue_depth("B") == 1, "B queued")
    env.gate.open()
    assert await single == ["B:b"]
    await deep
    models = [m for m, _ in env.rec.batches]
    assert models == ["A", "B", "A", "A", "A"]


async def test_models_on_one_device_never_compute_at_once(env: Env) -> None:
    engine = env.engine(max_batch_requests=2)
    env.model(engine, "A", gated=False)
    env.model(engine, "B", gated=False)
    env.model(engine, "C", device="other", gated=False)
    await engine.start()
    tasks = [submit(engine, req(m, *[f"{m}{i}" for i in range(5)])) for m in "AB" for _ in range(6)]
    await asyncio.gather(*tasks)
    assert env.rec.max_active == 1
    assert env.rec.threads == {"squeezer-cpu"}
    assert await engine.submit(req("C", "c")) == ["C:c"]
    assert env.rec.threads == {"squeezer-cpu", "squeezer-other"}


async def test_run_on_device_takes_its_turn_between_batches(env: Env) -> None:
    engine = env.engine(max_batch_requests=1)
    env.model(engine)
    await engine.start()
    deep = submit(engine, req("m", "a0", "a1", "a2"))
    await env.gate.wait_entered(1)

    def warm_up() -> int:
        with env.rec.lock:
            env.rec.batches.append(("call", [threading.current_thread().name]))
        return 42

    call = asyncio.create_task(engine.run_on_device("cpu", warm_up))
    await asyncio.sleep(0)  # the call is queued (its task ran up to its await)
    env.gate.open()
    assert await call == 42
    assert await deep == ["m:a0", "m:a1", "m:a2"]
    assert env.rec.batches == [
        ("m", ["a0"]),
        ("call", ["squeezer-cpu"]),
        ("m", ["a1"]),
        ("m", ["a2"]),
    ]
    with pytest.raises(ValueError):
        await engine.run_on_device("nowhere", lambda: None)


# -- max_wait_ms ----------------------------------------------------------------------


async def test_max_wait_holds_an_idle_dispatch_until_the_batch_is_full(env: Env) -> None:
    engine = env.engine(max_wait_ms=50.0, max_batch_requests=2)
    env.model(engine, gated=False)
    await engine.start()
    first = submit(engine, req("m", "x"))
    await until(lambda: engine.queue_depth("m") == 1, "queued")
    # The fake clock never moves, so only a full batch releases it.
    second = submit(engine, req("m", "y"))
    assert await first == ["m:x"] and await second == ["m:y"]
    assert env.rec.tags() == [["x", "y"]]


async def test_max_wait_dispatches_once_the_oldest_has_waited_long_enough(env: Env) -> None:
    engine = env.engine(max_wait_ms=20.0, max_batch_requests=8)
    env.model(engine, gated=False)
    await engine.start()
    lone = submit(engine, req("m", "x"))
    await until(lambda: engine.queue_depth("m") == 1, "queued")
    assert not lone.done()
    env.clock.t = 0.02  # the thread's timed wait ends and finds the wait is over
    assert await lone == ["m:x"]
    assert env.rec.tags() == [["x"]]


# -- removing one model (a version unloaded or replaced) ---------------------------------


async def test_remove_finishes_what_the_model_admitted_then_frees_it(env: Env) -> None:
    engine = env.engine()
    env.model(engine, "old")
    env.model(engine, "other", gated=False)
    await engine.start()
    running = await busy(env, engine, "old", "a")
    queued = submit(engine, req("old", "b"))
    await until(lambda: engine.queue_depth("old") == 1, "queued")
    closed: list[str] = []
    backend = engine._models["old"].backend  # type: ignore[attr-defined]
    backend.close = lambda: closed.append(threading.current_thread().name)
    removing = asyncio.create_task(engine.remove("old", timeout=10))
    await until(lambda: "old" not in engine.models, "refusing")
    with pytest.raises(ModelNotFoundError):  # new requests: refused at once
        await engine.submit(req("old", "late"))
    assert not removing.done()
    env.gate.open()
    assert await running == ["old:a"] and await queued == ["old:b"]
    await removing
    assert closed == ["squeezer-cpu"]  # freed on the thread that used it, once done
    assert await engine.submit(req("other", "x")) == ["other:x"]  # the device goes on
    assert engine.models == ("other",) and engine.in_flight == 0


async def test_remove_fails_what_is_left_after_its_timeout(env: Env) -> None:
    engine = env.engine()
    env.model(engine, "old")
    await engine.start()
    running = await busy(env, engine, "old", "a")
    queued = submit(engine, req("old", "b"))
    await until(lambda: engine.queue_depth("old") == 1, "queued")
    await engine.remove("old", timeout=0.05)
    with pytest.raises(UnavailableError, match="unloaded"):
        await queued
    env.gate.open()
    with pytest.raises(UnavailableError):
        await running
    with pytest.raises(ModelNotFoundError):
        await engine.remove("old", timeout=1)


# -- drain ------------------------------------------------------------------------------


async def test_drain_finishes_admitted_requests_and_refuses_new_ones(env: Env) -> None:
    engine = env.engine()
    env.model(engine)
    await engine.start()
    running = submit(engine, req("m", "a"))
    await env.gate.wait_entered(1)
    queued = submit(engine, req("m", "b"))
    await until(lambda: engine.queue_depth("m") == 1, "queued")
    stopping = asyncio.create_task(engine.stop(timeout=10))
    await until(lambda: not engine.accepting, "draining")
    with pytest.raises(UnavailableError):
        await engine.submit(req("m", "late"))
    assert not stopping.done()
    env.gate.open()
    assert await running == ["m:a"]
    assert await queued == ["m:b"]
    await stopping
    assert engine.in_flight == 0
    assert "late" not in env.rec.seen()
    with pytest.raises(UnavailableError):
        await engine.run_on_device("cpu", lambda: None)


async def test_drain_stops_holding_batches_back_for_max_wait(env: Env) -> None:
    engine = env.engine(max_wait_ms=1e6)  # the fake clock never gets there
    env.model(engine, gated=False)
    await engine.start()
    held = submit(engine, req("m", "a", "b"))
    await until(lambda: engine.queue_depth("m") == 2, "queued")
    await engine.stop(timeout=10)
    assert await held == ["m:a", "m:b"]


async def test_stop_timeout_fails_what_is_left(env: Env) -> None:
    engine = env.engine()
    env.model(engine)
    await engine.start()
    running = submit(engine, req("m", "a"))
    await env.gate.wait_entered(1)
    queued = submit(engine, req("m", "b"))
    await until(lambda: engine.queue_depth("m") == 1, "queued")
    await engine.stop(timeout=0.01)  # the gate stays shut: nothing can finish
    for task in (running, queued):
        with pytest.raises(UnavailableError, match="drain"):
            await task
    assert engine.in_flight == 0 and engine.queue_depth("m") == 0
    env.gate.open()
    assert "b" not in env.rec.seen()


# -- observer ---------------------------------------------------------------------------


async def test_observer_sees_batches_waits_and_depths(env: Env) -> None:
    obs = Observer()
    engine = env.engine(observer=obs)
    env.model(engine)
    await engine.start()
    first = await busy(env, engine)
    env.clock.t = 1.0
    later = submit(engine, req("m", ("p", 3), ("q", 5)))
    await until(lambda: engine.queue_depth("m") == 2, "queued")
    env.clock.t = 3.5
    env.gate.open()
    await first
    await later
    assert obs.batches == [("m", 1, 4, 4), ("m", 2, 10, 8)]
    assert obs.waits == [("m", 0.0), ("m", 2.5), ("m", 2.5)]
    assert obs.depths[-1] == ("m", 0)
    assert ("m", 2) in obs.depths


async def test_a_raising_observer_does_not_fail_requests(env: Env) -> None:
    class Broken(Observer):
        def on_batch(self, *args: Any) -> None:
            raise RuntimeError("metrics down")

    engine = env.engine(observer=Broken())
    env.model(engine, gated=False)
    await engine.start()
    assert await engine.submit(req("m", "x")) == ["m:x"]
