"""The Open Inference Protocol (KServe v2) on the real server, through
``tritonclient.http`` in its default binary mode and in JSON mode: health, metadata,
infer per task with the same answers as the other dialects, a versioned infer, and
Triton's generate extension over plain HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import ServerProcess, start_server

pytestmark = pytest.mark.e2e
TEXTS = ["the cat sat on the mat", "a server answers every client it can"]


@pytest.fixture(scope="module")
def server(
    tiny_bert: Path,
    tiny_llama: Path,
    head_models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    models = {"tiny": tiny_bert, "llama": tiny_llama, **head_models}
    args = [a for name, path in models.items() for a in ("--model", f"{name}={path}")]
    log = tmp_path_factory.mktemp("kserve") / "server.log"
    s = start_server([*args, "--max-total-tokens", "256"], log)
    yield s
    assert s.terminate() == 0, s.output()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"))


def _bytes_input(name: str, texts: list[str], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary)
    return tensor


def _strings(array: np.ndarray) -> list[str]:
    """BYTES come back as bytes in binary mode, as str in JSON mode."""
    return [x.decode() if isinstance(x, bytes) else str(x) for x in array.ravel()]


def _infer(
    client: triton.InferenceServerClient,
    model: str,
    inputs: dict[str, list[str]],
    outputs: list[str],
    binary: bool,
    parameters: dict[str, Any] | None = None,
    version: str = "",
) -> Any:
    return client.infer(
        model,
        [_bytes_input(name, texts, binary) for name, texts in inputs.items()],
        outputs=[triton.InferRequestedOutput(o, binary_data=binary) for o in outputs],
        parameters=parameters,
        model_version=version,
    )


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "squeezer" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("nope")
    tiny = client.get_model_metadata("tiny")
    assert tiny["versions"] == ["1"] and tiny["inputs"][0] == {
        "name": "TEXT",
        "datatype": "BYTES",
        "shape": [-1],
    }
    assert tiny["outputs"][0]["name"] == "EMBEDDING" and tiny["outputs"][0]["shape"][1] > 0
    sentiment = client.get_model_metadata("sentiment", "1")
    assert [o["name"] for o in sentiment["outputs"]] == ["SCORES", "LABEL"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_the_other_dialects(
    client: triton.InferenceServerClient, server: ServerProcess, binary: bool
) -> None:
    url = server.url
    # embed == TEI /embed
    result = _infer(client, "tiny", {"TEXT": TEXTS}, ["EMBEDDING"], binary)
    tei = httpx.post(f"{url}/embed", json={"inputs": TEXTS}).json()
    np.testing.assert_allclose(result.as_numpy("EMBEDDING"), np.array(tei), atol=1e-6)
    # classify == the HF API's labels (all of them, per input)
    result = _infer(client, "sentiment", {"TEXT": TEXTS}, ["SCORES", "LABEL"], binary)
    hf = httpx.post(
        f"{url}/models/sentiment", json={"inputs": TEXTS, "parameters": {"top_k": None}}
    ).json()
    labels = [row[0]["label"] for row in hf]
    assert _strings(result.as_numpy("LABEL")) == labels
    assert result.as_numpy("SCORES").shape == (2, len(hf[0]))
    np.testing.assert_allclose(
        result.as_numpy("SCORES").max(axis=1), [r[0]["score"] for r in hf], atol=1e-6
    )
    # rerank == TEI /rerank, in input order (the model's main task is classify)
    query = {"QUERY": ["a cat"], "TEXT": TEXTS}
    result = _infer(client, "reranker", query, ["SCORE"], binary, {"task": "rerank"})
    ranked = httpx.post(f"{url}/rerank", json={"query": "a cat", "texts": TEXTS}).json()
    by_index = [r["score"] for r in sorted(ranked, key=lambda r: r["index"])]
    np.testing.assert_allclose(result.as_numpy("SCORE"), by_index, atol=1e-6)
    # token-classify, fill-mask, zero-shot, QA: RESULT == the HF API's answer per input
    cases: list[tuple[str, dict[str, list[str]], dict[str, Any], Any]] = [
        ("ner", {"TEXT": TEXTS}, {}, {"inputs": TEXTS}),
        ("mlm", {"TEXT": ["the cat [MASK] on the mat"]}, {"top_k": 3},
         {"inputs": ["the cat [MASK] on the mat"], "parameters": {"top_k": 3}}),
        ("nli", {"TEXT": TEXTS}, {"task": "zero-shot", "candidate_labels": "animals,servers"},
         {"inputs": TEXTS, "parameters": {"candidate_labels": "animals,servers"}}),
    ]  # fmt: skip
    for model, inputs, parameters, body in cases:
        result = _infer(client, model, inputs, ["RESULT"], binary, parameters)
        got = [json.loads(x) for x in _strings(result.as_numpy("RESULT"))]
        assert got == httpx.post(f"{url}/models/{model}", json=body).json(), model
    qa = {"QUESTION": ["where did the cat sit?"], "CONTEXT": ["the cat sat on the mat"]}
    result = _infer(client, "qa", qa, ["RESULT"], binary)
    want = httpx.post(
        f"{url}/models/qa",
        json={"inputs": {"question": qa["QUESTION"][0], "context": qa["CONTEXT"][0]}},
    ).json()
    assert [json.loads(x) for x in _strings(result.as_numpy("RESULT"))] == [want]


def test_a_versioned_infer_and_errors(client: triton.InferenceServerClient) -> None:
    result = _infer(client, "tiny", {"TEXT": TEXTS}, ["EMBEDDING"], True, version="1")
    assert result.get_response()["model_version"] == "1"
    with pytest.raises(InferenceServerException, match="no version"):
        _infer(client, "tiny", {"TEXT": TEXTS}, ["EMBEDDING"], True, version="9")
    with pytest.raises(InferenceServerException, match="'TEXT' is required"):
        _infer(client, "tiny", {"WRONG": TEXTS}, ["EMBEDDING"], False)
    with pytest.raises(InferenceServerException, match="max-client-batch-size"):
        _infer(client, "tiny", {"TEXT": ["x"] * 300}, ["EMBEDDING"], True)
    with pytest.raises(InferenceServerException, match="generate"):
        _infer(client, "llama", {"TEXT": TEXTS}, ["RESULT"], False)


def test_generate_and_generate_stream(server: ServerProcess) -> None:
    body = {
        "text_input": "Functions are objects",
        "parameters": {"max_tokens": 12, "temperature": 0},
    }
    r = httpx.post(f"{server.url}/v2/models/llama/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "llama" and out["model_version"] == "1"
    tgi = httpx.post(
        f"{server.url}/generate",
        json={"inputs": "Functions are objects", "parameters": {"max_new_tokens": 12}},
        timeout=60,
    ).json()
    assert out["text_output"] == tgi["generated_text"]
    pieces = []
    with httpx.stream(
        "POST", f"{server.url}/v2/models/llama/generate_stream", json=body, timeout=60
    ) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data: "):
                pieces.append(json.loads(line[6:])["text_output"])
    assert len(pieces) > 1 and "".join(pieces) == out["text_output"]
    bad = httpx.post(f"{server.url}/v2/models/llama/generate", json={"text_input": "x", "beam": 2})
    assert bad.status_code == 422 and "beam" in bad.json()["error"]
