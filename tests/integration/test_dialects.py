"""OpenAI and HF Inference API dialects, and how requests find their model."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from squeezer.config import ModelSettings, Settings
from squeezer.server.app import create_app
from tests.reference import cosine, reference_embeddings

TEXTS = ["The first sentence.", "And a second, longer sentence for the batch."]


def _vectors(payload: dict) -> np.ndarray:
    return np.asarray([d["embedding"] for d in payload["data"]], dtype=np.float32)


@pytest.mark.parametrize("model", ["dummy", "tgi", "", None])
def test_openai_placeholders_mean_the_default_embedding_model(
    client: TestClient, tiny_bert: Path, model: str | None
) -> None:
    body = {"input": TEXTS} | ({} if model is None else {"model": model})
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    payload = r.json()
    assert payload["object"] == "list" and payload["model"] == "tiny"
    assert [d["index"] for d in payload["data"]] == [0, 1]
    assert cosine(_vectors(payload), reference_embeddings(tiny_bert, TEXTS)).min() >= 0.9999
    assert payload["usage"]["prompt_tokens"] == payload["usage"]["total_tokens"] > 0


def test_openai_named_model_and_base64(client: TestClient, tiny_bert_cls: Path) -> None:
    r = client.post(
        "/v1/embeddings", json={"model": "tiny-cls", "input": TEXTS, "encoding_format": "base64"}
    )
    assert r.status_code == 200
    data = r.json()["data"]
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
    want = reference_embeddings(tiny_bert_cls, TEXTS, pooling="cls")
    assert cosine(got, want).min() >= 0.9999


def test_openai_token_id_input_and_dimensions(client: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"input": [[5, 6, 7]], "dimensions": 8})
    assert r.status_code == 200
    vec = np.asarray(r.json()["data"][0]["embedding"])
    assert vec.shape == (8,) and np.isclose(np.linalg.norm(vec), 1.0, atol=1e-5)
    r = client.post("/v1/embeddings", json={"input": "x", "dimensions": 10_000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"


def test_openai_errors_use_openai_shape(client: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "nope" in err["message"] and err["param"] == "model"
    r = client.post("/v1/embeddings", json={"input": []})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = client.post("/v1/embeddings", json={"input": ["x"] * 9})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = client.post("/v1/embeddings", content=b"[", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()


def test_openai_model_list(client: TestClient) -> None:
    data = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["tiny", "tiny-cls"]
    assert all(m["object"] == "model" and m["tasks"] == ["embed"] for m in data)
    assert client.get("/models/tiny-cls/v1/models").status_code == 200


def test_versions_that_shape_outputs_are_shown_for_every_model(client: TestClient) -> None:
    """One ``versions`` object, the same in /info and /v1/models: what an operator
    compares when outputs move after an upgrade."""
    import platform

    import tokenizers
    import torch
    import transformers

    want = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }
    info = client.get("/info").json()
    assert info["versions"] == want
    assert [m["versions"] for m in info["models"]] == [want, want]
    assert [m["versions"] for m in client.get("/v1/models").json()["data"]] == [want, want]


def test_models_path_names_the_model(client: TestClient, tiny_bert_cls: Path) -> None:
    want = reference_embeddings(tiny_bert_cls, TEXTS, pooling="cls")
    r = client.post("/models/tiny-cls/v1/embeddings", json={"model": "dummy", "input": TEXTS})
    assert cosine(_vectors(r.json()), want).min() >= 0.9999
    r = client.post("/models/tiny-cls", json={"inputs": TEXTS})
    assert cosine(np.asarray(r.json()), want).min() >= 0.9999
    r = client.post("/models/missing", json={"inputs": TEXTS})
    assert r.status_code == 404 and r.json()["error_type"] == "Validation"


def test_hf_root_runs_the_default_model(client: TestClient, tiny_bert: Path) -> None:
    r = client.post("/", json={"inputs": TEXTS[0]})
    assert r.status_code == 200
    got = np.asarray(r.json())
    assert got.shape == (1, 32)
    assert cosine(got, reference_embeddings(tiny_bert, TEXTS[:1])).min() >= 0.9999
    # huggingface_hub sends feature-extraction parameters at the top level.
    r = client.post("/", json={"inputs": TEXTS, "normalize": False})
    assert not np.allclose(np.linalg.norm(np.asarray(r.json()), axis=1), 1.0)


def test_hf_pipeline_forms(client: TestClient) -> None:
    for url in (
        "/pipeline/feature-extraction/tiny-cls",
        "/models/tiny-cls/pipeline/feature-extraction",
    ):
        r = client.post(url, json={"inputs": TEXTS})
        assert r.status_code == 200 and len(r.json()) == 2
    sim = client.post(
        "/models/tiny/pipeline/sentence-similarity",
        json={"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS}},
    )
    assert sim.status_code == 200
    assert np.isclose(sim.json()[0], 1.0, atol=1e-5)
    r = client.post("/pipeline/text-generation/tiny", json={"inputs": "x"})
    assert r.status_code == 400 and "does not serve" in r.json()["error"]


def test_prompt_name_prepends_the_models_prompt(client: TestClient, tiny_bert_cls: Path) -> None:
    r = client.post(
        "/v1/embeddings", json={"model": "tiny-cls", "input": "hello"}
    )  # no prompt by default
    plain = _vectors(r.json())
    r = client.post(
        "/models/tiny-cls", json={"inputs": "hello", "parameters": {"prompt_name": "query"}}
    )
    assert r.status_code == 200
    want = reference_embeddings(tiny_bert_cls, ["query: hello"], pooling="cls")
    assert cosine(np.asarray(r.json()), want).min() >= 0.9999
    assert np.abs(np.asarray(r.json()) - plain).max() > 1e-4


def test_default_model_flag_changes_tei_routing(tiny_bert: Path, tiny_bert_cls: Path) -> None:
    settings = Settings(
        models=[
            ModelSettings(name="a", path=str(tiny_bert)),
            ModelSettings(name="b", path=str(tiny_bert_cls)),
        ],
        default_models={"embed": "b"},
        warmup=False,
    )
    with TestClient(create_app(settings)) as c:
        assert c.get("/info").json()["model_id"] == "b"
        tei = np.asarray(c.post("/embed", json={"inputs": TEXTS}).json())
        b = _vectors(c.post("/v1/embeddings", json={"model": "b", "input": TEXTS}).json())
        a = _vectors(c.post("/v1/embeddings", json={"model": "a", "input": TEXTS}).json())
        assert np.allclose(tei, b, atol=1e-6) and not np.allclose(tei, a, atol=1e-3)


def test_a_wrong_default_model_fails_at_start(tiny_bert: Path) -> None:
    settings = Settings(
        models=[ModelSettings(name="a", path=str(tiny_bert))],
        default_models={"embed": "zzz"},
        warmup=False,
    )
    with pytest.raises(Exception, match="zzz"), TestClient(create_app(settings)):
        pass
