"""Speculative decoding changes speed, never tokens: greedy and seeded outputs with
speculation equal those without, in a crowd of sequences joining and leaving."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pytest
import torch

from squeezer.backends.base import NewSequence
from squeezer.backends.paged_generation import PagedTorchGenerationBackend
from squeezer.backends.sampling import SamplingParams
from squeezer.backends.speculation import NgramIndex, SpeculationConfig
from squeezer.backends.speculation import speculator as make_speculator
from squeezer.backends.speculation_cost import Acceptance, StepCost, best_length
from squeezer.backends.torch_generation import TorchGenerationBackend
from tests.tiny_models import tiny_causal_lm
from tests.unit.chunked_driver import drive_chunked

VOCAB = 61
#: Prompts that repeat themselves, so prompt lookup finds drafts (and a random tiny
#: model, which tends to loop, accepts some of them).
PROMPTS = {
    "a": [5, 17, 3, 44, 9, 5, 17, 3, 44, 9, 5, 17],
    "b": [8, 9, 10, 8, 9, 10, 8, 9],
    "c": [30, 31, 32, 33, 34, 35],
    "d": [2, 3, 2, 3, 2, 3, 2],
}
NGRAM = SpeculationConfig(num_speculative_tokens=3, prompt_lookup_min=1, token_cost=0.0)


def _saved_llama(factory: pytest.TempPathFactory, seed: int) -> Path:
    torch.manual_seed(seed)
    path = factory.mktemp(f"spec-llama-{seed}")
    tiny_causal_lm("llama", VOCAB).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _saved_llama(tmp_path_factory, seed=0)


def test_prompt_lookup_proposes_what_followed_the_latest_earlier_ngram() -> None:
    index = NgramIndex([1, 2, 3, 9, 1, 2, 4, 7, 1, 2], range(1, 4))
    assert index.propose(3) == [4, 7, 1]  # "1 2" last seen before "4 7"
    index.extend([4])
    assert index.propose(2) == [7, 1]  # now "1 2 4" matches, longest first
    assert NgramIndex([1, 2, 3], range(2, 3)).propose(2) == []
    # A loop continues past the text's end: the draft copies itself.
    assert NgramIndex([5, 5, 5], range(1, 3)).propose(4) == [5, 5, 5, 5]
    assert NgramIndex([7, 1, 2, 3, 1, 2], range(2, 3)).propose(5) == [3, 1, 2, 3, 1]


def test_the_config_reads_vllms_json() -> None:
    config = SpeculationConfig.parse(
        '{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 3}'
    )
    assert (config.num_speculative_tokens, config.prompt_lookup_max) == (5, 3)
    assert SpeculationConfig.parse('{"model": "/m"}').method == "draft_model"
    with pytest.raises(ValueError, match="unknown keys"):
        SpeculationConfig.parse('{"method": "ngram", "lookahead": 3}')
    with pytest.raises(ValueError, match="prompt_lookup_min"):
        SpeculationConfig(prompt_lookup_min=3, prompt_lookup_max=2)


def _crowd(
    backend: TorchGenerationBackend, params: dict[Hashable, SamplingParams], new: int
) -> dict[Hashable, list[int]]:
    """Every prompt, joining one per step with 3 prompt tokens per chunk beside the
    others' decoding, each freed when it has ``new`` tokens."""
    return drive_chunked(backend, dict(PROMPTS), new, chunk=3, params=params)


Build = Callable[..., TorchGenerationBackend]
BACKENDS: dict[str, Build] = {
    "slots": lambda path, **kw: TorchGenerationBackend(path, max_slots=4, max_len=64, **kw),
    "paged": lambda path, **kw: PagedTorchGenerationBackend(
        path, max_slots=4, max_len=64, block_size=4, **kw
    ),
}


@pytest.mark.parametrize("kind", list(BACKENDS))
def test_greedy_and_seeded_tokens_are_the_same_with_speculation(tiny_lm: Path, kind: str) -> None:
    params: dict[Hashable, SamplingParams] = {
        "a": SamplingParams(),
        "b": SamplingParams(do_sample=True, temperature=0.7, seed=11),
        "c": SamplingParams(do_sample=True, top_p=0.9, repetition_penalty=1.3, seed=5),
        "d": SamplingParams(presence_penalty=0.5, top_logprobs=2),
    }
    plain = _crowd(BACKENDS[kind](tiny_lm), params, new=14)
    speculating = BACKENDS[kind](tiny_lm, speculation=NGRAM)
    assert _crowd(speculating, params, new=14) == plain
    drafts, drafted, accepted = speculating.speculation() or (0, 0, 0)
    assert drafts > 0 and drafted >= drafts
    assert 0 < accepted <= drafted  # some drafts were right, and they saved steps
    assert speculating.active == 0


def test_accepted_tokens_come_with_their_own_logprobs(tiny_lm: Path) -> None:
    """A token accepted from a draft carries the logprob its own position gives it."""
    prompt = [2, 3, 2, 3, 2, 3, 2, 3, 2]
    params = SamplingParams(top_logprobs=3)

    def run(backend: TorchGenerationBackend) -> list[tuple[int, float]]:
        outs = backend.prefill([NewSequence("x", prompt, params, len(prompt) + 10)])
        got = [(outs[0].token, outs[0].logprob)]
        while len(got) < 10:
            outs = backend.decode({"x": got[-1][0]})
            got += [(o.token, o.logprob) for o in outs]
        return got[:10]

    plain = run(TorchGenerationBackend(tiny_lm, max_slots=1, max_len=64))
    fast = run(TorchGenerationBackend(tiny_lm, max_slots=1, max_len=64, speculation=NGRAM))
    assert [t for t, _ in fast] == [t for t, _ in plain]
    assert [lp for _, lp in fast] == pytest.approx([lp for _, lp in plain], abs=1e-4)


def test_no_draft_reaches_past_the_requests_end_or_the_cache(tiny_lm: Path) -> None:
    backend = TorchGenerationBackend(tiny_lm, max_slots=1, max_len=16, speculation=NGRAM)
    prompt = [2, 3, 2, 3, 2, 3, 2, 3]
    outs = backend.prefill([NewSequence("x", prompt, SamplingParams(), 12)])
    tokens = [outs[0].token]
    while len(tokens) < 4:
        outs = backend.decode({"x": tokens[-1]})
        tokens += [o.token for o in outs]
        assert backend.length("x") + 1 <= 12  # the cache never holds past the budget
    assert len(tokens) == 4  # prompt 8 + 4 new = the request's 12, never more


def test_a_big_step_does_not_speculate(tiny_lm: Path) -> None:
    config = SpeculationConfig(prompt_lookup_min=1, max_batch=1, token_cost=0.0)
    backend = TorchGenerationBackend(tiny_lm, max_slots=2, max_len=64, speculation=config)
    seqs = [NewSequence(i, [2, 3, 2, 3, 2, 3], SamplingParams(), 40) for i in range(2)]
    last = {o.id: o.token for o in backend.prefill(seqs)}
    for _ in range(4):
        last = {o.id: o.token for o in backend.decode(last)}
    assert backend.speculation() == (0, 0, 0)


@pytest.fixture(scope="module")
def other_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A different model with the same vocabulary: a poor draft."""
    return _saved_llama(tmp_path_factory, seed=1)


@pytest.mark.parametrize("draft", ["itself", "another"])
def test_a_draft_model_changes_no_token(tiny_lm: Path, other_lm: Path, draft: str) -> None:
    params: dict[Hashable, SamplingParams] = {
        "a": SamplingParams(),
        "b": SamplingParams(do_sample=True, temperature=0.7, seed=11),
        "c": SamplingParams(frequency_penalty=0.4),
        "d": SamplingParams(do_sample=True, top_k=5, seed=3),
    }
    plain = _crowd(BACKENDS["slots"](tiny_lm), params, new=12)
    config = SpeculationConfig(
        method="draft_model",
        model=str(tiny_lm if draft == "itself" else other_lm),
        num_speculative_tokens=3,
        token_cost=0.0,
    )
    speculating = BACKENDS["slots"](tiny_lm, speculation=config)
    assert _crowd(speculating, params, new=12) == plain
    _, drafted, accepted = speculating.speculation() or (0, 0, 0)
    if draft == "itself":  # the greedy row accepts every draft of its own model
        assert accepted > drafted / 4
    assert speculating.table.speculator is not None
    assert speculating.table.speculator.drafter.backend.active == 0  # type: ignore[attr-defined]


class _Table:
    """What ``Speculator.drafts`` reads of a sequence table."""

    def constrained(self, seq: object) -> bool:
        return False

    def length(self, seq: object) -> int:
        return 10


def test_drafts_are_as_long_as_pays_and_pause_when_none_does() -> None:
    config = SpeculationConfig(num_speculative_tokens=6, prompt_lookup_min=1, token_cost=0.3)
    speculator = speculator_for(config)
    speculator.admit("s", [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2], max_tokens=100)
    table: Any = _Table()
    # The prior (a draft accepted 3 times in 4) pays best for 2 drafts at 0.3 a token.
    assert len(speculator.drafts({"s": 3}, table, 64)["s"]) == 2
    for _ in range(4):
        speculator.settle("s", 3, 0)  # every draft rejected: none pays any more
    assert speculator.drafts({"s": 3}, table, 64) == {}  # ... so it pauses
    assert [speculator.drafts({"s": 3}, table, 64) for _ in range(4)][:3] == [{}] * 3
    assert len(speculator.drafts({"s": 3}, table, 64)["s"]) == 2  # a fresh chance
    assert speculator.counts.drafts == 4 and speculator.counts.accepted_tokens == 0
    near_end = speculator_for(config)
    near_end.admit("e", [1, 2, 1, 2, 1, 2, 1, 2, 1, 2], max_tokens=13)
    assert len(near_end.drafts({"e": 1}, table, 64)["e"]) == 1  # 13 - 10 - 2


def test_the_best_length_weighs_acceptance_against_cost() -> None:
    assert best_length(0.9, 0.25, 6) == 6  # torch-like: cheap tokens, good drafts
    assert best_length(0.7, 0.5, 6) == 1  # llama.cpp-like: +0.5 a token
    assert best_length(0.3, 0.5, 6) == 0  # not worth a draft
    assert best_length(0.99, 0.0, 4) == 4


def test_step_costs_are_learned_from_timed_steps() -> None:
    cost = StepCost()
    for _ in range(20):
        cost.observe(1, 0, 0.010)  # a plain step: 10 ms
        cost.observe(1, 4, 0.030)  # 4 drafts: 30 ms, +0.5 of a plain step each
    assert cost.token == pytest.approx(0.5, abs=0.01)
    acceptance = Acceptance()
    for _ in range(30):
        acceptance.observe(drafted=4, accepted=1)
    assert acceptance.p == pytest.approx(0.5, abs=0.01)


def speculator_for(config: SpeculationConfig) -> Any:
    return make_speculator(config, max_slots=2, max_len=64, vocab_size=VOCAB)


def test_a_drafter_that_fails_leaves_the_step_to_decode_without_drafts(
    tiny_lm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = TorchGenerationBackend(tiny_lm, max_slots=1, max_len=64, speculation=NGRAM)
    plain = TorchGenerationBackend(tiny_lm, max_slots=1, max_len=64)
    speculator = backend.table.speculator
    assert speculator is not None

    def broken(*args: object) -> dict[object, list[int]]:
        raise RuntimeError("draft model out of memory")

    monkeypatch.setattr(speculator.drafter, "propose", broken)
    prompt = [2, 3, 2, 3, 2, 3]
    first = [b.prefill([NewSequence("x", prompt)])[0].token for b in (backend, plain)]
    assert first[0] == first[1]
    assert backend.decode({"x": first[0]}) == plain.decode({"x": first[1]})
    assert backend.speculation() == (0, 0, 0)
