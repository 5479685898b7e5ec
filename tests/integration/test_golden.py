"""Fingerprints, tokenizer-model consistency and the golden-output gate: a version
whose files or outputs moved is caught, by ``squeezer pin --check`` and at load."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from squeezer.cli import app
from squeezer.config import Settings
from squeezer.errors import ModelLoadError
from squeezer.models import read_folder
from squeezer.models.fingerprint import LOCKFILE_NAME, check_consistency, fingerprint
from tests.tiny_models import train_wordpiece

runner = CliRunner()


def _copy(source: Path, to: Path) -> Path:
    shutil.copytree(source, to)
    return to


def _rewrite_weights(folder: Path, change: Any) -> Path:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})
    return folder


def _tampered(source: Path, to: Path) -> Path:
    """One tensor with noise on it."""

    def noise(t: dict[str, torch.Tensor]) -> None:
        key = next(k for k in t if k.endswith("layer.0.intermediate.dense.weight"))
        g = torch.Generator().manual_seed(0)
        t[key] = t[key] + 0.5 * torch.randn(t[key].shape, generator=g)

    return _rewrite_weights(_copy(source, to), noise)


def _half(source: Path, to: Path) -> Path:
    """An fp16 copy of the weights."""

    def half(t: dict[str, torch.Tensor]) -> None:
        for key, value in t.items():
            if value.is_floating_point():
                t[key] = value.to(torch.float16)

    return _rewrite_weights(_copy(source, to), half)


def _set_chat_template(folder: Path, template: str) -> None:
    """Where transformers 5 saves it (``chat_template.jinja``), else the config."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        jinja.write_text(template)
        return
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def _pin(*args: str) -> Any:
    return runner.invoke(app, ["pin", *args])


# -- fingerprints ------------------------------------------------------------------------


def test_the_fingerprint_says_which_part_changed(
    tiny_bert: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    base = fingerprint(read_folder(tiny_bert))
    assert base == fingerprint(read_folder(_copy(tiny_bert, tmp_path / "same")))
    tampered = fingerprint(read_folder(_tampered(tiny_bert, tmp_path / "tampered")))
    assert tampered.digest != base.digest and base.differences(tampered) == ["weights"]
    swapped = _copy(tiny_bert, tmp_path / "swapped")
    train_wordpiece(vocab_size=400).save(str(swapped / "tokenizer.json"))
    assert base.differences(fingerprint(read_folder(swapped))) == ["tokenizer"]
    # A golden lockfile in the folder is not the model.
    (swapped / LOCKFILE_NAME).write_text("{}")
    assert fingerprint(read_folder(swapped)).parts["tokenizer"] != base.parts["tokenizer"]
    chat = _copy(tiny_llama, tmp_path / "chat")
    _set_chat_template(chat, "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    llama = fingerprint(read_folder(tiny_llama))
    assert llama.differences(fingerprint(read_folder(chat))) == ["chat_template"]


def test_a_tokenizer_that_does_not_fit_its_model_is_refused(
    tiny_bert: Path, tmp_path: Path
) -> None:
    big = _copy(tiny_bert, tmp_path / "big")
    train_wordpiece(vocab_size=900).save(str(big / "tokenizer.json"))
    with pytest.raises(
        ModelLoadError, match=r"tokenizer.json emits token ids up to \d+, but .*600"
    ):
        check_consistency(read_folder(big))
    pad = _copy(tiny_bert, tmp_path / "pad")
    config = json.loads((pad / "config.json").read_text())
    config["pad_token_id"] = 5000
    (pad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="pad_token_id \\[5000\\] is outside the 600"):
        check_consistency(read_folder(pad))
    folder = read_folder(tiny_bert)
    positions = folder.config["max_position_embeddings"]
    with pytest.raises(ModelLoadError, match=f"exceeds the position table of {positions}"):
        check_consistency(folder, max_length=positions + 1)
    check_consistency(folder, max_length=folder.max_input_length)  # the tiny model fits


# -- squeezer pin ------------------------------------------------------------------------


def test_pin_then_check_catches_a_tampered_tensor_and_a_swapped_tokenizer(
    tiny_bert: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    lock = tmp_path / "bert.lock.json"
    made = _pin(f"bert={tiny_bert}", "--out", str(lock))
    assert made.exit_code == 0, made.output
    recorded = json.loads(lock.read_text())
    assert recorded["format"] == "squeezer-golden/1" and recorded["version"] == "1"
    assert len(recorded["outputs"]["embed"]["vectors"]) == 16
    assert recorded["fingerprint"]["parts"]["weights"] and recorded["versions"]["transformers"]

    same = _pin(f"bert={tiny_bert}", "--check", str(lock))
    assert same.exit_code == 0 and "passed" in same.output, same.output
    tampered = _pin(f"bert={_tampered(tiny_bert, tmp_path / 't')}", "--check", str(lock))
    assert tampered.exit_code == 1, tampered.output
    assert "DRIFT" in tampered.output and "weights changed" in tampered.output
    swapped = _copy(tiny_bert, tmp_path / "swapped")
    shutil.copy(tiny_llama / "tokenizer.json", swapped / "tokenizer.json")  # fits the rows
    checked = _pin(f"bert={swapped}", "--check", str(lock))
    assert checked.exit_code == 1 and "tokenizer changed" in checked.output, checked.output


def test_an_fp16_copy_passes_at_a_stated_tolerance_and_fails_at_the_default(
    tiny_llama: Path, tmp_path: Path
) -> None:
    lock = tmp_path / "llama.lock.json"
    assert _pin(f"llama={tiny_llama}", "--out", str(lock)).exit_code == 0
    recorded = json.loads(lock.read_text())["outputs"]["generate"]
    assert len(recorded["tokens"]) == 16 and {len(t) for t in recorded["tokens"]} == {16}
    half = _half(tiny_llama, tmp_path / "half")
    strict = _pin(f"llama={half}", "--check", str(lock))
    assert strict.exit_code == 1 and "max_logprob_change" in strict.output, strict.output
    stated = _pin(f"llama={half}", "--check", str(lock), "--drift-tolerance", "generate=0.001")
    assert stated.exit_code == 0, stated.output


def test_a_lockfile_from_other_library_versions_names_both(tiny_bert: Path, tmp_path: Path) -> None:
    lock = tmp_path / "bert.lock.json"
    assert _pin(f"bert={tiny_bert}", "--out", str(lock)).exit_code == 0
    data = json.loads(lock.read_text())
    now = data["versions"]["transformers"]
    data["versions"]["transformers"] = "4.57.1"
    lock.write_text(json.dumps(data))
    checked = _pin(f"bert={tiny_bert}", "--check", str(lock))
    assert checked.exit_code == 0, checked.output  # same outputs: the upgrade passes
    assert f"library transformers: pinned with 4.57.1, now {now}" in checked.output


# -- the gate while serving -----------------------------------------------------------


async def test_a_drifted_version_is_refused_unless_drift_is_allowed(
    make_async_client: Any, tiny_bert: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    good = _copy(tiny_bert, repo / "bert" / "1")
    made = await asyncio.to_thread(_pin, f"bert={good}", "--out", str(good / LOCKFILE_NAME))
    assert made.exit_code == 0, made.output
    drifted = _tampered(tiny_bert, repo / "bert" / "2")
    shutil.copy(good / LOCKFILE_NAME, drifted / LOCKFILE_NAME)

    client = await make_async_client(
        Settings(model_repository=repo, warmup=False, repository_load_all=False)
    )
    r = await client.post("/admin/models/bert/versions/1/load", json={"aliases": ["default"]})
    assert r.status_code == 200, r.text
    one = next(v for v in r.json()["versions"] if v["version"] == "1")
    assert one["golden"]["passed"] and one["golden"]["tasks"][0]["task"] == "embed"
    refused = await client.post("/admin/models/bert/versions/2/load", json={"aliases": ["default"]})
    assert refused.status_code == 400
    message = refused.json()["error"]
    assert "golden-output gate" in message and "min_cosine" in message
    assert "fingerprint differs in weights" in message
    versions = {
        v["version"]: v for v in (await client.get("/admin/models/bert")).json()["versions"]
    }
    assert versions["2"]["state"] == "failed" and versions["1"]["default"]
    served = await client.post("/v1/embeddings", json={"model": "bert", "input": "x"})
    assert served.headers["x-model-version"] == "1"

    allowing = await make_async_client(
        Settings(model_repository=repo, warmup=False, allow_drift=True)
    )
    info = (await allowing.get("/info")).json()["models"][0]
    assert info["version"] == "2" and info["fingerprint"]["weights"]
    assert info["golden"]["passed"] is False and info["golden"]["allowed"] is True
    card = (await allowing.get("/v1/models")).json()["data"][0]
    assert card["golden"]["tasks"][0]["loss"] > 1e-4
    metrics = (await allowing.get("/metrics")).text
    assert 'squeezer_golden_loss{model="bert",task="embed",version="2"}' in metrics


async def test_a_chat_template_that_does_not_render_is_refused(
    make_async_client: Any, tiny_bert: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    broken = _copy(tiny_llama, tmp_path / "broken")
    _set_chat_template(broken, "{{ messages[5]['content'] }}")  # fails on two messages
    client = await make_async_client(
        Settings.model_validate(
            {"models": [{"name": "bert", "path": str(tiny_bert)}], "warmup": False}
        )
    )
    r = await client.post("/admin/models/llama/versions/1/load", json={"source": str(broken)})
    assert r.status_code == 400
    assert "chat template" in r.json()["error"] and "two-message" in r.json()["error"]
