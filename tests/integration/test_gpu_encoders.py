"""Encoders on CUDA: every task equals CPU within its dtype's tolerance, and a batch
over the memory cap is split and answered. Skipped without a GPU; run on the device
with ``pytest -m gpu``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from squeezer.server.app import create_app
from tests.integration.conftest import settings_for
from tests.tiny_models import corpus

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TEXTS = corpus()[:6]
#: Per dtype: how far a number may move from the fp32 CPU answer.
TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}
QA = {"question": "What is executed?", "context": TEXTS[1]}
#: (path, body) of every encoder task, answered by the models of ``head_models``.
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("/embed", {"inputs": TEXTS}),
    ("/predict", {"inputs": [[t] for t in TEXTS]}),
    ("/rerank", {"query": TEXTS[0], "texts": TEXTS, "raw_scores": True}),
    ("/models/nli", {"inputs": TEXTS[0], "parameters": {"candidate_labels": ["a", "b"]}}),
    ("/models/ner", {"inputs": TEXTS[0], "parameters": {"aggregation_strategy": "none"}}),
    ("/models/mlm", {"inputs": "the [MASK] is here."}),
    ("/models/qa", {"inputs": QA, "parameters": {"top_k": 2}}),
]


def _numbers(x: Any) -> list[float]:
    """Every float in a JSON answer, in order (labels and words compared apart)."""
    if isinstance(x, float):
        return [x]
    if isinstance(x, dict):
        return [n for k in sorted(x) for n in _numbers(x[k])]
    if isinstance(x, list):
        return [n for v in x for n in _numbers(v)]
    return []


def _words(x: Any) -> list[Any]:
    if isinstance(x, dict):
        return [w for k in sorted(x) for w in _words(x[k])]
    if isinstance(x, list):
        return [w for v in x for w in _words(v)]
    return [] if isinstance(x, float) else [x]


@pytest.fixture(scope="module")
def models(tiny_bert: Path, head_models: dict[str, Path]) -> dict[str, Path]:
    return {"embedder": tiny_bert, **head_models}


def _answers(models: dict[str, Path], device: str, dtype: str) -> list[Any]:
    settings = settings_for(models, device=device, dtype=dtype, max_client_batch_size=8)
    with TestClient(create_app(settings)) as c:
        out = []
        for path, body in CALLS:
            r = c.post(path, json=body)
            assert r.status_code == 200, (device, dtype, path, r.text)
            out.append(r.json())
        return out


@pytest.fixture(scope="module")
def on_cpu(models: dict[str, Path]) -> list[Any]:
    return _answers(models, "cpu", "float32")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_every_encoder_task_on_cuda_equals_cpu(
    models: dict[str, Path], on_cpu: list[Any], dtype: str
) -> None:
    on_gpu = _answers(models, "cuda", dtype)
    for (path, _), want, got in zip(CALLS, on_cpu, on_gpu, strict=True):
        a, b = np.array(_numbers(want)), np.array(_numbers(got))
        assert a.shape == b.shape, path
        assert np.allclose(a, b, atol=TOLERANCE[dtype]), (path, float(np.abs(a - b).max()))
        if dtype == "float32":  # labels, tokens, spans: the same answer, not just close
            assert _words(want) == _words(got), path


@pytest.fixture
def capped(tiny_bert: Path) -> Iterator[TestClient]:
    settings = settings_for({"tiny": tiny_bert}, device="cuda", dtype="float32", warmup=False)
    with TestClient(create_app(settings)) as c:
        yield c
    torch.cuda.set_per_process_memory_fraction(1.0, 0)


def test_a_batch_over_the_memory_cap_is_split_and_answered(capped: TestClient) -> None:
    long = [" ".join(corpus()[i : i + 12])[:1500] for i in range(64)]
    body = {"inputs": long, "truncate": True}
    want = capped.post("/embed", json=body)  # uncapped: one batch
    assert want.status_code == 200
    # Cap the process at what it holds now plus half of that batch's peak: the whole
    # batch no longer fits, its halves (or quarters) do.
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(0)
    base = torch.cuda.memory_allocated(0)
    capped.post("/embed", json=body)
    peak = torch.cuda.max_memory_allocated(0) - base
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved(0) + peak // 2) / total)
    got = capped.post("/embed", json=body)
    assert got.status_code == 200, got.text
    assert np.allclose(np.array(got.json()), np.array(want.json()), atol=1e-5)
    assert capped.post("/embed", json={"inputs": "still serving"}).status_code == 200
