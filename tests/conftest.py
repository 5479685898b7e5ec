"""Shared fixtures: tiny models built once per session, settings and in-process apps."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tiny_models import build_bert


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mean-pooled tiny BERT, max 64 tokens."""
    return build_bert(tmp_path_factory.mktemp("models") / "tiny-mean")


@pytest.fixture(scope="session")
def tiny_bert_cls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CLS-pooled tiny BERT with sentence-transformers prompts, different weights."""
    return build_bert(
        tmp_path_factory.mktemp("models") / "tiny-cls",
        pooling="cls",
        prompts={"query": "query: ", "passage": "passage: "},
        seed=1,
    )


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> Iterator[None]:
    import torch

    torch.set_num_threads(2)
    yield
