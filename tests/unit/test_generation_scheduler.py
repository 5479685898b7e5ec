"""Continuous batching on a real device thread: parity, joins, cancellation, limits."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from squeezer.backends.sampling import SamplingParams
from squeezer.backends.torch_generation import TorchGenerationBackend
from squeezer.engine import DeviceExecutor
from squeezer.engine.generation import (
    FinishReason,
    GenerationRequest,
    GenerationScheduler,
    GenerationStream,
)
from squeezer.errors import InputTooLongError, InvalidRequestError, OverloadedError
from tests.unit.test_torch_generation import PROMPTS, _alone, _build


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("llama"), "llama")


class Running:
    def __init__(self, path: Path, *, slots: int = 2, budget: int = 4096, concurrent: int = 8):
        self.backend = TorchGenerationBackend(path, max_slots=slots, max_len=64)
        self.executor = DeviceExecutor("cpu")
        self.scheduler = GenerationScheduler(
            self.backend,
            wake=self.executor.wake,
            max_batch_total_tokens=budget,
            max_concurrent_requests=concurrent,
        )
        self.executor.add_source(self.scheduler)
        self.executor.start()

    def close(self) -> None:
        self.executor.close()
        self.executor.join(10)


@pytest.fixture
async def running(tiny_llama: Path) -> AsyncIterator[Running]:
    r = Running(tiny_llama)
    yield r
    r.close()


async def _collect(stream: GenerationStream) -> list[int]:
    return [out.token async for out in stream]


async def test_concurrent_greedy_requests_equal_generate_alone(
    running: Running, tiny_llama: Path
) -> None:
    news = [5, 8, 3, 8]
    streams = [
        running.scheduler.submit(GenerationRequest(p, n))
        for p, n in zip(PROMPTS, news, strict=True)
    ]
    got = await asyncio.gather(*(_collect(s) for s in streams))
    # Two slots for four requests: the last two joined while others were decoding.
    assert got == [_alone(tiny_llama, p, n) for p, n in zip(PROMPTS, news, strict=True)]
    assert all(s.finished and s.finished.reason is FinishReason.LENGTH for s in streams)
    assert running.backend.active == 0 and running.scheduler.load == (0, 0)


async def test_a_cancelled_stream_frees_its_slot_at_the_next_step(running: Running) -> None:
    stream = running.scheduler.submit(GenerationRequest(PROMPTS[0], 50))
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 3:
            at_cancel = running.scheduler.steps
            break  # leaving the loop cancels, as a disconnect does
    for _ in range(200):
        if running.scheduler.load == (0, 0):
            break
        await asyncio.sleep(0.005)
    assert running.backend.active == 0
    # The step running when the client left may finish; the next one frees the slot.
    assert running.scheduler.steps - at_cancel <= 2


async def test_eos_ends_a_sequence_unless_ignored(running: Running, tiny_llama: Path) -> None:
    first = _alone(tiny_llama, PROMPTS[1], 1)[0]
    stream = running.scheduler.submit(GenerationRequest(PROMPTS[1], 6, eos_ids=frozenset({first})))
    assert await _collect(stream) == [first]
    assert stream.finished is not None and stream.finished.reason is FinishReason.EOS
    again = running.scheduler.submit(
        GenerationRequest(PROMPTS[1], 6, eos_ids=frozenset({first}), ignore_eos=True)
    )
    assert len(await _collect(again)) == 6


async def test_a_stop_token_ends_a_sequence_even_with_ignore_eos(
    running: Running, tiny_llama: Path
) -> None:
    third = _alone(tiny_llama, PROMPTS[0], 3)
    stream = running.scheduler.submit(
        GenerationRequest(PROMPTS[0], 6, stop_ids=frozenset({third[2]}), ignore_eos=True)
    )
    got = await _collect(stream)
    assert got == third[: third.index(third[2]) + 1]  # the stop token is the last one
    assert stream.finished is not None and stream.finished.reason is FinishReason.STOP_TOKEN
    assert stream.finished.stop_token == third[2]


async def test_the_last_token_of_each_ending_is_marked(running: Running, tiny_llama: Path) -> None:
    """A stream sends each token at once and knows the last without waiting for the
    end: the token that ends a sequence (length, EOS, stop id) is marked, no other."""
    first = _alone(tiny_llama, PROMPTS[1], 1)[0]
    requests = [
        GenerationRequest(PROMPTS[0], 4),
        GenerationRequest(PROMPTS[1], 6, eos_ids=frozenset({first})),
        GenerationRequest(PROMPTS[1], 6, stop_ids=frozenset({first}), ignore_eos=True),
    ]
    for request in requests:
        outs = [out async for out in running.scheduler.submit(request)]
        assert [out.last for out in outs] == [False] * (len(outs) - 1) + [True]


async def test_a_logit_bias_outside_the_vocabulary_is_refused_before_queueing(
    running: Running,
) -> None:
    bad = SamplingParams(logit_bias=((running.backend.vocab_size, 5.0),))
    with pytest.raises(InvalidRequestError, match="logit_bias"):
        running.scheduler.submit(GenerationRequest(PROMPTS[0], 2, bad))
    assert running.scheduler.load == (0, 0)


async def test_limits_give_429_and_422(tiny_llama: Path) -> None:
    r = Running(tiny_llama, concurrent=2, budget=40)
    try:
        streams = [r.scheduler.submit(GenerationRequest(PROMPTS[0], 20)) for _ in range(2)]
        with pytest.raises(OverloadedError):
            r.scheduler.submit(GenerationRequest(PROMPTS[1], 2))
        with pytest.raises(InputTooLongError):
            r.scheduler.submit(GenerationRequest(PROMPTS[1], 60))  # beyond max_len 64
        with pytest.raises(InputTooLongError):
            r.scheduler.submit(GenerationRequest(PROMPTS[2], 35))  # beyond the token budget
        # The budget (40) holds one 25-token sequence at a time: both still complete.
        assert [len(t) for t in await asyncio.gather(*(_collect(s) for s in streams))] == [20, 20]
    finally:
        r.close()


async def test_other_work_on_the_device_runs_between_decode_steps(running: Running) -> None:
    stream = running.scheduler.submit(GenerationRequest(PROMPTS[2], 40))
    tokens: list[int] = []

    async def consume() -> None:
        tokens.extend(await _collect(stream))

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    assert await running.executor.call(lambda: "embedding batch") == "embedding batch"
    assert stream.finished is None  # answered while the stream was still decoding
    await task
    assert len(tokens) == 40


async def test_prompts_are_prefilled_in_chunks_within_the_budget_beside_decoding(
    tiny_llama: Path,
) -> None:
    r = Running(tiny_llama, slots=4)
    r.scheduler.max_prefill_tokens = 4  # PROMPTS are 5, 2, 9 and 3 tokens long
    steps: list[tuple[list[tuple[object, int, int]], int]] = []
    step = r.backend.step

    def recording(chunks: list, tokens: dict) -> list:  # type: ignore[type-arg]
        steps.append(([(c.seq.id, c.start, c.end) for c in chunks], len(tokens)))
        return step(chunks, tokens)

    r.backend.step = recording  # type: ignore[method-assign]
    try:
        streams = [r.scheduler.submit(GenerationRequest(p, 4)) for p in PROMPTS]
        got = await asyncio.gather(*(_collect(s) for s in streams))
        # Prompts split over steps, prefilled beside other sequences' decode tokens,
        # still give each prompt's tokens as `generate` alone does.
        assert got == [_alone(tiny_llama, p, 4) for p in PROMPTS]
        assert all(sum(end - start for _, start, end in chunks) <= 4 for chunks, _ in steps)
        assert any(chunks and decoding for chunks, decoding in steps)
        spans: dict[object, list[tuple[int, int]]] = {}
        for chunks, _ in steps:
            for seq, start, end in chunks:
                spans.setdefault(seq, []).append((start, end))
        for seq, prompt in zip(sorted(spans, key=str), PROMPTS, strict=True):
            pieces = spans[seq]
            assert pieces[0][0] == 0 and pieces[-1][1] == len(prompt)
            assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
        assert len(spans[2]) == 3  # the 9-token prompt took three steps
    finally:
        r.close()
