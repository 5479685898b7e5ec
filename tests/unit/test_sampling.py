"""The vectorized sampler against transformers' logits processors, and its randomness."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from squeezer.backends.sampling import SamplingBatch, SamplingParams, process, sample, uniform

VOCAB = 64
ROWS = [
    SamplingParams(do_sample=True, temperature=0.7),
    SamplingParams(do_sample=True, top_k=5),
    SamplingParams(do_sample=True, top_p=0.8, temperature=1.3),
    SamplingParams(do_sample=True, typical_p=0.6),
    SamplingParams(do_sample=True, repetition_penalty=1.5, top_k=10, top_p=0.9),
    SamplingParams(do_sample=False, repetition_penalty=1.2, typical_p=0.2),
]


def _reference(logits: torch.Tensor, ids: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """What ``generate`` does to one row's scores."""
    procs = LogitsProcessorList()
    if p.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
    if not p.greedy:
        if p.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(p.temperature))
        if p.top_k:
            procs.append(TopKLogitsWarper(p.top_k))
        if p.top_p < 1.0:
            procs.append(TopPLogitsWarper(p.top_p))
        if p.typical_p < 1.0:
            procs.append(TypicalLogitsWarper(p.typical_p))
    return procs(ids.unsqueeze(0), logits.unsqueeze(0).clone())[0]


def test_processing_matches_generates_processors_row_by_row() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(len(ROWS), VOCAB, generator=gen) * 3
    ids = torch.randint(0, VOCAB, (len(ROWS), 12), generator=gen)
    seen = torch.zeros(len(ROWS), VOCAB, dtype=torch.bool).scatter(1, ids, True)
    ours = process(logits, SamplingBatch.of(ROWS, VOCAB, "cpu"), seen)
    for row, p in enumerate(ROWS):
        want = _reference(logits[row], ids[row], p)
        assert torch.equal(torch.isinf(ours[row]), torch.isinf(want)), p
        kept = ~torch.isinf(want)
        torch.testing.assert_close(ours[row][kept], want[kept], rtol=1e-5, atol=1e-5)


def test_top_p_over_a_large_vocabulary_with_and_without_a_full_sort() -> None:
    # Peaked rows find their nucleus among the most likely candidates; a flat row's
    # nucleus is wider than them and takes the full sort. Both as `generate` filters.
    vocab = 4096
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(3, vocab, generator=gen) * torch.tensor([[6.0], [4.0], [0.1]])
    nucleus = SamplingParams(do_sample=True, top_p=0.9)
    rows = [nucleus, SamplingParams(do_sample=True, top_p=0.5, top_k=700), nucleus]
    ours = process(logits, SamplingBatch.of(rows, vocab, "cpu"))
    ids = torch.zeros(0, dtype=torch.long)
    for row, params in enumerate(rows):
        want = _reference(logits[row], ids, params)
        assert torch.equal(torch.isinf(ours[row]), torch.isinf(want)), row
    assert int((~torch.isinf(ours[2])).sum()) > 512  # the flat row: wider than candidates


def test_greedy_rows_take_the_penalized_argmax() -> None:
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(1))
    seen = torch.zeros(3, VOCAB, dtype=torch.bool)
    seen[:, logits[0].argmax()] = True
    params = [SamplingParams(repetition_penalty=3.0, typical_p=0.1)] * 3
    out = sample(logits, SamplingBatch.of(params, VOCAB, "cpu"), torch.arange(3), seen)
    for row in range(3):
        want = _reference(logits[row], seen[row].nonzero().flatten(), params[row]).argmax()
        assert out.tokens[row] == want


def test_a_rows_draw_depends_on_its_seed_and_position_only() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(4, VOCAB, generator=gen)
    params = [SamplingParams(do_sample=True, seed=s) for s in (11, 12, 13, 14)]
    positions = torch.tensor([5, 9, 5, 30])
    full = sample(logits, SamplingBatch.of(params, VOCAB, "cpu"), positions)
    for row in range(4):  # alone, or in a batch in another order: the same token
        alone = sample(
            logits[row : row + 1],
            SamplingBatch.of([params[row]], VOCAB, "cpu"),
            positions[row : row + 1],
        )
        assert alone.tokens[0] == full.tokens[row]
    order = torch.tensor([3, 1, 0, 2])
    shuffled = sample(
        logits[order], SamplingBatch.of([params[i] for i in order], VOCAB, "cpu"), positions[order]
    )
    assert torch.equal(shuffled.tokens, full.tokens[order])
    other_seed = SamplingBatch.of([SamplingParams(do_sample=True, seed=99)] * 4, VOCAB, "cpu")
    draws = {
        int(
            sample(
                logits[:1], SamplingBatch.of([params[0]], VOCAB, "cpu"), torch.tensor([p])
            ).tokens
        )
        for p in range(40)
    }
    assert len(draws) > 5  # positions give fresh draws
    assert sample(logits, other_seed, positions).tokens.tolist() != full.tokens.tolist()


def test_draws_follow_the_processed_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -5.0]])
    params = SamplingParams(do_sample=True, top_k=4, seed=7)
    batch = SamplingBatch.of([params], 6, "cpu")
    want = torch.softmax(process(logits, batch), dim=-1)[0]
    n = 20000
    counts = torch.zeros(6)
    rows = logits.expand(n, 6)
    big = SamplingBatch.of([params] * n, 6, "cpu")
    tokens = sample(rows, big, torch.arange(n)).tokens
    counts += torch.bincount(tokens, minlength=6)
    torch.testing.assert_close(counts / n, want, atol=0.012, rtol=0)
    assert counts[4] == counts[5] == 0  # cut by top-k


def test_logprobs_and_alternatives() -> None:
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(3))
    params = [SamplingParams(top_logprobs=3), SamplingParams(do_sample=True, top_logprobs=1)]
    out = sample(logits, SamplingBatch.of(params, VOCAB, "cpu"), torch.tensor([0, 0]))
    assert out.top_ids.shape == out.top_logprobs.shape == (2, 3)
    ref = torch.log_softmax(logits[0], dim=-1)
    torch.testing.assert_close(out.top_logprobs[0], ref.topk(3).values)
    assert out.logprobs[0] == pytest.approx(float(ref.max()), abs=1e-6)


def test_uniforms_are_in_range_and_even() -> None:
    u = uniform(torch.full((100_000,), 5, dtype=torch.int64), torch.arange(100_000))
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005
    assert abs(float((u < 0.1).double().mean()) - 0.1) < 0.005


@pytest.mark.parametrize(
    "bad", [{"temperature": -1}, {"top_p": 0}, {"typical_p": 1.5}, {"repetition_penalty": 0}]
)
def test_bad_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**bad).validate()  # type: ignore[arg-type]
