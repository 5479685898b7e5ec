"""The OpenVINO backend and its builds, on tiny random BERTs against the torch backend."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from squeezer.backends.openvino_backend import MODEL_XML, OpenVinoBackend
from squeezer.backends.torch_backend import TorchBackend
from squeezer.errors import ModelLoadError
from squeezer.models import ModelFolder, read_folder
from squeezer.optimize import build_openvino
from squeezer.optimize.build_openvino import (
    CANDIDATES,
    build_fp32,
    build_int8_mixed,
    build_int8_static,
    build_int8_weights,
    supports,
)
from squeezer.optimize.candidate import BuildContext, BuildInfo
from squeezer.types import Task
from tests.arrays import cosine, mean_pooled, padded_batch
from tests.tiny_models import corpus

needs_nncf = pytest.mark.skipif(
    importlib.util.find_spec("nncf") is None, reason="nncf is not installed"
)

SENTENCES = corpus(200)
CALIBRATION = SENTENCES[:48]
TEXTS = SENTENCES[100:124]


@pytest.fixture(scope="module")
def models(
    tiny_bert: Path, tiny_classifier: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """conftest's tiny BERTs (``build_bert``), and a conversion cache for this module."""
    return {
        "bert": tiny_bert,
        "classifier": tiny_classifier,
        "cache": tmp_path_factory.mktemp("openvino-cache"),
    }


Build = Callable[[BuildContext], BuildInfo]


def _build(
    models: dict[str, Path], name: str, build: Build, out: Path, calibration: Sequence[str] = ()
) -> tuple[Path, BuildInfo]:
    """Copy the source folder to ``out`` (as the search does), then build into it."""
    src = models[name]
    shutil.copytree(src, out)
    ctx = BuildContext(
        source=read_folder(src),
        out=out,
        calibration=calibration,
        cache=models["cache"] / name,
    )
    info = build(ctx)
    assert info.files == ("openvino_model.xml", "openvino_model.bin")
    assert all((out / f).is_file() for f in info.files)
    assert info.details["openvino"]
    return out, info


@pytest.fixture(scope="module")
def bert_fp32(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(models, "bert", build_fp32, tmp_path_factory.mktemp("art") / "fp32")[0]


def test_fp32_matches_torch_at_real_tokens(models: dict[str, Path], bert_fp32: Path) -> None:
    batch = padded_batch(bert_fp32, TEXTS)
    assert batch["attention_mask"].min() == 0  # some rows are padded
    ov = OpenVinoBackend(bert_fp32)
    assert ov.output_names == ("last_hidden_state",)
    got = ov.forward({**batch, "logit_positions": np.zeros((1, 2), np.int64)})
    want = TorchBackend(models["bert"]).forward(batch)
    real = batch["attention_mask"].astype(bool)
    hidden = got["last_hidden_state"]
    assert hidden.dtype == np.float32
    assert hidden.shape == want["last_hidden_state"].shape
    assert cosine(hidden[real], want["last_hidden_state"][real]).min() >= 0.9999
    ov.close()


def test_dynamic_shapes_and_missing_token_types(bert_fp32: Path) -> None:
    ov = OpenVinoBackend(bert_fp32)
    for texts in (TEXTS[:1], TEXTS[:5], TEXTS):
        batch = padded_batch(bert_fp32, texts)
        with_types = ov.forward(batch)["last_hidden_state"]
        without = ov.forward({k: v for k, v in batch.items() if k != "token_type_ids"})
        assert with_types.shape == (*batch["input_ids"].shape, 32)
        np.testing.assert_array_equal(with_types, without["last_hidden_state"])


def test_classifier_logits_match_torch(models: dict[str, Path], tmp_path: Path) -> None:
    out, _ = _build(models, "classifier", build_fp32, tmp_path / "fp32")
    batch = padded_batch(out, TEXTS)
    ov = OpenVinoBackend(out)
    assert ov.output_names == ("last_hidden_state", "logits")
    torch = TorchBackend(models["classifier"])
    got, want = ov.forward(batch), torch.forward(batch)
    assert got["logits"].shape == (len(TEXTS), 3)
    assert cosine(got["logits"], want["logits"]).min() >= 0.9999
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-4)
    real = batch["attention_mask"].astype(bool)
    hidden = cosine(got["last_hidden_state"][real], want["last_hidden_state"][real])
    assert hidden.min() >= 0.9999

    only = ov.forward(batch, ["logits"])
    assert list(only) == ["logits"]
    np.testing.assert_array_equal(only["logits"], got["logits"])
    with pytest.raises(ValueError, match="not produced"):
        ov.forward(batch, ["start_logits"])


def _pooled_cosine(
    models: dict[str, Path], out: Path, inference_precision: str = "f32"
) -> np.ndarray:
    batch = padded_batch(models["bert"], TEXTS)
    got = OpenVinoBackend(out, inference_precision=inference_precision).forward(batch)[
        "last_hidden_state"
    ]
    want = TorchBackend(models["bert"]).forward(batch)["last_hidden_state"]
    mask = batch["attention_mask"]
    return cosine(mean_pooled(got, mask), mean_pooled(want, mask))


# Thresholds a tiny random BERT (2 layers, 32 wide) meets with room to spare; measured
# min/mean pooled cosine: weights-only 0.99999/0.99999, static 0.99997/0.99999.
# all-MiniLM-L6-v2, a trained model with outlier activations, measured 0.9992/0.9997
# (weights) and 0.976/0.994 (static) on 100 sentences when these builds were written.


@needs_nncf
def test_int8_weights_stay_close_to_torch(models: dict[str, Path], tmp_path: Path) -> None:
    out, info = _build(models, "bert", build_int8_weights, tmp_path / "int8")
    assert int(str(info.details["int8_weights"])) > 0
    cos = _pooled_cosine(models, out)
    assert cos.min() >= 0.9995, f"min cosine {cos.min():.5f}"


@needs_nncf
def test_int8_static_stays_close_to_torch(models: dict[str, Path], tmp_path: Path) -> None:
    out, info = _build(models, "bert", build_int8_static, tmp_path / "int8", CALIBRATION)
    assert info.details["overflow_fix"] == "enable"
    assert info.details["calibration_samples"] == len(CALIBRATION)
    assert int(str(info.details["fake_quantize_nodes"])) > 0
    cos = _pooled_cosine(models, out)
    assert cos.min() >= 0.999, f"min cosine {cos.min():.5f}"


@needs_nncf
def test_mixed_keeps_the_kinds_chosen_by_measurement(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """Full int8 and each kind of Linear left out are measured once per search; the
    kind whose float gains most is kept, and its MatMuls carry no quantizer."""
    measured: list[Path] = []

    def loss(path: Path) -> float:
        measured.append(path)
        return float(1 - _pooled_cosine(models, path).min())

    cache = tmp_path / "cache"
    out = tmp_path / "mixed1"
    shutil.copytree(models["bert"], out)
    ctx = BuildContext(read_folder(models["bert"]), out, CALIBRATION, cache, loss)
    info = build_int8_mixed(ctx, overflow_fix="disable", keep_kinds=1)
    gains = info.details["kind_gains"]
    assert isinstance(gains, dict)
    # Q, K, V, attention output, FFN in, FFN out (the tiny BERT has no pooler).
    assert len(gains) == 6 and any(k.endswith("encoder.layer.N.output.dense") for k in gains)
    assert len(measured) == 1 + len(gains)
    kept = info.details["kept_in_float"]
    assert isinstance(kept, list) and len(kept) == 1
    assert gains[kept[0]] == max(gains.values())
    import openvino as ov

    ir = ov.Core().read_model(out / MODEL_XML)
    quantized = set()
    for op in ir.get_ops():
        if op.get_type_name() == "MatMul" and any(
            i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs()
        ):
            quantized.add(op.get_friendly_name().split("/")[0])
    layer = kept[0].replace(".N.", ".0.")
    assert quantized and layer not in quantized, "the kept kind's MatMuls stay in float"
    assert _pooled_cosine(models, out).min() >= 0.999

    # The ranking is cached: a second variant measures nothing more.
    two = tmp_path / "mixed2"
    shutil.copytree(models["bert"], two)
    info = build_int8_mixed(
        BuildContext(ctx.source, two, CALIBRATION, cache, loss),
        overflow_fix="disable",
        keep_kinds=2,
    )
    assert len(measured) == 1 + len(gains)
    assert len(info.details["kept_in_float"]) == 2  # type: ignore[arg-type]


@needs_nncf
def test_mixed_needs_a_calibration_measure(models: dict[str, Path], tmp_path: Path) -> None:
    ctx = BuildContext(source=read_folder(models["bert"]), out=tmp_path, calibration=CALIBRATION)
    with pytest.raises(ModelLoadError, match="calibration measure"):
        build_int8_mixed(ctx, overflow_fix="enable", keep_kinds=1)


@needs_nncf
def test_static_needs_calibration_text(models: dict[str, Path], tmp_path: Path) -> None:
    ctx = BuildContext(source=read_folder(models["bert"]), out=tmp_path, calibration=["", " "])
    with pytest.raises(ModelLoadError, match="calibration"):
        build_int8_static(ctx)


def test_int8_without_nncf_says_what_to_install(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)  # import nncf -> ImportError
    ctx = BuildContext(source=read_folder(models["bert"]), out=tmp_path, calibration=CALIBRATION)
    for build in (build_int8_weights, build_int8_static):
        with pytest.raises(ModelLoadError, match=r"squeezer\[openvino\]"):
            build(ctx)


def test_folder_without_ir_is_a_load_error(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=MODEL_XML):
        OpenVinoBackend(models["bert"])
    (tmp_path / MODEL_XML).write_text("<net/>")
    (tmp_path / "openvino_model.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="could not load"):
        OpenVinoBackend(tmp_path)


def test_bf16_inference_precision_stays_close_and_unknown_ones_are_refused(
    models: dict[str, Path], bert_fp32: Path
) -> None:
    """bf16 runs wherever OpenVINO runs (emulated without AVX512_BF16/AMX: the
    candidate's ``needs`` keep the search from offering it there)."""
    cos = _pooled_cosine(models, bert_fp32, inference_precision="bf16")
    assert 0.99 <= cos.min() <= 1.0, f"min cosine {cos.min():.5f}"
    with pytest.raises(ModelLoadError, match="inference_precision"):
        OpenVinoBackend(bert_fp32, inference_precision="int4")


def test_backend_refuses_other_devices_and_dtypes(bert_fp32: Path) -> None:
    with pytest.raises(ModelLoadError, match="CPU"):
        OpenVinoBackend(bert_fp32, device="cuda:0")
    with pytest.raises(ModelLoadError, match="precision"):
        OpenVinoBackend(bert_fp32, dtype="float16")


def test_supports_and_candidates(models: dict[str, Path], tmp_path: Path) -> None:
    assert supports(read_folder(models["bert"])) is None
    assert supports(read_folder(models["classifier"])) is None
    decoder = ModelFolder(
        path=tmp_path,
        config={"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
        pooling="mean",
        max_input_length=128,
    )
    reason = supports(decoder)
    assert reason is not None and "decoder" in reason
    assert [c.name for c in CANDIDATES] == [
        "openvino-float32",
        "openvino-bfloat16",
        "openvino-int8-weights",
        "openvino-int8-static",
        "openvino-int8-vnni",
        "openvino-int8-vnni-bf16",
        "openvino-int8-static-float1kind",
        "openvino-int8-static-float2kind",
        "openvino-int8-vnni-float1kind",
    ]
    needs = {c.name: {n.name for n in c.needs} for c in CANDIDATES}
    assert needs["openvino-bfloat16"] == {"bf16"} and needs["openvino-int8-static"] == set()
    assert needs["openvino-int8-vnni-bf16"] == {"bf16", "int8-vnni"}
    assert needs["openvino-int8-vnni-float1kind"] == {"int8-vnni"}
    assert needs["openvino-int8-static-float2kind"] == set()
    assert all({Task.EMBED, Task.CLASSIFY} <= c.tasks for c in CANDIDATES)
    assert build_openvino.FILES == ("openvino_model.xml", "openvino_model.bin")
