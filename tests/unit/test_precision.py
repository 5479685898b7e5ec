"""Reduced precision measured against fp32 at load (``optimize.precision``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from squeezer.backends import Backend, load_backend
from squeezer.models import read_folder
from squeezer.optimize.corpus import load_texts, split_texts
from squeezer.optimize.precision import check_precision, held_out_texts, probe_task
from squeezer.types import Task


def test_the_compared_output_follows_the_tasks() -> None:
    assert probe_task((Task.EMBED,)) is Task.EMBED
    assert probe_task((Task.CLASSIFY, Task.RERANK)) is Task.CLASSIFY
    assert probe_task((Task.RERANK,)) is Task.CLASSIFY
    assert probe_task((Task.FILL_MASK,)) is None


def test_texts_are_held_out_from_what_the_optimizer_chooses_with() -> None:
    texts = held_out_texts(16)
    splits = split_texts(load_texts(None))
    assert texts == splits.report[:16]
    assert not set(texts) & (set(splits.calibration) | set(splits.selection))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_bf16_is_measured_against_fp32_of_the_same_weights(tiny_bert: Path, dtype: str) -> None:
    folder = read_folder(tiny_bert)
    served = load_backend("torch", tiny_bert, device="cpu", dtype=dtype)
    loads: list[str] = []

    def reference() -> Backend:
        loads.append("float32")
        return load_backend("torch", tiny_bert, device="cpu", dtype="float32")

    texts = held_out_texts(12)
    report = check_precision(folder, Task.EMBED, dtype, served, reference, texts)
    assert loads == ["float32"]  # one reference, loaded only for the comparison
    assert (report.dtype, report.task, report.texts) == (dtype, "embed", 12)
    if dtype == "float32":  # same weights, same arithmetic
        assert report.min_cosine == pytest.approx(1.0, abs=1e-6)
    else:  # bf16 keeps 8 bits of mantissa: close, and measurably not equal
        assert 0.95 < report.min_cosine < 1.0
        assert report.min_cosine <= report.mean_cosine
