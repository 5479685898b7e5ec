"""Encoder tasks from the real server process, through ``huggingface_hub``'s
``InferenceClient`` (it sends no task: the URL names the model) and plain HTTP for the
rerank APIs, compared with ``transformers`` pipelines on the same tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import huggingface_hub
import numpy as np
import pytest
from huggingface_hub import InferenceClient
from packaging.version import Version
from transformers import pipeline

from tests.e2e.conftest import ServerProcess, start_server

pytestmark = pytest.mark.e2e
TEXT = "The assert statement is a convenient way to insert debugging assertions."
TOL = 1e-5


@pytest.fixture(scope="module")
def heads_server(
    head_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    models = head_models
    args = [a for name, path in models.items() for a in ("--model", f"{name}={path}")]
    s = start_server(args, tmp_path_factory.mktemp("e2e-heads") / "server.log")
    yield s
    assert s.terminate() == 0, s.output()


def client(server: ServerProcess, name: str) -> InferenceClient:
    return InferenceClient(model=f"{server.url}/models/{name}")


def test_text_classification(heads_server: ServerProcess, tiny_classifier: Path) -> None:
    got = client(heads_server, "sentiment").text_classification(TEXT)
    want = pipeline("text-classification", model=str(tiny_classifier), device="cpu")(
        TEXT, top_k=None
    )
    assert [g.label for g in got] == [w["label"] for w in want]
    assert np.allclose([g.score for g in got], [w["score"] for w in want], atol=TOL)
    top = client(heads_server, "sentiment").text_classification(TEXT, top_k=1)
    assert len(top) == 1 and top[0].label == want[0]["label"]


def test_token_classification(heads_server: ServerProcess, tiny_ner: Path) -> None:
    got = client(heads_server, "ner").token_classification(
        TEXT, aggregation_strategy="simple", ignore_labels=[]
    )
    ref = pipeline("token-classification", model=str(tiny_ner), device="cpu")
    want = ref(TEXT, aggregation_strategy="simple", ignore_labels=[])
    assert [(g.entity_group, g.start, g.end, g.word) for g in got] == [
        (w["entity_group"], w["start"], w["end"], w["word"]) for w in want
    ]
    assert np.allclose([g.score for g in got], [w["score"] for w in want], atol=TOL)


def test_fill_mask(heads_server: ServerProcess, tiny_mlm: Path) -> None:
    text = "the [MASK] statement is executed."
    got = client(heads_server, "mlm").fill_mask(text, top_k=3)
    want = pipeline("fill-mask", model=str(tiny_mlm), device="cpu")(text, top_k=3)
    assert [(g.token, g.token_str, g.sequence) for g in got] == [
        (w["token"], w["token_str"], w["sequence"]) for w in want
    ]
    assert np.allclose([g.score for g in got], [w["score"] for w in want], atol=TOL)


@pytest.mark.skipif(
    Version(huggingface_hub.__version__) < Version("1.0"),
    reason="huggingface_hub < 1.0 reads zero-shot answers in the legacy {labels, scores} "
    "shape; squeezer answers the current list of {label, score} (docs/api.md)",
)
def test_zero_shot_classification(heads_server: ServerProcess, tiny_nli: Path) -> None:
    labels = ["software", "cooking", "politics"]
    got = client(heads_server, "nli").zero_shot_classification(TEXT, candidate_labels=labels)
    ref = pipeline("zero-shot-classification", model=str(tiny_nli), device="cpu")
    want = ref(TEXT, candidate_labels=labels)
    # Per label, not by position: a random tiny model's near-ties may swap places.
    by_label = {g.label: g.score for g in got}
    assert set(by_label) == set(want["labels"])
    assert np.allclose([by_label[k] for k in want["labels"]], want["scores"], atol=TOL)
    assert [g.score for g in got] == sorted(by_label.values(), reverse=True)


def test_question_answering(heads_server: ServerProcess) -> None:
    context = TEXT + " It is executed only when debugging is enabled."
    got = client(heads_server, "qa").question_answering(
        question="When is it executed?", context=context
    )
    assert not isinstance(got, list)
    assert context[got.start : got.end] == got.answer and 0 < got.score <= 1
    several = client(heads_server, "qa").question_answering(
        question="When is it executed?", context=context, top_k=2
    )
    assert isinstance(several, list) and len(several) == 2


def test_rerank_over_plain_http(heads_server: ServerProcess) -> None:
    docs = [TEXT, "Functions are defined with def.", "Classes hold methods."]
    tei = httpx.post(
        f"{heads_server.url}/rerank", json={"query": "what asserts?", "texts": docs}
    ).json()
    cohere = httpx.post(
        f"{heads_server.url}/v1/rerank",
        json={"model": "reranker", "query": "what asserts?", "documents": docs, "top_n": 2},
    ).json()
    assert [r["index"] for r in cohere["results"]] == [r["index"] for r in tei[:2]]
    assert [r["relevance_score"] for r in cohere["results"]] == [r["score"] for r in tei[:2]]
    wrong = httpx.post(
        f"{heads_server.url}/v1/rerank",
        json={"model": "sentiment", "query": "q", "documents": docs},
    )
    assert wrong.status_code == 400 and "reranker" in wrong.json()["error"]["message"]
