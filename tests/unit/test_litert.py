"""The LiteRT backend and its builds, on tiny random BERTs against the torch backend.

Builds need the converter's own venv (``build_litert.converter_python``); the module
is skipped when the runtime is not installed or that venv cannot be made here. A
conversion costs about 3.5 s per signature, so these builds use a reduced grid of
buckets (lengths 16 and the model's maximum, batches 1 and 8).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from squeezer.backends.litert_backend import MODEL_FILE, LiteRtBackend, _batch_for
from squeezer.backends.registry import load_backend
from squeezer.backends.torch_backend import TorchBackend
from squeezer.errors import ModelLoadError
from squeezer.models import ModelFolder, read_folder
from squeezer.optimize import build_litert
from squeezer.optimize.build_litert import CANDIDATES, build_fp32, build_int8_dynamic, supports
from squeezer.optimize.candidate import BuildContext, BuildInfo
from squeezer.optimize.search import OptimizeSettings, Search
from squeezer.optimize.select import REFERENCE, Status
from squeezer.types import Task
from tests.arrays import cosine, mean_pooled, padded_batch
from tests.tiny_models import corpus

SENTENCES = corpus(200)
TEXTS = SENTENCES[100:124]
#: The reduced grid: two lengths (16 and the model's maximum) keep a build near 15 s.
LENGTHS = (16,)


@pytest.fixture(scope="module")
def converter() -> Path:
    # Making the venv takes a minute or more and 2 GB: `make test` uses one already
    # made, `make test-litert` (SQUEEZER_TEST_LITERT=1) makes it first.
    if not build_litert.converter_ready() and not os.environ.get("SQUEEZER_TEST_LITERT"):
        pytest.skip("no LiteRT converter venv made; `make test-litert` makes one and runs these")
    try:
        return build_litert.converter_python()
    except ModelLoadError as e:
        pytest.skip(f"no LiteRT converter here: {e}")


@pytest.fixture(autouse=True)
def small_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_litert, "LENGTHS", LENGTHS)


Build = Callable[[BuildContext], BuildInfo]


def _build(src: Path, build: Build, out: Path, cache: Path) -> tuple[Path, BuildInfo]:
    """Copy the source folder to ``out`` (as the search does), then build into it."""
    shutil.copytree(src, out)
    info = build(BuildContext(source=read_folder(src), out=out, cache=cache))
    assert info.files == (MODEL_FILE,)
    assert (out / MODEL_FILE).is_file()
    assert info.details["versions"]["litert-torch"] == "0.10.0"  # type: ignore[index]
    return out, info


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("litert-cache")


@pytest.fixture(scope="module")
def bert_fp32(
    converter: Path, tiny_bert: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build_litert, "LENGTHS", LENGTHS)
        out, info = _build(tiny_bert, build_fp32, tmp_path_factory.mktemp("art") / "fp32", cache)
    assert info.details["buckets"] == ["b1_l16", "b1_l64", "b8_l16", "b8_l64"]
    return out


def test_fp32_matches_torch_on_a_padded_batch(tiny_bert: Path, bert_fp32: Path) -> None:
    batch = padded_batch(bert_fp32, TEXTS)
    assert batch["attention_mask"].min() == 0  # some rows are padded
    lengths = batch["attention_mask"].sum(axis=1)
    assert lengths.min() < 16 < lengths.max()  # rows fall in both length buckets
    backend = LiteRtBackend(bert_fp32)
    assert backend.output_names == ("last_hidden_state",)
    got = backend.forward(batch)["last_hidden_state"]
    want = TorchBackend(tiny_bert).forward(batch)["last_hidden_state"]
    real = batch["attention_mask"].astype(bool)
    assert got.dtype == np.float32 and got.shape == want.shape
    # fp32 through XNNPACK: the same sums in another order.
    np.testing.assert_allclose(got[real], want[real], atol=1e-4)
    backend.close()


def test_any_batch_and_length_and_missing_token_types(bert_fp32: Path) -> None:
    backend = load_backend("litert", bert_fp32, device="cpu", dtype="float32")
    whole = backend.forward(padded_batch(bert_fp32, TEXTS))["last_hidden_state"]
    for rows in (1, 3, 5, 9, 17):  # b1 runs, b8 padded, mixed
        batch = padded_batch(bert_fp32, TEXTS[:rows])
        got = backend.forward(batch)["last_hidden_state"]
        without = backend.forward({k: v for k, v in batch.items() if k != "token_type_ids"})
        width = batch["input_ids"].shape[1]
        assert got.shape == (rows, width, 32)
        np.testing.assert_array_equal(got, without["last_hidden_state"])
        real = batch["attention_mask"].astype(bool)
        np.testing.assert_allclose(got[real], whole[:rows, :width][real], atol=1e-5)
    with pytest.raises(ValueError, match="at most 64"):
        backend.forward({"input_ids": np.ones((1, 65), np.int64)})


def test_batch_split() -> None:
    assert [_batch_for(n, (1, 8)) for n in (1, 2, 3, 4, 7, 8, 30)] == [1, 1, 1, 8, 8, 8, 8]
    assert _batch_for(2, (8,)) == 8


@pytest.mark.slow  # a conversion of its own (~20 s)
def test_classifier_logits_match_torch(
    converter: Path, tiny_classifier: Path, tmp_path: Path
) -> None:
    out, info = _build(tiny_classifier, build_fp32, tmp_path / "fp32", tmp_path / "cache")
    assert info.details["outputs"] == ["last_hidden_state", "logits"]
    batch = padded_batch(out, TEXTS)
    backend = LiteRtBackend(out)
    assert backend.output_names == ("last_hidden_state", "logits")
    got, want = backend.forward(batch), TorchBackend(tiny_classifier).forward(batch)
    assert got["logits"].shape == (len(TEXTS), 3)
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-4)
    only = backend.forward(batch, ["logits"])
    assert list(only) == ["logits"]
    with pytest.raises(ValueError, match="not produced"):
        backend.forward(batch, ["start_logits"])


# A tiny random BERT (2 layers, 32 wide) measured min pooled cosine 0.9999 with
# dynamic-range int8; the bound leaves room for other CPUs' kernels.


def test_int8_dynamic_stays_close_to_torch(
    tiny_bert: Path, bert_fp32: Path, cache: Path, tmp_path: Path
) -> None:
    out, info = _build(tiny_bert, build_int8_dynamic, tmp_path / "int8", cache)
    assert info.details["recipe"] == "dynamic_wi8_afp32"
    assert (out / MODEL_FILE).stat().st_size < (bert_fp32 / MODEL_FILE).stat().st_size
    from ai_edge_litert.interpreter import Interpreter

    tensors = Interpreter(model_path=str(out / MODEL_FILE)).get_tensor_details()
    assert sum(t["dtype"] == np.int8 for t in tensors) >= 2 * 6  # 6 linear layers per block
    batch = padded_batch(out, TEXTS)
    got = LiteRtBackend(out).forward(batch)["last_hidden_state"]
    want = TorchBackend(tiny_bert).forward(batch)["last_hidden_state"]
    mask = batch["attention_mask"]
    cos = cosine(mean_pooled(got, mask), mean_pooled(want, mask))
    assert cos.min() >= 0.999, f"min cosine {cos.min():.5f}"


@pytest.mark.slow  # a conversion of its own (~20 s)
def test_search_reaches_a_measured_verdict(
    converter: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    settings = OptimizeSettings(
        model=str(tiny_bert),
        out=tmp_path / "opt",
        per_split=24,
        only=("litert",),
        speed_budget_s=0.2,
    )
    result = Search(settings).run()
    names = [r.name for r in result.results]
    assert names == [REFERENCE, "litert-float32", "litert-int8-dynamic"]
    # On a model this small int8 may lose to fp32 at the speed probe; it is still built,
    # run and judged (never failed or skipped).
    statuses = [r.status for r in result.results]
    assert statuses[:2] == [Status.MEASURED, Status.MEASURED], [r.reason for r in result.results]
    assert statuses[2] in {Status.MEASURED, Status.STOPPED}, result.results[2].reason
    assert all(r.verdict for r in result.results)


def test_missing_runtime_is_a_load_error_with_the_extra(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build_litert, "package_version", _not_installed)
    ctx = BuildContext(source=read_folder(tiny_bert), out=tmp_path)
    for build in (build_fp32, build_int8_dynamic):
        with pytest.raises(ModelLoadError, match=r"squeezer\[litert\]"):
            build(ctx)


def _not_installed(name: str) -> str:
    from importlib.metadata import PackageNotFoundError

    raise PackageNotFoundError(name)


def test_unmakeable_converter_venv_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQUEEZER_LITERT_VENV", str(tmp_path / "venv"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(ModelLoadError, match="could not"):
        build_litert.converter_python()


def test_converter_venv_gets_our_torch_by_links_not_a_download(tmp_path: Path) -> None:
    """pip in the converter venv must find the pinned torch installed: from PyPI it
    would be a multi-GB CUDA build on Linux even where squeezer runs the CPU one."""
    import subprocess
    from importlib.metadata import version

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    build_litert._link_torch(venv, python)
    build_litert._link_torch(venv, python)  # a second call (an update) changes nothing
    # Metadata and the module's file only: torch's own dependencies are pip's to add.
    probe = (
        "import importlib.metadata as m, importlib.util as u; "
        "print(m.version('torch'), u.find_spec('torch').origin)"
    )
    done = subprocess.run([str(python), "-I", "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    got_version, got_file = done.stdout.split()
    import torch

    assert got_version == version("torch")
    assert Path(got_file).resolve() == Path(torch.__file__).resolve()


def test_folder_without_model_is_a_load_error(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=MODEL_FILE):
        LiteRtBackend(tiny_bert)
    (tmp_path / MODEL_FILE).write_bytes(b"not a flatbuffer")
    with pytest.raises(ModelLoadError, match="could not load"):
        LiteRtBackend(tmp_path)
    with pytest.raises(ModelLoadError, match="CPU"):
        LiteRtBackend(tmp_path, device="cuda:0")
    with pytest.raises(ModelLoadError, match="precision"):
        LiteRtBackend(tmp_path, dtype="float16")


def test_supports_and_candidates(tiny_bert: Path, tmp_path: Path) -> None:
    assert supports(read_folder(tiny_bert)) is None
    decoder = ModelFolder(
        path=tmp_path,
        config={"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
        pooling="mean",
        max_input_length=128,
    )
    reason = supports(decoder)
    assert reason is not None and "decoder" in reason
    assert [c.name for c in CANDIDATES] == ["litert-float32", "litert-int8-dynamic"]
    assert all({Task.EMBED, Task.CLASSIFY} <= c.tasks for c in CANDIDATES)
