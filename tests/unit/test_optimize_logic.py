"""The optimizer's logic without building anything: splits, scoring, choice, manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from squeezer.errors import ModelLoadError
from squeezer.models.manifest import Hardware, Manifest, SourceModel, read_manifest
from squeezer.optimize.accuracy import Accuracy, compare
from squeezer.optimize.candidate import Candidate
from squeezer.optimize.corpus import load_texts, split_texts
from squeezer.optimize.select import REFERENCE, CandidateResult, Objective, Status, choose
from squeezer.optimize.speed import Speed
from squeezer.types import Task


def test_splits_are_disjoint_deterministic_and_deduplicated() -> None:
    texts = load_texts(None)
    a = split_texts([*texts, *texts[:50]], per_split=100, seed=3)
    b = split_texts(texts, per_split=100, seed=3)
    assert a == b
    sets = [set(a.calibration), set(a.selection), set(a.report)]
    assert all(len(s) == 100 for s in sets)
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert split_texts(texts, per_split=100, seed=4) != a


def test_small_corpus_splits_evenly_and_too_small_is_refused() -> None:
    s = split_texts([f"text {i}" for i in range(10)], per_split=256)
    assert s.sizes() == {"calibration": 3, "selection": 3, "report": 3}
    with pytest.raises(ValueError, match="at least 3"):
        split_texts(["a", "a", "b"])


def test_embedding_loss_is_one_minus_min_cosine() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20, 8)).astype(np.float32)
    cand = ref.copy()
    cand[3] = -ref[3]  # one vector flipped: cosine -1
    acc = compare(Task.EMBED, ref, cand)
    assert acc.min_cosine == pytest.approx(-1.0)
    assert acc.loss == pytest.approx(2.0)
    assert acc.mean_cosine == pytest.approx((19 - 1) / 20)
    same = compare(Task.EMBED, ref, ref * 3.0)  # scale does not matter
    assert same.loss == pytest.approx(0.0, abs=1e-6) and same.agreement == 1.0


def test_classifier_loss_is_one_minus_top1_agreement() -> None:
    ref = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    cand = ref.copy()
    cand[2] = [0.0, 1.0]
    acc = compare(Task.CLASSIFY, ref, cand)
    assert acc.agreement == 0.75 and acc.loss == pytest.approx(0.25)
    assert acc.max_prob_diff > 0.4


def _result(
    name: str, loss: float, speed: float, status: Status = Status.MEASURED
) -> CandidateResult:
    runtime, _, precision = name.partition("-")
    acc = Accuracy(loss, 1 - loss, 1 - loss / 2, 1.0)
    return CandidateResult(
        Candidate(runtime, precision),
        status,
        reason="" if status is Status.MEASURED else "not installed",
        selection=acc if status is Status.MEASURED else None,
        speed=Speed(speed, 1.0, 2.0, 32) if status is Status.MEASURED else None,
    )


def test_choice_is_the_fastest_within_the_margin_and_every_loser_says_why() -> None:
    results = [
        _result(REFERENCE, 0.0, 100),
        _result("onnx-fp32", 1e-7, 130),
        _result("onnx-int8a", 0.009, 300),  # inside the budget, outside the 0.8 margin
        _result("onnx-int8b", 0.007, 220),
        _result("ct2-int8", 0.0, 0, Status.SKIPPED),
    ]
    choice = choose(results, max_loss=0.01)
    assert choice.winner.name == "onnx-int8b" and choice.within_budget
    assert choice.verdicts["onnx-int8a"].startswith("over budget")
    assert choice.verdicts["onnx-fp32"].startswith("slower: 130.0/s vs 220.0/s")
    assert choice.verdicts["ct2-int8"] == "skipped: not installed"
    # A looser margin lets the faster one through.
    assert choose(results, max_loss=0.01, margin=1.0).winner.name == "onnx-int8a"


def test_latency_objective_picks_the_lowest_single_sentence_p50() -> None:
    results = [_result(REFERENCE, 0.0, 100), _result("ct2-fp32", 0.0, 200)]
    results.append(_result("onnx-fp32", 0.0, 150))
    results[2].speed = Speed(150, 0.5, 0.9, 32)  # slower in batches, faster alone
    assert choose(results, 0.01).winner.name == "ct2-fp32"
    choice = choose(results, 0.01, objective=Objective.LATENCY)
    assert choice.winner.name == "onnx-fp32"
    assert choice.verdicts["ct2-fp32"] == "slower: 1.00 ms vs 0.50 ms"


def test_nothing_but_the_reference_passing_is_a_fallback() -> None:
    results = [_result(REFERENCE, 0.0, 100), _result("onnx-int8", 0.05, 300)]
    choice = choose(results, max_loss=0.01)
    assert choice.winner.name == REFERENCE and not choice.within_budget


def _manifest() -> Manifest:
    return Manifest(
        squeezer_version="0.1.0",
        created="2026-11-23T00:00:00+00:00",
        task="embed",
        source=SourceModel(path="/m", content_hash="ab" * 32, model_type="bert"),
        runtime="onnxruntime",
        runtime_version="1.32.0",
        precision="int8",
        variant="per-channel-s8",
        candidate="onnxruntime-int8-per-channel-s8",
        accuracy={"loss": 0.004, "min_cosine": 0.996},
        speed={"throughput": 220.0},
        max_loss=0.01,
        hardware=Hardware(machine="x86_64", cpu="cpu", flags=("avx", "avx2"), cores=2),
        build={"kept_in_float": ["a", "b"]},
    )


def test_manifest_round_trips(tmp_path: Path) -> None:
    m = _manifest()
    m.write(tmp_path)
    assert read_manifest(tmp_path) == m
    assert read_manifest(tmp_path / "nowhere") is None
    (tmp_path / "squeezer.json").write_text('{"runtime": 3}')
    with pytest.raises(ModelLoadError, match="not a valid squeezer manifest"):
        read_manifest(tmp_path)


def test_hardware_differences_name_what_changed() -> None:
    a = Hardware(machine="x86_64", cpu="A", flags=("avx2", "avx512_vnni"), cores=2)
    b = Hardware(machine="x86_64", cpu="B", flags=("avx2",), cores=4)
    assert a.differences(a) == []
    assert a.differences(b) == ["CPU flags missing here: avx512_vnni", "cores 2 -> 4"]
    assert a.fingerprint != b.fingerprint


def test_a_gpu_search_adds_half_precision_torch_and_drops_cpu_runtimes() -> None:
    from squeezer.optimize.catalog import all_candidates

    names = lambda cs: {c.name for c in cs}  # noqa: E731
    found, missing = all_candidates(device="cuda:0")
    assert names(found) == {
        "torch-float32",
        "torch-float32-compile",
        "torch-float16",
        "torch-float16-compile",
        "torch-bfloat16",
        "torch-bfloat16-compile",
    }
    assert {r: "runs on CPU only" in why for r, why in missing.items()} == {
        "onnxruntime": True,
        "openvino": True,
        "ctranslate2": True,
        "jax": True,
        "litert": True,
    }
    avx2, left_out = all_candidates(flags=("avx2", "fma"))
    assert not any("16" in c.name for c in avx2)  # no native half kernels on AVX2
    assert "lacks bf16 (needs avx512_bf16 or amx_bf16)" in left_out["torch-bfloat16"]
    assert "lacks fp16" in left_out["torch-float16"]
    named, _ = all_candidates(only=("torch-bfloat16",), flags=("avx512f", "amx_bf16"))
    assert names(named) == {"torch-float32", "torch-bfloat16", "torch-bfloat16-compile"}
    half = next(c for c in found if c.name == "torch-float16")
    assert half.options == {"dtype": "float16"}  # the manifest records the precision


def test_an_artifact_from_another_gpu_differs() -> None:
    from squeezer.models.manifest import current_hardware

    cpu = current_hardware(2)
    h100 = current_hardware(2, gpu="NVIDIA H100 80GB HBM3")
    assert cpu.gpu is None and h100.fingerprint != cpu.fingerprint
    assert h100.differences(current_hardware(2, gpu="NVIDIA H200")) == [
        "GPU NVIDIA H100 80GB HBM3 -> NVIDIA H200"
    ]
    assert cpu.differences(h100) == ["GPU none -> NVIDIA H100 80GB HBM3"]


def test_framework_rows_show_each_frameworks_best_recipe_or_why_not() -> None:
    from squeezer.optimize.frameworks import framework_rows, markdown_table

    results = [
        _result(REFERENCE, 0.0, 100),
        _result("onnxruntime-fp32", 0.0, 130),
        _result("onnxruntime-int8", 0.05, 400),  # over budget: not the framework's best
        _result("openvino-int8", 0.02, 300),  # the only one, over budget
        _result("ctranslate2-int8", 0.0, 0, Status.FAILED),
    ]
    results[-1].reason = "boom"
    compiled = _result("torch-float32", 0.0, 90)
    compiled.candidate = Candidate("torch", "float32", "compile")
    results.append(compiled)
    for r in results:
        r.report = r.selection
    rows = framework_rows(
        results, {"jax": "not installed: pip install 'squeezer[jax]'"}, 0.01, 0.8,
        Objective.THROUGHPUT,
    )  # fmt: skip
    by = {row.framework: row for row in rows}
    assert [row.framework for row in rows] == [
        "PyTorch eager", "PyTorch compiled", "ONNX Runtime", "OpenVINO", "CTranslate2",
        "JAX/XLA", "LiteRT",
    ]  # fmt: skip
    assert by["PyTorch eager"].best is results[0] and by["PyTorch compiled"].best is compiled
    assert by["ONNX Runtime"].best is results[1] and by["ONNX Runtime"].within_budget
    assert by["OpenVINO"].best is results[3] and not by["OpenVINO"].within_budget
    assert "failed (boom)" in by["CTranslate2"].note
    assert by["JAX/XLA"].note.startswith("not installed") and by["JAX/XLA"].best is None
    assert by["LiteRT"].note == "not in this search (--only)"
    table = markdown_table(rows, 100.0)
    assert "| ONNX Runtime | onnxruntime-fp32 | 130.0 | 1.30 |" in table


def test_a_search_inside_a_server_leaves_out_runtimes_that_change_the_process() -> None:
    from squeezer.backends.registry import missing_reason
    from squeezer.optimize.catalog import PROCESS_WIDE, all_candidates

    if missing_reason("jax") is not None:
        pytest.skip("the jax extra is not installed")
    found, left_out = all_candidates(only=("jax",), in_server=True)
    assert {c.runtime for c in found} == {"torch"}
    assert left_out["jax"].startswith(PROCESS_WIDE["jax"])
    standalone, _ = all_candidates(only=("jax",))
    assert "jax" in {c.runtime for c in standalone}


def test_speed_is_timed_only_after_every_shape_was_seen() -> None:
    """Runtimes build kernels per new shape (OpenVINO, oneDNN, XLA); a clock started
    before each batch shape ran once timed that set-up, not the runtime. The timed
    loop cycles the batches in order, so every shape must run before any repeats."""
    from types import SimpleNamespace

    from squeezer.optimize.speed import measure

    texts = [" ".join(["w"] * n) for n in range(1, 97)]  # 96 lengths: 3 batches of 32
    shapes: list[tuple[int, int]] = []

    class FakeProbe:
        batch_size = 32
        tokenizer = SimpleNamespace(
            encode=lambda items, truncate: [
                SimpleNamespace(num_tokens=len(t.split())) for t in items
            ]
        )

        def tokenize(self, chunk: list[str]) -> list[str]:
            return chunk

        def forward(self, backend: object, chunk: list[str]) -> None:
            shapes.append((len(chunk), max(len(t.split()) for t in chunk)))

    measure(object(), FakeProbe(), texts, budget_s=0.02)  # type: ignore[arg-type]
    batches = sorted({s for s in shapes if s[0] == 32})
    assert len(batches) == 3
    assert shapes[:3] == batches, "a batch shape ran on the clock before it ran once"
