"""One request can fail only itself: settings that used to break a whole decode step
are valid or refused at admission, and a step that still raises is rerun without the
sequence that caused it, the others going on token for token."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

from squeezer.backends import generation_state
from squeezer.backends.sampling import SamplingBatch, SamplingParams, sample, seed_bits
from squeezer.engine.generation import GenerationRequest
from squeezer.errors import BackendError, DeadlineExceededError, InvalidRequestError
from tests.unit.test_generation_scheduler import Running, _collect
from tests.unit.test_torch_generation import PROMPTS, VOCAB, _alone, _build

NEW = 6


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture
async def running(tiny_llama: Path) -> Any:
    r = Running(tiny_llama, slots=4)
    yield r
    r.close()


def test_a_u64_seed_samples_as_its_low_64_bits() -> None:
    """TGI allows seeds up to 2**64 - 1; the int64 seed tensor overflowed on them."""
    assert seed_bits(2**64 - 1) == -1 and seed_bits(5) == 5 and seed_bits(2**63) == -(2**63)
    params = [SamplingParams(do_sample=True, seed=2**64 - 1), SamplingParams(do_sample=True)]
    batch = SamplingBatch.of(params, 8, "cpu")
    out = sample(torch.randn(2, 8), batch, torch.tensor([3, 3]))
    assert out.tokens.shape == (2,)


def test_a_temperature_just_above_zero_is_greedy_not_nan() -> None:
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.9], [1.0, 0.0, 2.0, -5.0]])
    for temperature in (1e-45, 1e-38, 1e-30, 1e-7, 1e-4):
        params = [SamplingParams(do_sample=True, temperature=temperature, seed=s) for s in (1, 2)]
        out = sample(logits, SamplingBatch.of(params, 4, "cpu"), torch.tensor([7, 9]))
        assert out.tokens.tolist() == [1, 2], temperature
        assert torch.isfinite(out.logprobs).all(), temperature


async def test_a_token_id_past_the_embedding_is_refused_at_admission(running: Running) -> None:
    with pytest.raises(InvalidRequestError, match=rf"token id {VOCAB} is outside"):
        running.scheduler.submit(GenerationRequest([5, VOCAB, 3], 4))
    with pytest.raises(InvalidRequestError, match="token id -1"):
        running.scheduler.submit(GenerationRequest([-1], 4))
    assert running.backend.active == 0


async def test_a_step_that_fails_for_one_sequence_fails_only_that_one(
    running: Running, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forward pass raises whenever the poisoned sequence is in it (mid-stream, after
    it has decoded a few tokens beside the others): it alone ends with the error."""
    step = running.backend.step
    poisoned: set[object] = set()
    steps_with_poison = 0

    def flaky(chunks: Any, tokens: Any) -> Any:
        nonlocal steps_with_poison
        ids = set(tokens) | {c.seq.id for c in chunks}
        if ids & poisoned:
            steps_with_poison += 1
            if steps_with_poison > 3:
                raise RuntimeError("poisoned row")
        return step(chunks, tokens)

    monkeypatch.setattr(running.backend, "step", flaky)
    streams = [running.scheduler.submit(GenerationRequest(p, NEW)) for p in PROMPTS]
    poisoned.add(streams[1].id)
    results = await asyncio.gather(*(_collect(s) for s in streams), return_exceptions=True)
    assert isinstance(results[1], BackendError) and "poisoned row" in str(results[1])
    for i in (0, 2, 3):
        assert results[i] == _alone(tiny_llama, PROMPTS[i], NEW)
    assert running.backend.active == 0 and running.scheduler.load == (0, 0)


async def test_a_sampler_failure_rolls_back_the_step_for_the_others(
    running: Running, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forward pass succeeds and the sampler raises for one row's settings: the
    step's cache lengths go back, so the rerun gives the others the tokens they would
    have had (before, their lengths stayed advanced and every later token was wrong)."""
    real = generation_state.sample
    calls = 0

    def picky(logits: torch.Tensor, batch: SamplingBatch, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 2 and bool((batch.seeds == 666).any()):
            raise FloatingPointError("NaN in the CDF")
        return real(logits, batch, *args)

    monkeypatch.setattr(generation_state, "sample", picky)
    poisoned = SamplingParams(do_sample=True, seed=666)
    streams = [
        running.scheduler.submit(
            GenerationRequest(p, NEW, params=poisoned if i == 2 else SamplingParams())
        )
        for i, p in enumerate(PROMPTS)
    ]
    results = await asyncio.gather(*(_collect(s) for s in streams), return_exceptions=True)
    assert isinstance(results[2], BackendError) and "NaN in the CDF" in str(results[2])
    for i in (0, 1, 3):
        assert results[i] == _alone(tiny_llama, PROMPTS[i], NEW)


async def test_a_request_waiting_past_its_deadline_fails_and_never_takes_a_slot(
    tiny_llama: Path,
) -> None:
    """--request-timeout covers generation requests waiting for admission, as it does
    encoder ones: with both slots busy, a third request whose deadline passes while it
    waits fails with the deadline error (504), and is never prefilled."""
    clock = [100.0]
    r = Running(tiny_llama, slots=2)
    r.scheduler._now = lambda: clock[0]
    try:
        busy = [r.scheduler.submit(GenerationRequest(p, 30)) for p in PROMPTS[:2]]
        late = r.scheduler.submit(GenerationRequest(PROMPTS[2], 4, deadline=101.0))
        patient = r.scheduler.submit(GenerationRequest(PROMPTS[3], 4, deadline=500.0))
        prefilled: list[object] = []
        step = r.backend.step

        def recording(chunks: Any, tokens: Any) -> Any:
            prefilled.extend(c.seq.id for c in chunks if c.first)
            return step(chunks, tokens)

        r.backend.step = recording  # type: ignore[method-assign]
        first = busy[0].__aiter__()
        await first.__anext__()  # both slots are decoding now
        clock[0] = 102.0  # past the late request's deadline, before a slot frees
        with pytest.raises(DeadlineExceededError, match="--request-timeout"):
            await _collect(late)
        assert late.id not in prefilled
        assert len(await _collect(patient)) == 4
        assert len(await _collect(busy[1])) == 30
    finally:
        r.close()
