"""TEI routes on the in-process app: parity with transformers, input forms, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient
from tokenizers import Tokenizer

from tests.reference import cosine, reference_embeddings
from tests.tiny_models import corpus

MIXED = [
    "Short.",
    "A somewhat longer sentence that has quite a few more tokens in it than the first one.",
    corpus()[10],
    "Medium length input here.",
]


def test_embed_matches_transformers_for_mixed_lengths_in_one_batch(
    client: TestClient, tiny_bert: Path
) -> None:
    r = client.post("/embed", json={"inputs": MIXED})
    assert r.status_code == 200, r.text
    got = np.asarray(r.json(), dtype=np.float32)
    want = reference_embeddings(tiny_bert, MIXED)
    assert got.shape == want.shape
    assert cosine(got, want).min() >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_normalize_false_returns_the_raw_pooled_vector(client: TestClient, tiny_bert: Path) -> None:
    r = client.post("/embed", json={"inputs": MIXED[:2], "normalize": False})
    got = np.asarray(r.json(), dtype=np.float32)
    want = reference_embeddings(tiny_bert, MIXED[:2], normalize=False)
    assert np.allclose(got, want, atol=1e-4)


def test_single_string_and_token_id_forms(client: TestClient, tiny_bert: Path) -> None:
    tok = Tokenizer.from_file(str(tiny_bert / "tokenizer.json"))
    ids = tok.encode(MIXED[1]).ids
    by_text = client.post("/embed", json={"inputs": MIXED[1]}).json()
    by_ids = client.post("/embed", json={"inputs": ids}).json()
    by_id_lists = client.post("/embed", json={"inputs": [ids, ids]}).json()
    assert len(by_text) == len(by_ids) == 1 and len(by_id_lists) == 2
    assert np.allclose(by_text, by_ids, atol=1e-5)
    assert np.allclose(by_id_lists[1], by_text[0], atol=1e-5)


def test_over_long_input_is_refused_unless_truncation_is_asked(client: TestClient) -> None:
    long_text = " ".join(corpus()[:20])
    r = client.post("/embed", json={"inputs": long_text})
    assert r.status_code == 422
    body = r.json()
    assert body["error_type"] == "Validation"
    assert "at most 64" in body["error"] and "truncate" in body["error"]
    right = client.post("/embed", json={"inputs": long_text, "truncate": True})
    left = client.post(
        "/embed", json={"inputs": long_text, "truncate": True, "truncation_direction": "Left"}
    )
    assert right.status_code == left.status_code == 200
    assert not np.allclose(right.json(), left.json())


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ({"inputs": []}, 400, "Empty"),
        ({"inputs": ""}, 400, "Empty"),
        ({"inputs": ["ok", ""]}, 400, "Empty"),
        ({"inputs": [[]]}, 400, "Empty"),
        ({"inputs": 3}, 422, "Validation"),
        ({"inputs": "x", "normalize": "maybe"}, 422, "Validation"),
        ({"text": "x"}, 422, "Validation"),
        ({"inputs": ["x"] * 9}, 422, "Validation"),
        ({"inputs": [10**9]}, 422, "Tokenizer"),
        # Found by fuzzing TEI's published contract: past int64 it was a 500.
        ({"inputs": [32939, 548, 10000000000000000001]}, 422, "Tokenizer"),
        ({"inputs": [[5, -(2**70)]]}, 422, "Validation"),  # past what JSON parsing takes
        ({"inputs": "x", "prompt_name": "nope"}, 422, "Validation"),
    ],
)
def test_bad_input_gets_a_tei_error(
    client: TestClient, body: dict, status: int, error_type: str
) -> None:
    r = client.post("/embed", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error_type"] == error_type
    assert r.json()["error"]
    assert client.post("/embed", json={"inputs": "still serving"}).status_code == 200


def test_unknown_fields_are_ignored_as_tei_does(client: TestClient) -> None:
    r = client.post("/embed", json={"inputs": "x", "model": "whatever", "extra": 1})
    assert r.status_code == 200


def test_unknown_routes_and_methods_answer_in_the_dialect(client: TestClient) -> None:
    r = client.get("/embed")
    assert r.status_code == 405 and r.json()["error_type"] == "Validation"
    r = client.post("/v1/nothing", json={})
    assert r.status_code == 404 and "message" in r.json()["error"]


def test_malformed_json_is_a_4xx_not_a_500(client: TestClient) -> None:
    r = client.post("/embed", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error_type"] == "Validation"
    r = client.post("/embed", content=b"", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_embed_all_returns_every_token(client: TestClient, tiny_bert: Path) -> None:
    tok = Tokenizer.from_file(str(tiny_bert / "tokenizer.json"))
    r = client.post("/embed_all", json={"inputs": MIXED[:2]})
    assert r.status_code == 200
    out = r.json()
    assert [len(x) for x in out] == [len(tok.encode(t).ids) for t in MIXED[:2]]
    pooled = np.mean(np.asarray(out[1]), axis=0)
    want = reference_embeddings(tiny_bert, [MIXED[1]], normalize=False)[0]
    assert np.allclose(pooled, want, atol=1e-4)


def test_similarity_is_the_cosine_of_embeddings(client: TestClient) -> None:
    source, others = MIXED[0], MIXED[1:]
    r = client.post(
        "/similarity", json={"inputs": {"source_sentence": source, "sentences": others}}
    )
    assert r.status_code == 200
    vectors = np.asarray(client.post("/embed", json={"inputs": [source, *others]}).json())
    assert np.allclose(r.json(), vectors[1:] @ vectors[0], atol=1e-5)
    too_many = {"inputs": {"source_sentence": source, "sentences": ["x"] * 9}}
    r = client.post("/similarity", json=too_many)
    assert r.status_code == 422 and "--max-client-batch-size" in r.json()["error"]
    r = client.post("/pipeline/sentence-similarity/tiny", json={"inputs": {"sentences": 3}})
    assert r.status_code == 422 and r.json()["error_type"] == "Validation"


def test_tokenize_and_decode_round_trip(client: TestClient) -> None:
    text = "Hello tokenizer world"
    r = client.post("/tokenize", json={"inputs": text})
    assert r.status_code == 200
    tokens = r.json()[0]
    assert tokens[0]["special"] and tokens[0]["start"] is None
    plain = [t for t in tokens if not t["special"]]
    assert all(text[t["start"] : t["stop"]] == t["text"] for t in plain)
    ids = [t["id"] for t in tokens]
    decoded = client.post("/decode", json={"ids": ids}).json()
    assert decoded == [text.lower()]
    raw = client.post("/tokenize", json={"inputs": [text], "add_special_tokens": False}).json()
    assert len(raw[0]) == len(tokens) - 2
    assert client.post("/decode", json={"ids": [10**9]}).status_code == 422
    assert client.post("/decode", json={"ids": []}).status_code == 400


def test_info_has_tei_fields_and_every_model(client: TestClient) -> None:
    info = client.get("/info").json()
    for field in (
        "model_id",
        "served_model_name",  # required by TEI 1.9's published Info schema
        "model_dtype",
        "model_type",
        "max_concurrent_requests",
        "max_input_length",
        "max_batch_tokens",
        "max_client_batch_size",
        "auto_truncate",
        "tokenization_workers",
        "version",
    ):
        assert field in info
    assert info["model_id"] == "tiny" and info["served_model_name"] == "tiny"
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 64
    names = {m["name"]: m for m in info["models"]}
    assert set(names) == {"tiny", "tiny-cls"}
    assert names["tiny"]["device"] == "cpu" and names["tiny"]["dtype"] == "float32"
    assert len(names["tiny"]["content_hash"]) == 64
    assert names["tiny"]["content_hash"] != names["tiny-cls"]["content_hash"]


def test_probes_and_openapi(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/ready").json()["status"] == "ready"
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/EmbedRequest"
    assert "inputs" in spec["components"]["schemas"]["EmbedRequest"]["properties"]
    assert "/v1/embeddings" in spec["paths"]
