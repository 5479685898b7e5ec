"""The vectorized sampler against transformers' logits processors, and its randomness."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from squeezer.backends.sampling import (
    History,
    SamplingBatch,
    SamplingParams,
    process,
    prompt_logprobs,
    sample,
    uniform,
)

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
    ours = process(logits, SamplingBatch.of(ROWS, VOCAB, "cpu"), History(seen=seen))
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
    out = sample(logits, SamplingBatch.of(params, VOCAB, "cpu"), torch.arange(3), History(seen))
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


# -- the OpenAI and vLLM fields -----------------------------------------------------


def test_logit_bias_adds_to_the_logits_and_can_force_or_forbid_a_token() -> None:
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(4))
    best = int(logits[0].argmax())
    params = [
        SamplingParams(logit_bias=((7, 100.0),)),  # greedy, forced
        SamplingParams(logit_bias=((best, -100.0),)),  # row 1 of the same logits
        SamplingParams(do_sample=True, seed=3, logit_bias=((9, 100.0),)),
    ]
    rows = logits[[0, 0, 0]]
    batch = SamplingBatch.of(params, VOCAB, "cpu")
    out = sample(rows, batch, torch.zeros(3, dtype=torch.long))
    assert out.tokens.tolist()[0] == 7 and out.tokens.tolist()[2] == 9
    assert int(out.tokens[1]) != best
    want = rows.clone()
    want[0, 7] += 100
    want[1, best] -= 100
    want[2, 9] += 100
    torch.testing.assert_close(process(rows, batch), want)


def test_presence_and_frequency_penalties_follow_openais_formula() -> None:
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, VOCAB, generator=gen)
    counts = torch.randint(0, 4, (2, VOCAB), generator=gen, dtype=torch.int32)
    params = [
        SamplingParams(presence_penalty=0.7, frequency_penalty=0.3),
        SamplingParams(presence_penalty=-1.0),  # negative: encourages repeats
    ]
    ours = process(logits, SamplingBatch.of(params, VOCAB, "cpu"), History(counts=counts))
    for row, p in enumerate(params):
        c = counts[row].float()
        want = logits[row] - c * p.frequency_penalty - (c > 0).float() * p.presence_penalty
        torch.testing.assert_close(ours[row], want)


def test_min_p_matches_transformers_warper() -> None:
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(8)) * 2
    params = [
        SamplingParams(do_sample=True, min_p=0.1, temperature=0.8),
        SamplingParams(do_sample=True, min_p=0.0),
    ]
    ours = process(logits, SamplingBatch.of(params, VOCAB, "cpu"))
    for row, p in enumerate(params):
        procs = LogitsProcessorList([TemperatureLogitsWarper(p.temperature)])
        if p.min_p:
            procs.append(MinPLogitsWarper(p.min_p))
        ids = torch.zeros((1, 0), dtype=torch.long)
        want = procs(ids, logits[row : row + 1].clone())[0]
        assert torch.equal(torch.isinf(ours[row]), torch.isinf(want))
        kept = ~torch.isinf(want)
        torch.testing.assert_close(ours[row][kept], want[kept])
    assert int(torch.isinf(ours[0]).sum()) > 0 and not bool(torch.isinf(ours[1]).any())


def test_logprobs_are_the_models_distribution_whatever_the_filters() -> None:
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(9))
    filtered = SamplingParams(
        do_sample=True, temperature=0.3, top_k=2, min_p=0.2, seed=1, top_logprobs=5
    )
    params = [filtered, SamplingParams(top_logprobs=5, logit_bias=((3, 50.0),))]
    out = sample(logits, SamplingBatch.of(params, VOCAB, "cpu"), torch.tensor([0, 0]))
    raw = torch.log_softmax(logits, dim=-1)
    for row in range(2):
        assert float(out.logprobs[row]) == pytest.approx(float(raw[row, out.tokens[row]]), abs=1e-5)
        torch.testing.assert_close(out.top_logprobs[row], raw[row].topk(5).values)
    # Five alternatives although top-k kept two: all finite, none a filtered -inf.
    assert bool(torch.isfinite(out.top_logprobs).all())
    assert int(out.tokens[1]) == 3  # the bias chose it; its logprob is still the model's


def test_prompt_logprobs_score_each_next_token() -> None:
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(10))
    targets = torch.tensor([5, 1, 60, 2])
    chosen, ranks, ids, values = prompt_logprobs(logits, targets, 3)
    raw = torch.log_softmax(logits, dim=-1)
    torch.testing.assert_close(chosen, raw.gather(1, targets.unsqueeze(1)).squeeze(1))
    order = raw.argsort(dim=-1, descending=True)
    assert ranks.tolist() == [int((order[i] == t).nonzero()) + 1 for i, t in enumerate(targets)]
    torch.testing.assert_close(values, raw.topk(3).values)
    assert torch.equal(ids, raw.topk(3).indices)
    assert prompt_logprobs(logits, targets, 0)[2].shape == (4, 0)


def test_a_penalized_biased_seeded_row_draws_the_same_alone_and_in_any_batch() -> None:
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(3, VOCAB, generator=gen)
    counts = torch.randint(0, 3, (3, VOCAB), generator=gen, dtype=torch.int32)
    params = [
        SamplingParams(do_sample=True, seed=5, presence_penalty=0.5, min_p=0.05),
        SamplingParams(do_sample=True, seed=6, frequency_penalty=1.0, logit_bias=((2, 3.0),)),
        SamplingParams(do_sample=False),
    ]
    positions = torch.tensor([4, 4, 4])
    full = sample(logits, SamplingBatch.of(params, VOCAB, "cpu"), positions, History(counts=counts))
    for row in range(3):
        alone = sample(
            logits[row : row + 1],
            SamplingBatch.of([params[row]], VOCAB, "cpu"),
            positions[row : row + 1],
            History(counts=counts[row : row + 1]),
        )
        assert alone.tokens[0] == full.tokens[row]


@pytest.mark.parametrize(
    "bad",
    [
        {"min_p": 1.5},
        {"presence_penalty": 3},
        {"frequency_penalty": -2.5},
        {"logit_bias": ((1, 101.0),)},
    ],
)
def test_bad_openai_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**bad).validate()  # type: ignore[arg-type]


def test_logit_bias_token_ids_must_be_in_the_vocabulary() -> None:
    SamplingParams(logit_bias=((VOCAB - 1, 1.0),)).check_vocabulary(VOCAB)
    with pytest.raises(ValueError, match="not in"):
        SamplingParams(logit_bias=((VOCAB, 1.0),)).check_vocabulary(VOCAB)
