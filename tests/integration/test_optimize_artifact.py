"""The whole search on a tiny model, its artifact served, and ``serve --optimize``."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

pytest.importorskip("onnxruntime")

from squeezer.config import ModelSettings, Settings
from squeezer.errors import ModelLoadError
from squeezer.models import read_folder
from squeezer.models.manifest import BF16, Hardware, Manifest, read_manifest
from squeezer.optimize import build_onnx, catalog, report
from squeezer.optimize import search as search_module
from squeezer.optimize.build_torch import REFERENCE_CANDIDATE
from squeezer.optimize.candidate import BuildContext
from squeezer.optimize.search import OptimizeResult, OptimizeSettings, Search
from squeezer.optimize.select import REFERENCE, Status
from squeezer.server import loading
from squeezer.server.app import create_app
from squeezer.types import Task

ONLY = ("onnxruntime-float32-fused", "onnxruntime-int8-per-channel-s8-keep25pct")


@pytest.fixture(scope="module")
def optimized(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> OptimizeResult:
    out = tmp_path_factory.mktemp("opt") / "artifact"
    steps: list[tuple[str, str]] = []
    settings = OptimizeSettings(
        model=str(tiny_bert), out=out, per_split=24, only=ONLY, speed_budget_s=0.2
    )
    result = Search(settings, lambda name, step: steps.append((name, step))).run()
    report.write(result)
    assert ("onnxruntime-float32-fused", "build") in steps
    return result


def test_search_measures_every_candidate_and_picks_one_within_budget(
    optimized: OptimizeResult,
) -> None:
    names = [r.name for r in optimized.results]
    assert names == [REFERENCE, *ONLY]
    # The second ONNX candidate may be stopped by the speed probe (then it has a speed
    # but no accuracy); every other one is measured whole.
    assert all(r.status is Status.MEASURED for r in optimized.results[:2])
    assert optimized.results[2].status in (Status.MEASURED, Status.STOPPED)
    assert all(r.verdict for r in optimized.results)
    winner = optimized.choice.winner
    assert winner.selection is not None and winner.selection.loss <= 0.8 * 0.01
    assert optimized.task is Task.EMBED
    splits = optimized.splits
    assert not set(splits.selection) & (set(splits.calibration) | set(splits.report))


def test_artifact_holds_manifest_report_and_no_scratch(optimized: OptimizeResult) -> None:
    out = optimized.settings.out
    manifest = read_manifest(out)
    assert manifest is not None and manifest == optimized.manifest
    assert manifest.runtime in {"torch", "onnxruntime"}
    assert manifest.accuracy["loss"] == optimized.choice.winner.report.loss  # type: ignore[union-attr]
    assert manifest.source.content_hash and manifest.hardware.cores >= 1
    for name in ("report.md", "report.png", "results.json", "tokenizer.json", "modules.json"):
        assert (out / name).is_file(), name
    assert not (out / ".candidates").exists() and not (out / ".cache").exists()
    data = json.loads((out / "results.json").read_text())
    assert data["winner"] == manifest.candidate
    assert {c["candidate"] for c in data["candidates"]} == {r.name for r in optimized.results}
    text = (out / "report.md").read_text()
    assert manifest.candidate in text and "report.png" in text


def test_out_folder_that_is_not_an_artifact_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ModelLoadError, match="refusing to overwrite"):
        Search(OptimizeSettings(model=str(tiny_bert), out=tmp_path, per_split=8)).run()
    assert (tmp_path / "precious.txt").exists()


def test_out_folder_inside_the_source_is_refused(tiny_bert: Path) -> None:
    for out in (tiny_bert, tiny_bert.parent, tiny_bert / "optimized"):
        with pytest.raises(ModelLoadError, match="overlaps the model folder"):
            Search(OptimizeSettings(model=str(tiny_bert), out=out, per_split=8)).run()
    assert (tiny_bert / "model.safetensors").is_file()


def test_a_head_the_gate_cannot_measure_is_refused(tiny_ner: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not gated"):
        Search(OptimizeSettings(model=str(tiny_ner), out=tmp_path / "o", task=Task.TOKEN_CLASSIFY))


def _onnx_artifact(source: Path, manifest: Manifest, out: Path) -> Path:
    """An ONNX artifact built directly (on a tiny model torch may win the search)."""
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("*.safetensors"))
    build_onnx.build_fp32(BuildContext(read_folder(source), out, cache=out.parent))
    manifest.model_copy(
        update={"runtime": "onnxruntime", "candidate": "onnxruntime-float32-fused"}
    ).write(out)
    return out


def test_artifact_is_served_with_its_runtime_and_matches_torch(
    optimized: OptimizeResult, tiny_bert: Path, tmp_path: Path
) -> None:
    artifact = _onnx_artifact(tiny_bert, optimized.manifest, tmp_path / "art")
    models = [
        ModelSettings(name="fast", path=str(artifact)),
        ModelSettings(name="ref", path=str(tiny_bert)),
    ]
    texts = ["the quick brown fox", "a longer sentence about models and speed"]
    app = create_app(Settings(models=models))
    with TestClient(app) as client:
        assert app.state.runtime.registry.get("fast").info.backend == "onnxruntime"
        fast = client.post("/v1/embeddings", json={"input": texts, "model": "fast"})
        ref = client.post("/v1/embeddings", json={"input": texts, "model": "ref"})
        assert fast.status_code == ref.status_code == 200
        for a, b in zip(fast.json()["data"], ref.json()["data"], strict=True):
            np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-4)
        tei = client.post("/embed", json={"inputs": texts, "model": "fast"})
        assert tei.status_code == 200 and len(tei.json()) == 2


def test_artifact_from_other_hardware_is_served_with_a_warning(
    optimized: OptimizeResult, tiny_bert: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = optimized.manifest.hardware.model_copy(
        update={"flags": ("avx2", "avx512_vnni"), "cpu": "elsewhere"}
    )
    artifact = _onnx_artifact(
        tiny_bert, optimized.manifest.model_copy(update={"hardware": other}), tmp_path / "art"
    )
    app = create_app(Settings(models=[ModelSettings(name="m", path=str(artifact))]))
    with caplog.at_level(logging.WARNING), TestClient(app) as client:
        assert client.post("/embed", json={"inputs": "hello"}).status_code == 200
    assert "was tuned on elsewhere" in caplog.text


def test_serve_optimize_searches_once_then_uses_the_cache(
    tiny_bert: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[OptimizeSettings] = []
    real = Search.run

    def counted(self: Search) -> OptimizeResult:
        runs.append(self.s)
        return real(self)

    monkeypatch.setattr(Search, "run", counted)
    monkeypatch.setattr(
        search_module,
        "all_candidates",
        lambda *_a, **_k: ([REFERENCE_CANDIDATE], {}),
    )
    settings = Settings(
        models=[ModelSettings(name="m", path=str(tiny_bert))],
        optimize=True,
        optimize_cache=tmp_path / "cache",
    )
    for _ in range(2):
        with caplog.at_level(logging.INFO), TestClient(create_app(settings)) as client:
            r = client.post("/embed", json={"inputs": "hello"})
            assert r.status_code == 200
    assert len(runs) == 1
    assert "found in the cache" in caplog.text
    (entry,) = list((tmp_path / "cache").iterdir())
    assert read_manifest(entry) is not None


def test_cli_exit_status_says_when_the_budget_was_not_met(tiny_bert: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from squeezer.cli import app
    from squeezer.optimize.select import EXIT_FALLBACK

    args = ["optimize", str(tiny_bert), "--per-split", "12", "--speed-budget", "0.1"]
    args += ["--only", "onnxruntime-float32-fused"]
    runner = CliRunner()
    tight = runner.invoke(app, [*args, "--max-loss", "1e-12", "--out", str(tmp_path / "a")])
    assert tight.exit_code == EXIT_FALLBACK, tight.output
    manifest = read_manifest(tmp_path / "a")
    assert manifest is not None and manifest.candidate == REFERENCE
    assert not manifest.within_budget
    loose = runner.invoke(app, [*args, "--max-loss", "0.1", "--out", str(tmp_path / "b")])
    assert loose.exit_code == 0, loose.output
    missing = runner.invoke(app, ["optimize", str(tmp_path / "nope"), "--out", str(tmp_path / "c")])
    assert missing.exit_code == 1 and "does not exist" in " ".join(missing.output.split())
    bad = runner.invoke(app, ["optimize", str(tiny_bert), "--task", "dance"])
    assert bad.exit_code == 2 and "--task 'dance'" in " ".join(bad.output.split())
    bad = runner.invoke(app, ["optimize", str(tiny_bert), "--objective", "vibes"])
    assert bad.exit_code == 2 and "--objective 'vibes'" in " ".join(bad.output.split())


def test_classifier_gate_is_top1_agreement_and_embed_only_runtimes_are_skipped(
    tiny_classifier: Path, tmp_path: Path
) -> None:
    only = ("onnxruntime-float32-fused", "ctranslate2-float32", "torch-float32-compile")
    settings = OptimizeSettings(
        model=str(tiny_classifier), out=tmp_path / "o", per_split=16, only=only, speed_budget_s=0.1
    )
    result = Search(settings).run()
    assert result.task is Task.CLASSIFY  # the model's main task
    by_name = {r.name: r for r in result.results}
    onnx = by_name["onnxruntime-float32-fused"]
    assert onnx.status is Status.MEASURED and onnx.selection is not None
    assert onnx.selection.agreement == 1.0 and onnx.selection.loss == 0.0
    assert onnx.selection.max_prob_diff < 1e-4
    for name in ("ctranslate2-float32", "torch-float32-compile"):
        assert by_name[name].status is Status.SKIPPED
        assert "does not serve classify" in by_name[name].reason
    assert result.manifest.task == "classify"


def test_a_half_precision_artifact_is_served_at_its_dtype(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a GPU search adds (torch in fp16/bf16), run here in bf16 on CPU: measured
    under the gate, recorded with its dtype, and served at it with its precision shown."""
    picked = search_module.choose

    def choose_half(results, *args, **kwargs):  # type: ignore[no-untyped-def]
        choice = picked(results, *args, **kwargs)  # verdicts as usual, then the bf16 one
        half = next(r for r in results if r.name == "torch-bfloat16")
        return type(choice)(half, True, choice.verdicts)

    monkeypatch.setattr(search_module, "choose", choose_half)
    monkeypatch.setattr(search_module, "_PROBE_KEEP", 0.0)  # measured whole, however slow
    monkeypatch.setattr(catalog, "current_hardware", lambda _cores: _with_flags("amx_bf16"))
    out = tmp_path / "bf16"
    settings = OptimizeSettings(
        model=str(tiny_bert), out=out, per_split=16, only=("torch-bfloat16",), speed_budget_s=0.1
    )
    result = Search(settings).run()
    by_name = {r.name: r for r in result.results}
    assert set(by_name) == {REFERENCE, "torch-bfloat16", "torch-bfloat16-compile"}
    half = by_name["torch-bfloat16"]
    assert half.status is Status.MEASURED and half.selection is not None
    assert 0.95 < half.selection.min_cosine < 1.0  # lossy, and measured so
    assert result.manifest.runtime_options == {"dtype": "bfloat16"}
    assert result.manifest.hardware.gpu is None  # a CPU search
    assert result.manifest.requires == (BF16,)

    half_model = [ModelSettings(name="half", path=str(out))]
    # On a CPU without bf16 kernels the artifact is refused, unless allowed.
    monkeypatch.setattr(loading, "current_hardware", lambda *_a: _with_flags("avx2"))
    refused = create_app(Settings(models=half_model, warmup=False))
    with (
        pytest.raises(ModelLoadError, match=r"lacks: bf16 .*--allow-slow-artifact"),
        TestClient(refused),
    ):
        pass
    allowed = Settings(models=half_model, warmup=False, allow_slow_artifact=True)
    with TestClient(create_app(allowed)) as c:
        assert c.post("/embed", json={"inputs": "x"}).status_code == 200
    monkeypatch.setattr(loading, "current_hardware", lambda *_a: _with_flags("avx512_bf16"))
    with TestClient(create_app(Settings(models=half_model, warmup=False))) as c:
        info = c.get("/info").json()["models"][0]
        assert c.post("/embed", json={"inputs": "x"}).status_code == 200
    assert (info["backend"], info["dtype"]) == ("torch", "bfloat16")
    assert info["precision"]["dtype"] == "bfloat16"
    assert info["precision"]["min_cosine"] < 1.0


def _with_flags(*flags: str) -> Hardware:
    return Hardware(machine="x86_64", cpu="test cpu", flags=flags, cores=2)


def test_the_speed_probe_stops_slow_candidates_and_the_time_budget_skips(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A candidate of a runtime already measured whole stops when its probe is clearly
    slower than the best passing one; once the time budget is spent, the rest are
    skipped. Speeds are faked per runtime: no wall time is asserted."""
    real = search_module.measure

    def fake(backend, *args, **kwargs):  # type: ignore[no-untyped-def]
        speed = real(backend, *args, **kwargs)
        return dataclasses.replace(speed, throughput=1000.0 if backend.name == "torch" else 10.0)

    monkeypatch.setattr(search_module, "measure", fake)
    only = ("onnxruntime-float32-fused", "onnxruntime-float32-unfused")
    settings = OptimizeSettings(
        model=str(tiny_bert), out=tmp_path / "o", per_split=12, only=only, speed_budget_s=0.1
    )
    result = Search(settings).run()
    by_name = {r.name: r for r in result.results}
    assert by_name["onnxruntime-float32-fused"].status is Status.MEASURED  # first of its runtime
    stopped = by_name["onnxruntime-float32-unfused"]
    assert stopped.status is Status.STOPPED and stopped.selection is None
    assert "slower at the speed probe: 10.0/s against torch-float32's 1000.0/s" in stopped.verdict
    rows = {row["framework"]: row for row in report.to_json(result)["frameworks"]}
    assert rows["ONNX Runtime"]["recipe"] == "onnxruntime-float32-fused"

    spent = dataclasses.replace(settings, out=tmp_path / "p", time_budget_s=1e-9)
    late = Search(spent).run()
    assert [r.status for r in late.results] == [Status.MEASURED, Status.SKIPPED, Status.SKIPPED]
    assert "time budget" in late.results[1].reason
