"""CTranslate2: builds from a tiny BERT, parity with torch, int8 closeness, refusals."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ctranslate2")

from squeezer.backends.base import Backend
from squeezer.backends.ctranslate2_backend import (
    RUNTIME_DIR,
    SETTINGS_FILE,
    CTranslate2Backend,
    compute_type,
)
from squeezer.backends.registry import load_backend
from squeezer.backends.torch_backend import TorchBackend
from squeezer.errors import ModelLoadError
from squeezer.models import ModelFolder, read_folder
from squeezer.optimize.build_ctranslate2 import CANDIDATES, build, supports
from squeezer.optimize.candidate import BuildContext, BuildInfo
from squeezer.tasks.tokenizer import TextTokenizer
from squeezer.types import Task
from tests.tiny_models import corpus

Arrays = dict[str, np.ndarray[Any, Any]]
#: Extra padded columns past the longest row: the output must keep the input's width.
_EXTRA_COLUMNS = 3


@pytest.fixture(scope="module")
def source(tiny_bert: Path) -> ModelFolder:
    """conftest's session model: ``build_bert``'s tiny mean-pooled BERT, max 64 tokens."""
    return read_folder(tiny_bert)


@pytest.fixture(scope="module")
def built(
    source: ModelFolder, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, BuildInfo]]:
    """One artifact per quantization, built as the search builds them."""
    out: dict[str, tuple[Path, BuildInfo]] = {}
    for quantization in ("float32", "int8"):
        folder = tmp_path_factory.mktemp("ct2") / quantization
        shutil.copytree(source.path, folder)
        out[quantization] = (folder, build(BuildContext(source, folder), quantization))
    return out


def _pad(rows: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]) -> Arrays:
    width = max(len(ids) for ids, _ in rows) + _EXTRA_COLUMNS
    ids = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for r, (row_ids, row_types) in enumerate(rows):
        ids[r, : len(row_ids)] = row_ids
        types[r, : len(row_ids)] = row_types
        mask[r, : len(row_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@pytest.fixture(scope="module")
def batch(source: ModelFolder) -> Arrays:
    """Texts of very different lengths (one cut at 64 tokens), right padded."""
    texts = corpus()[:8]
    texts[0] = " ".join(texts[:6])
    texts[1] = "Short."
    items = TextTokenizer(source.tokenizer_file, 64).encode(texts, truncate=True)
    assert items[0].truncated
    return _pad([(it.ids, it.type_ids) for it in items])


@pytest.fixture(scope="module")
def pairs(source: ModelFolder) -> Arrays:
    """Text pairs: token type ids 1 on the second segment."""
    texts = corpus()[10:14]
    tokenizer = TextTokenizer(source.tokenizer_file, 64)
    items = tokenizer.encode(texts[:2], pairs=texts[2:], truncate=True)
    arrays = _pad([(it.ids, it.type_ids) for it in items])
    assert arrays["token_type_ids"].any()
    return arrays


def _torch(source: ModelFolder, inputs: Arrays) -> np.ndarray[Any, Any]:
    return np.asarray(TorchBackend(source.path).forward(inputs)["last_hidden_state"])


def _per_token_cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any], mask: Any) -> Any:
    real = mask.astype(bool)
    x, y = a[real], b[real]
    return (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))


def _mean_pooled(hidden: np.ndarray[Any, Any], mask: Any) -> Any:
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(1) / m.sum(1)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def test_build_writes_runtime_files_and_settings(
    built: dict[str, tuple[Path, BuildInfo]],
) -> None:
    for quantization, (folder, info) in built.items():
        assert f"{RUNTIME_DIR}/model.bin" in info.files
        assert f"{RUNTIME_DIR}/{SETTINGS_FILE}" in info.files
        assert all((folder / f).is_file() for f in info.files)
        assert info.details["quantization"] == quantization
        settings = json.loads((folder / RUNTIME_DIR / SETTINGS_FILE).read_text())
        expected = {"int8": "int8_float32", "float32": "float32"}[quantization]
        assert settings["compute_type"] == expected
        # The source's own config.json stays at the top, next to CT2's in its subfolder.
        assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"


def test_fp32_matches_torch_per_token(
    source: ModelFolder, built: dict[str, tuple[Path, BuildInfo]], batch: Arrays
) -> None:
    backend = CTranslate2Backend(built["float32"][0])
    assert backend.compute_type == "float32"
    hidden = backend.forward(batch)["last_hidden_state"]
    assert hidden.dtype == np.float32
    assert hidden.shape == (*batch["input_ids"].shape, source.hidden_size)
    assert np.isfinite(hidden).all()
    reference = _torch(source, batch)
    mask = batch["attention_mask"]
    assert _per_token_cosine(hidden, reference, mask).min() >= 0.9999
    assert np.abs(hidden - reference)[mask.astype(bool)].max() < 1e-4


def test_fp32_matches_torch_with_token_types(
    source: ModelFolder, built: dict[str, tuple[Path, BuildInfo]], pairs: Arrays
) -> None:
    hidden = CTranslate2Backend(built["float32"][0]).forward(pairs)["last_hidden_state"]
    reference = _torch(source, pairs)
    assert _per_token_cosine(hidden, reference, pairs["attention_mask"]).min() >= 0.9999


def test_int8_mean_pooled_close_to_torch(
    source: ModelFolder, built: dict[str, tuple[Path, BuildInfo]], batch: Arrays
) -> None:
    backend = CTranslate2Backend(built["int8"][0])
    assert backend.compute_type == "int8_float32"
    hidden = backend.forward(batch)["last_hidden_state"]
    mask = batch["attention_mask"]
    ours, reference = _mean_pooled(hidden, mask), _mean_pooled(_torch(source, batch), mask)
    # The tiny random model gives >= 0.9999 here; the gate's real budget is far looser.
    assert (ours * reference).sum(-1).min() >= 0.999


def test_ignores_extra_inputs_and_refuses_unknown_outputs(
    built: dict[str, tuple[Path, BuildInfo]], batch: Arrays
) -> None:
    backend = CTranslate2Backend(built["float32"][0])
    plain = backend.forward(batch, ["last_hidden_state"])["last_hidden_state"]
    extra = {**batch, "logit_positions": np.zeros((1, 2), dtype=np.int64)}
    np.testing.assert_array_equal(backend.forward(extra)["last_hidden_state"], plain)
    with pytest.raises(ValueError, match="logits"):
        backend.forward(batch, ["logits"])
    backend.close()


def test_loads_through_the_registry(built: dict[str, tuple[Path, BuildInfo]]) -> None:
    backend = load_backend("ctranslate2", built["int8"][0], device="cpu", dtype="float32")
    assert isinstance(backend, Backend)
    assert backend.name == "ctranslate2"
    assert backend.output_names == ("last_hidden_state",)


def test_folder_without_runtime_files_is_refused(source: ModelFolder) -> None:
    with pytest.raises(ModelLoadError, match="no CTranslate2 model"):
        CTranslate2Backend(source.path)


def test_compute_type_follows_the_build_and_the_dtype() -> None:
    int8 = {"quantization": "int8", "compute_type": "int8_float32"}
    fp32 = {"quantization": "float32", "compute_type": "float32"}
    assert compute_type(int8, "float32") == "int8_float32"
    assert compute_type(int8, "float16") == "int8_float16"
    assert compute_type(fp32, "bfloat16") == "bfloat16"
    assert compute_type({}, "float32") == "default"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"model_type": "mpnet"}, "cannot convert a 'mpnet' model"),
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "'llama'"),
        ({"position_embedding_type": "relative_key"}, "only absolute"),
        ({"hidden_act": "gelu_10"}, "activation 'gelu_10'"),
        ({"auto_map": {"AutoModel": "custom.Model"}}, "own code"),
        ({"model_type": "roberta", "pad_token_id": 0}, "pad_token_id 0"),
    ],
)
def test_supports_names_what_it_cannot_convert(
    source: ModelFolder, changes: dict[str, Any], reason: str
) -> None:
    assert supports(source) is None
    folder = dataclasses.replace(source, config={**source.config, **changes})
    found = supports(folder)
    assert found is not None and reason in found


def test_build_refuses_an_unsupported_architecture(source: ModelFolder, tmp_path: Path) -> None:
    folder = dataclasses.replace(source, config={**source.config, "model_type": "mpnet"})
    with pytest.raises(ModelLoadError, match="mpnet"):
        build(BuildContext(folder, tmp_path), "int8")
    assert not (tmp_path / RUNTIME_DIR).exists()


def test_candidates() -> None:
    by_name = {c.name: c for c in CANDIDATES}
    assert set(by_name) == {"ctranslate2-int8", "ctranslate2-float32"}
    assert all(c.tasks == frozenset({Task.EMBED}) for c in CANDIDATES)
