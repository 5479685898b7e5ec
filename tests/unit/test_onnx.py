"""ONNX Runtime candidates on tiny BERTs: export, fusion counts, int8, parity with torch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from squeezer.backends import load_backend
from squeezer.errors import ModelLoadError
from squeezer.models import read_folder
from squeezer.optimize import build_onnx
from squeezer.optimize.accuracy import Probe, compare
from squeezer.optimize.candidate import BuildContext
from squeezer.optimize.corpus import load_texts
from squeezer.types import Task

TEXTS = load_texts(None)[:40]


def _context(source: Path, out: Path, cache: Path) -> BuildContext:
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("*.safetensors"))
    return BuildContext(read_folder(source), out, TEXTS[:16], cache)


def _outputs(runtime: str, path: Path, task: Task, folder_path: Path) -> np.ndarray:
    probe = Probe(read_folder(folder_path), task, TEXTS)
    backend = load_backend(runtime, path, device="cpu", dtype="float32")
    try:
        return probe.run(backend)
    finally:
        backend.close()


def test_fp32_is_fully_fused_and_matches_torch(tiny_bert: Path, tmp_path: Path) -> None:
    ctx = _context(tiny_bert, tmp_path / "a", tmp_path / "cache")
    info = build_onnx.build_fp32(ctx)
    assert info.files == ("model.onnx",)
    assert info.details["fusions"]["Attention"] == 2  # one per layer
    assert info.details["fusions"]["SkipLayerNormalization"] >= 2
    assert info.details["fully_fused"] is True
    ref = _outputs("torch", tiny_bert, Task.EMBED, tiny_bert)
    got = _outputs("onnxruntime", ctx.out, Task.EMBED, tiny_bert)
    acc = compare(Task.EMBED, ref, got)
    assert acc.min_cosine >= 0.9999
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_classifier_export_gives_logits_and_hidden_states(
    tiny_classifier: Path, tmp_path: Path
) -> None:
    ctx = _context(tiny_classifier, tmp_path / "a", tmp_path / "cache")
    build_onnx.build_fp32(ctx)
    backend = load_backend("onnxruntime", ctx.out, device="cpu", dtype="float32")
    assert set(backend.output_names) == {"last_hidden_state", "logits"}
    ref = _outputs("torch", tiny_classifier, Task.CLASSIFY, tiny_classifier)
    got = _outputs("onnxruntime", ctx.out, Task.CLASSIFY, tiny_classifier)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    ids = np.array([[2, 7, 9, 3]], dtype=np.int64)
    only = backend.forward({"input_ids": ids, "attention_mask": np.ones_like(ids)}, ["logits"])
    assert list(only) == ["logits"] and only["logits"].shape == (1, 3)


def test_int8_variants_run_and_keep_nodes_chosen_by_measurement(
    tiny_bert: Path, tmp_path: Path
) -> None:
    measured: list[Path] = []

    def loss(path: Path) -> float:
        measured.append(path)
        ref = _outputs("torch", tiny_bert, Task.EMBED, tiny_bert)
        return compare(Task.EMBED, ref, _outputs("onnxruntime", path, Task.EMBED, tiny_bert)).loss

    ctx = _context(tiny_bert, tmp_path / "a", tmp_path / "cache")
    ctx = BuildContext(ctx.source, ctx.out, ctx.calibration, ctx.cache, loss)
    info = build_onnx.build_int8(ctx, build_onnx.Scheme(keep_fraction=0.25))
    nodes = info.details["quantizable_nodes"]
    assert nodes == 2 + 2 * 3  # per layer: Attention, output, FFN in, FFN out
    assert len(measured) == nodes  # each node measured alone, once
    kept = info.details["kept_in_float"]
    assert len(kept) == 2
    costs = info.details["node_costs"]
    assert min(costs[n] for n in kept) >= max(v for n, v in costs.items() if n not in kept)
    got = _outputs("onnxruntime", ctx.out, Task.EMBED, tiny_bert)
    ref = _outputs("torch", tiny_bert, Task.EMBED, tiny_bert)
    assert compare(Task.EMBED, ref, got).mean_cosine > 0.95
    # The sensitivity ranking is cached for the search's other variants.
    build_onnx.build_int8(ctx, build_onnx.Scheme(keep_fraction=0.1))
    assert len(measured) == nodes
    for scheme in (build_onnx.Scheme(per_channel=False), build_onnx.Scheme(reduce_range=True)):
        build_onnx.build_int8(ctx, scheme)
        got = _outputs("onnxruntime", ctx.out, Task.EMBED, tiny_bert)
        assert compare(Task.EMBED, ref, got).mean_cosine > 0.9


def test_folder_without_a_graph_is_a_load_error(tiny_bert: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no model\.onnx"):
        load_backend("onnxruntime", tiny_bert, device="cpu", dtype="float32")


def test_unknown_backend_is_named() -> None:
    with pytest.raises(ModelLoadError, match="unknown backend 'tensorrt'"):
        load_backend("tensorrt", Path("."), device="cpu", dtype="float32")
