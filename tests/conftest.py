"""Shared fixtures: tiny models built once per session, settings and in-process apps."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tiny_models import TOOLS_CHAT_TEMPLATE, build_bert, build_chat_llama

#: Importing torchax renames torch's privateuse1 device for the whole process, and
#: torch.compile fails in it from then on: the JAX tests run in a pytest process of
#: their own (`make test` runs it second, with SQUEEZER_TEST_JAX=1).
collect_ignore = [] if os.environ.get("SQUEEZER_TEST_JAX") else ["unit/test_jax.py"]


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


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random Llama with a BPE tokenizer and a chat template; 256 positions."""
    return build_chat_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_tool_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_llama`` with a chat template that takes tools (Hermes' format), and 1024
    positions: a byte-level vocabulary of 300 spends many tokens on a tool's schema."""
    path = tmp_path_factory.mktemp("models") / "tiny-tool-llama"
    return build_chat_llama(path, template=TOOLS_CHAT_TEMPLATE, positions=1024)


@pytest.fixture(scope="session")
def tiny_llama_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_llama``'s tokenizer with other weights: a second version of it."""
    return build_chat_llama(tmp_path_factory.mktemp("models") / "tiny-llama-b", seed=1)


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> Iterator[None]:
    import torch

    torch.set_num_threads(2)
    yield


def _head_model(
    factory: pytest.TempPathFactory, name: str, architecture: str, labels: list[str] | None = None
) -> Path:
    return build_bert(
        factory.mktemp("models") / name,
        architecture=architecture,
        labels=labels,
        sentence_transformers=False,
        seed=2,
    )


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three-label sentiment classifier, max 128 tokens."""
    return _head_model(
        tmp_path_factory,
        "tiny-classifier",
        "BertForSequenceClassification",
        ["negative", "neutral", "positive"],
    )


@pytest.fixture(scope="session")
def tiny_reranker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One-label cross-encoder (a reranker, as TEI defines one)."""
    return _head_model(
        tmp_path_factory, "tiny-reranker", "BertForSequenceClassification", ["score"]
    )


@pytest.fixture(scope="session")
def tiny_nli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NLI classifier: serves text-classification and zero-shot-classification."""
    return _head_model(
        tmp_path_factory,
        "tiny-nli",
        "BertForSequenceClassification",
        ["contradiction", "neutral", "entailment"],
    )


@pytest.fixture(scope="session")
def tiny_ner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token classifier with BIO labels, max 128 tokens."""
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    return _head_model(tmp_path_factory, "tiny-ner", "BertForTokenClassification", labels)


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Masked LM: serves fill-mask and embeddings."""
    return _head_model(tmp_path_factory, "tiny-mlm", "BertForMaskedLM")


@pytest.fixture(scope="session")
def tiny_qa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Extractive question answering head, max 128 tokens."""
    return _head_model(tmp_path_factory, "tiny-qa", "BertForQuestionAnswering")


@pytest.fixture(scope="session")
def head_models(
    tiny_classifier: Path,
    tiny_reranker: Path,
    tiny_nli: Path,
    tiny_ner: Path,
    tiny_mlm: Path,
    tiny_qa: Path,
) -> dict[str, Path]:
    """One tiny model per encoder head, by the name the HTTP tests serve it under."""
    return {
        "sentiment": tiny_classifier,
        "reranker": tiny_reranker,
        "nli": tiny_nli,
        "ner": tiny_ner,
        "mlm": tiny_mlm,
        "qa": tiny_qa,
    }
