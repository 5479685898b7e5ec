"""Encoder tasks over HTTP: TEI ``/predict`` and ``/rerank``, ``/v1/rerank``, and the HF
Inference API per task, on one in-process app serving a model per head."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient
from transformers import pipeline

from squeezer.server.app import create_app
from tests.integration.conftest import settings_for
from tests.tiny_models import corpus

TEXTS = corpus()[:4]


@pytest.fixture(scope="module")
def heads(tiny_bert: Path, head_models: dict[str, Path]) -> Iterator[TestClient]:
    models = {"embedder": tiny_bert, **head_models}
    with TestClient(create_app(settings_for(models, max_client_batch_size=8))) as c:
        yield c


def _labels(rows: list[dict[str, Any]]) -> list[str]:
    return [r["label"] for r in rows]


def _same_ranking(got: list[dict[str, Any]], labels: list[str], scores: list[float]) -> bool:
    """Scores per label within 1e-5 and ours in order: a random tiny model scores
    labels almost alike, so two may swap places on a 1e-7 difference."""
    by_label = {x["label"]: x["score"] for x in got}
    ours = [x["score"] for x in got]
    return (
        set(by_label) == set(labels)
        and bool(np.allclose([by_label[k] for k in labels], scores, atol=1e-5))
        and ours == sorted(ours, reverse=True)
    )


def test_models_say_their_tasks(heads: TestClient) -> None:
    tasks = {m["name"]: m["tasks"] for m in heads.get("/info").json()["models"]}
    assert tasks == {
        "embedder": ["embed"],
        "sentiment": ["classify"],
        "reranker": ["classify", "rerank"],
        "nli": ["classify", "zero-shot"],
        "ner": ["token-classify"],
        "mlm": ["fill-mask", "embed"],
        "qa": ["question-answering"],
    }


def test_tei_predict_single_pair_and_batch(heads: TestClient, tiny_classifier: Path) -> None:
    ref = pipeline("text-classification", model=str(tiny_classifier), device="cpu")
    single = heads.post("/predict", json={"inputs": TEXTS[0]}).json()
    want = ref(TEXTS[0], top_k=None)
    assert _same_ranking(single, _labels(want), [x["score"] for x in want])  # all, best first
    pair = heads.post("/predict", json={"inputs": [TEXTS[0], TEXTS[1]]}).json()
    assert isinstance(pair[0], dict) and len(pair) == 3  # a flat list of two is ONE pair
    batch = heads.post("/predict", json={"inputs": [[TEXTS[0]], [TEXTS[0], TEXTS[1]]]}).json()
    assert batch == [single, pair]
    raw = heads.post("/predict", json={"inputs": TEXTS[0], "raw_scores": True}).json()
    assert not np.isclose(sum(x["score"] for x in raw), 1.0)


def test_tei_predict_refuses_shapes_tei_refuses(heads: TestClient) -> None:
    r = heads.post("/predict", json={"inputs": ["a", "b", "c"]})
    assert r.status_code == 422 and "invalid length 3" in r.json()["error"]
    r = heads.post("/predict", json={"inputs": [["a"]] * 9})
    assert r.status_code == 422 and "maximum allowed batch size 8" in r.json()["error"]
    assert heads.post("/predict", json={"inputs": ""}).status_code == 400


def test_tei_rerank(heads: TestClient) -> None:
    body = {"query": "how is a function defined?", "texts": TEXTS, "return_text": True}
    ranks = heads.post("/rerank", json=body).json()
    assert sorted(r["index"] for r in ranks) == list(range(len(TEXTS)))
    scores = [r["score"] for r in ranks]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert all(r["text"] == TEXTS[r["index"]] for r in ranks)
    plain = heads.post("/rerank", json={**body, "return_text": False}).json()
    assert "text" not in plain[0]
    r = heads.post("/rerank", json={**body, "texts": []})
    assert r.status_code == 400 and r.json()["error"] == "`texts` cannot be empty"


def test_v1_rerank_speaks_the_cohere_jina_shape(heads: TestClient) -> None:
    body = {"model": "reranker", "query": "q", "documents": TEXTS, "top_n": 2}
    out = heads.post("/v1/rerank", json=body).json()
    assert out["model"] == "reranker" and out["usage"]["total_tokens"] > 0
    assert len(out["results"]) == 2
    first = out["results"][0]
    assert first["document"] == {"text": TEXTS[first["index"]]}
    tei = heads.post("/rerank", json={"query": "q", "texts": TEXTS}).json()
    assert [r["index"] for r in out["results"]] == [r["index"] for r in tei[:2]]
    assert np.isclose(first["relevance_score"], tei[0]["score"], atol=1e-6)
    objects = [{"text": t} for t in TEXTS]
    bare = heads.post(
        "/v1/rerank", json={"query": "q", "documents": objects, "return_documents": False}
    ).json()
    assert len(bare["results"]) == len(TEXTS) and "document" not in bare["results"][0]


def test_rerank_by_a_model_that_cannot_says_who_can(heads: TestClient) -> None:
    r = heads.post("/v1/rerank", json={"model": "embedder", "query": "q", "documents": ["d"]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "model" and "Models serving 'rerank': reranker" in error["message"]


def test_tei_routes_answer_424_without_a_model_for_the_task(client: TestClient) -> None:
    """The embedding-only app of the other integration tests."""
    r = client.post("/predict", json={"inputs": "x"})
    assert r.status_code == 424 and r.json()["error_type"] == "Backend"
    r = client.post("/rerank", json={"query": "q", "texts": ["x"]})
    assert r.status_code == 424 and "rerank" in r.json()["error"]


def test_hf_text_classification(heads: TestClient, tiny_classifier: Path, tiny_nli: Path) -> None:
    ref = pipeline("text-classification", model=str(tiny_classifier), device="cpu")
    out = heads.post("/models/sentiment", json={"inputs": TEXTS[0]}).json()
    want = ref(TEXTS[0], top_k=None)
    assert len(out) == 1
    assert _same_ranking(out[0], _labels(want), [x["score"] for x in want])
    top = heads.post(
        "/models/sentiment", json={"inputs": TEXTS[:2], "parameters": {"top_k": 1}}
    ).json()
    assert [len(x) for x in top] == [1, 1]
    pair = {"text": TEXTS[0], "text_pair": TEXTS[1]}
    out = heads.post("/models/nli", json={"inputs": pair, "parameters": {}}).json()
    nli = pipeline("text-classification", model=str(tiny_nli), device="cpu")
    want = nli(pair, top_k=None)
    assert _same_ranking(out[0], _labels(want), [x["score"] for x in want])


def test_hf_zero_shot_answers_label_score_lists(heads: TestClient, tiny_nli: Path) -> None:
    labels = ["code", "food", "sport"]
    body = {"inputs": TEXTS[0], "parameters": {"candidate_labels": labels}}
    out = heads.post("/models/nli/pipeline/zero-shot-classification", json=body).json()
    ref = pipeline("zero-shot-classification", model=str(tiny_nli), device="cpu")
    want = ref(TEXTS[0], candidate_labels=labels)
    assert _same_ranking(out, want["labels"], want["scores"])
    comma = {"inputs": TEXTS[0], "parameters": {"candidate_labels": "code, food, sport"}}
    assert heads.post("/pipeline/zero-shot-classification/nli", json=comma).json() == out
    r = heads.post("/models/nli/pipeline/zero-shot-classification", json={"inputs": "x"})
    assert r.status_code == 422 and "candidate_labels" in r.json()["error"]


def test_hf_fill_mask_shapes(heads: TestClient) -> None:
    one = heads.post("/models/mlm", json={"inputs": "the [MASK] is here."}).json()
    assert len(one) == 5 and set(one[0]) == {"score", "token", "token_str", "sequence"}
    two = heads.post(
        "/models/mlm", json={"inputs": "[MASK] and [MASK].", "parameters": {"top_k": 2}}
    ).json()
    assert [len(x) for x in two] == [2, 2]
    r = heads.post("/models/mlm", json={"inputs": "no mask"})
    assert r.status_code == 422 and "no mask token" in r.json()["error"]


def test_hf_token_classification_and_qa_shapes(heads: TestClient) -> None:
    params = {"aggregation_strategy": "none", "ignore_labels": []}
    tokens = heads.post("/models/ner", json={"inputs": TEXTS[0], "parameters": params}).json()
    assert tokens and {"entity", "score", "index", "word", "start", "end"} <= set(tokens[0])
    grouped = heads.post(
        "/models/ner", json={"inputs": [TEXTS[0]], "parameters": {"ignore_labels": []}}
    ).json()
    assert len(grouped) == 1 and "entity_group" in grouped[0][0]
    qa = {"question": "What is executed?", "context": TEXTS[1]}
    answer = heads.post("/models/qa", json={"inputs": qa}).json()
    assert set(answer) == {"score", "start", "end", "answer"}
    assert TEXTS[1][answer["start"] : answer["end"]] == answer["answer"]
    many = heads.post("/models/qa", json={"inputs": qa, "parameters": {"top_k": 3}}).json()
    assert isinstance(many, list) and len(many) == 3
    assert [a["score"] for a in many] == sorted((a["score"] for a in many), reverse=True)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/models/sentiment", {"inputs": "x", "parameters": {"top_k": 0}}, "top_k"),
        ("/models/sentiment", {"inputs": "x", "parameters": {"topk": 2}}, "topk"),
        ("/models/mlm", {"inputs": "a [MASK]", "parameters": {"targets": ["zq xv"]}}, "targets"),
        ("/models/ner", {"inputs": "x", "parameters": {"aggregation_strategy": "best"}}, None),
        ("/models/qa", {"inputs": {"question": "q"}}, "context"),
    ],
)
def test_bad_parameters_are_422_naming_them(
    heads: TestClient, path: str, body: dict[str, Any], param: str | None
) -> None:
    r = heads.post(path, json=body)
    assert r.status_code == 422, r.text
    assert (param or "aggregation_strategy") in r.json()["error"]


def test_a_pipeline_the_model_cannot_run_names_what_it_can(heads: TestClient) -> None:
    r = heads.post("/models/embedder/pipeline/fill-mask", json={"inputs": "a [MASK]"})
    assert r.status_code == 400
    assert "it serves embed" in r.json()["error"] and "mlm" in r.json()["error"]


def test_one_model_serves_embeddings_and_fill_mask_in_shared_batches(
    heads: TestClient,
) -> None:
    async def both() -> tuple[Any, ...]:
        import httpx

        transport = httpx.ASGITransport(app=heads.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            calls = [
                c.post("/models/mlm/pipeline/feature-extraction", json={"inputs": TEXTS}),
                c.post("/models/mlm", json={"inputs": "the [MASK] is here."}),
            ] * 4
            return tuple(await asyncio.gather(*calls))

    responses = heads.portal.call(both)  # type: ignore[union-attr]
    embeds = [r.json() for r in responses[0::2]]
    fills = [r.json() for r in responses[1::2]]
    assert all(r.status_code == 200 for r in responses)
    assert all(np.allclose(e, embeds[0], atol=1e-5) for e in embeds)
    assert all(f == fills[0] for f in fills)


@pytest.mark.parametrize(
    ("dtype", "check"), [("bfloat16", True), ("bfloat16", False), ("float32", True)]
)
def test_reduced_precision_is_reported_in_info_and_models(
    tiny_bert: Path, dtype: str, check: bool
) -> None:
    settings = settings_for({"tiny": tiny_bert}, dtype=dtype, precision_check=check, warmup=False)
    with TestClient(create_app(settings)) as c:
        info = c.get("/info").json()
        cards = c.get("/v1/models").json()["data"]
        served = c.post("/embed", json={"inputs": "still serving"})
    precision = info["models"][0]["precision"]
    assert cards[0]["precision"] == precision
    assert served.status_code == 200
    if dtype == "float32" or not check:
        assert precision is None
        return
    assert info["models"][0]["dtype"] == "bfloat16"
    assert precision["dtype"] == "bfloat16" and precision["reference"] == "float32"
    assert precision["task"] == "embed" and precision["texts"] == 64
    assert 0.95 < precision["min_cosine"] <= precision["mean_cosine"] < 1.0
