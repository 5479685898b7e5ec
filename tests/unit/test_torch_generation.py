"""Continuous decoding with the per-slot cache == ``generate`` for each prompt alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from squeezer.backends.base import NewSequence, PromptChunk
from squeezer.backends.paged_generation import PagedTorchGenerationBackend
from squeezer.backends.sampling import SamplingParams
from squeezer.backends.torch_generation import TorchGenerationBackend
from squeezer.errors import InputTooLongError, OverloadedError
from tests.tiny_models import CAUSAL_LM_KINDS, tiny_causal_lm
from tests.unit.chunked_driver import drive_chunked

VOCAB = 97
PROMPTS = [[5, 17, 3, 44, 9], [60, 2], [11, 12, 13, 14, 15, 16, 17, 18, 19], [70, 71, 72]]


def _build(path: Path, kind: str) -> Path:
    torch.manual_seed(0)
    tiny_causal_lm(kind, VOCAB).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=CAUSAL_LM_KINDS)
def tiny_lm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp(request.param), request.param)


def _alone(path: Path, prompt: list[int], new: int) -> list[int]:
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=new,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def test_greedy_tokens_match_generate_while_sequences_join_and_leave(tiny_lm: Path) -> None:
    new = 8
    want = {i: _alone(tiny_lm, p, new) for i, p in enumerate(PROMPTS)}
    backend = TorchGenerationBackend(tiny_lm, max_slots=3, max_len=64)
    got: dict[int, list[int]] = {}

    def join(i: int) -> None:
        got[i] = [backend.prefill([NewSequence(i, PROMPTS[i])])[0].token]

    join(0)
    join(1)
    step = 0
    while len(got) < len(PROMPTS) or any(len(v) < new for v in got.values()):
        step += 1
        if step == 3:
            join(2)  # joins two sequences already decoding
        if step > 3 and 3 not in got and backend.active < backend.max_slots:
            join(3)  # waits for a free slot, then joins sequence 2 mid-flight
        elif step > 3 and 3 not in got:
            with pytest.raises(OverloadedError):
                backend.prefill([NewSequence(3, PROMPTS[3])])
        running = {i: v[-1] for i, v in got.items() if len(v) < new}
        for out in backend.decode(running):
            got[out.id].append(out.token)
        for i in running:
            if len(got[i]) == new:
                backend.free(i)  # the last active sequence moves into its slot
    assert got == want
    assert backend.active == 0


def test_prompts_prefilled_in_chunks_beside_decoding_match_generate(tiny_lm: Path) -> None:
    backend = TorchGenerationBackend(tiny_lm, max_slots=4, max_len=64)
    got = drive_chunked(backend, dict(enumerate(PROMPTS)), new=6, chunk=2)
    assert got == {i: _alone(tiny_lm, p, 6) for i, p in enumerate(PROMPTS)}
    assert backend.active == 0


def test_prompts_sharing_a_prefix_start_from_its_cached_keys(tiny_lm: Path) -> None:
    backend = TorchGenerationBackend(tiny_lm, max_slots=3, max_len=64)
    base = [5, 17, 3, 44, 9, 21, 22]
    first = drive_chunked(backend, {"a": base}, new=4, chunk=3)["a"]
    # "a" left; its slot still holds its prompt and the tokens it decoded after it.
    prompts = {"c": base + first[:3] + [7], "b": [*base[:5], 60, 61], "d": base[:3]}
    got = drive_chunked(backend, prompts, new=4, chunk=3)
    assert got == {k: _alone(tiny_lm, p, 4) for k, p in prompts.items()}
    # c: all 10 held tokens (in place); b: 5, copied from c's slot; d: all but its last.
    assert backend.table.cached_tokens == 10 + 5 + 2


def test_cache_buffers_are_written_in_place_not_copied(tiny_lm: Path) -> None:
    backend = TorchGenerationBackend(tiny_lm, max_slots=2, max_len=32)
    pointers = [k.data_ptr() for k in backend.cache.keys]
    outs = backend.prefill([NewSequence("a", [1, 2, 3]), NewSequence("b", [4])])
    last = {o.id: o.token for o in outs}
    for _ in range(5):
        last = {o.id: o.token for o in backend.decode(last)}
    assert [k.data_ptr() for k in backend.cache.keys] == pointers
    assert backend.length("a") == 3 + 5 and backend.length("b") == 1 + 5


def test_seeded_sampling_is_reproducible_whatever_the_batch(tiny_lm: Path) -> None:
    params = SamplingParams(do_sample=True, temperature=0.9, top_p=0.9, seed=1234)

    def run(others: int) -> list[int]:
        backend = TorchGenerationBackend(tiny_lm, max_slots=4, max_len=32)
        seqs = [NewSequence("x", PROMPTS[0], params)]
        seqs += [
            NewSequence(j, PROMPTS[j], SamplingParams(do_sample=True, seed=j))
            for j in range(1, 1 + others)
        ]
        last = {o.id: o.token for o in backend.prefill(seqs)}
        tokens = [last["x"]]
        for _ in range(6):
            last = {o.id: o.token for o in backend.decode(last)}
            tokens.append(last["x"])
        return tokens

    assert run(0) == run(3) == run(1)


def test_too_long_prompts_are_refused(tiny_lm: Path) -> None:
    backend = TorchGenerationBackend(tiny_lm, max_slots=1, max_len=8)
    with pytest.raises(InputTooLongError):
        backend.prefill([NewSequence("x", list(range(1, 10)))])
    assert backend.active == 0


def test_logprobs_come_with_alternatives(tiny_lm: Path) -> None:
    backend = TorchGenerationBackend(tiny_lm, max_slots=1, max_len=32)
    (out,) = backend.prefill([NewSequence("x", [3, 4, 5], SamplingParams(top_logprobs=2))])
    assert len(out.top) == 2 and out.top[0][0] == out.token  # greedy: the best is chosen
    assert out.top[0][1] == pytest.approx(out.logprob) and out.top[1][1] <= out.logprob


def _forward_logprobs(path: Path, prompt: list[int]) -> torch.Tensor:
    """log-softmax of the model's logits at every prompt position, from ``forward``."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), dim=-1)


@pytest.mark.parametrize("backend_class", [TorchGenerationBackend, PagedTorchGenerationBackend])
def test_prompt_logprobs_equal_the_models_forward_in_chunks_and_after_a_cached_prefix(
    tiny_lm: Path, backend_class: type[TorchGenerationBackend]
) -> None:
    prompt = PROMPTS[2]  # 9 tokens, 4 chunks of 3, 3, 3 (the last one samples)
    want = _forward_logprobs(tiny_lm, prompt)
    backend = backend_class(tiny_lm, max_slots=2, max_len=32)
    drive_chunked(backend, {"warm": prompt}, new=2, chunk=4)  # its prefix is now cached
    params = SamplingParams(top_logprobs=1, prompt_logprobs=2)
    outs = []
    start = 0
    while start < len(prompt):
        chunk = PromptChunk(NewSequence("x", prompt, params), start, min(start + 3, len(prompt)))
        outs += backend.step([chunk], {})
        start = chunk.end
    (first,) = outs
    assert first.prompt is not None and len(first.prompt) == len(prompt)
    assert first.prompt[0] is None  # nothing precedes the first token
    for position, scored in enumerate(first.prompt[1:], start=1):
        assert scored is not None and scored.token == prompt[position]
        expected = want[position - 1]
        assert scored.logprob == pytest.approx(float(expected[prompt[position]]), abs=1e-4)
        assert [t for t, _ in scored.top] == expected.topk(2).indices.tolist()
    assert first.logprob == pytest.approx(float(want[-1, first.token]), abs=1e-4)
    # "x" could have taken 8 tokens from "warm"'s slot, but scoring runs them all.
    assert backend.table.prompt_tokens == 2 * len(prompt) and backend.table.cached_tokens == 0
    decoded = backend.decode({"x": first.token})
    assert decoded[0].prompt is None  # prompt logprobs come once, with the first token


def test_presence_and_frequency_penalties_count_generated_tokens_only(tiny_lm: Path) -> None:
    """Greedy decoding with OpenAI's penalties == a loop over ``forward`` that
    subtracts them by hand, counting the output's tokens and not the prompt's."""
    prompt, new = PROMPTS[0], 10
    presence, frequency = 0.4, 0.9
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    want: list[int] = []
    with torch.no_grad():
        for _ in range(new):
            logits = model(torch.tensor([prompt + want])).logits[0, -1].float()
            counts = torch.bincount(torch.tensor(want, dtype=torch.long), minlength=VOCAB)
            counts = counts[:VOCAB].float()
            logits = logits - counts * frequency - (counts > 0).float() * presence
            want.append(int(logits.argmax()))
    backend = TorchGenerationBackend(tiny_lm, max_slots=2, max_len=64)
    params = SamplingParams(presence_penalty=presence, frequency_penalty=frequency)
    # A neighbour without penalties shares every step.
    outs = backend.prefill([NewSequence("x", prompt, params), NewSequence("y", PROMPTS[1])])
    last = {o.id: o.token for o in outs}
    got = [last["x"]]
    for _ in range(new - 1):
        last = {o.id: o.token for o in backend.decode(last)}
        got.append(last["x"])
    assert got == want
    assert got != _alone(tiny_lm, prompt, new)  # the penalties changed something
