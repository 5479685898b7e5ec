"""The real server process, called with the client libraries people use."""

from __future__ import annotations

import concurrent.futures
import re
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from huggingface_hub import InferenceClient

from tests.e2e.conftest import ServerProcess, start_server
from tests.reference import cosine, reference_embeddings

pytestmark = pytest.mark.e2e
TEXTS = ["Real clients talk to a real server.", "A second, somewhat longer sentence."]


def test_openai_client_embeddings(
    server: ServerProcess, tiny_bert: Path, tiny_bert_cls: Path
) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    default = client.embeddings.create(model="dummy", input=TEXTS)
    assert default.model == "tiny" and default.usage.prompt_tokens > 0
    got = np.asarray([d.embedding for d in default.data])
    assert cosine(got, reference_embeddings(tiny_bert, TEXTS)).min() >= 0.9999
    named = client.embeddings.create(model="tiny-cls", input=TEXTS)  # base64 by default in v1+
    got = np.asarray([d.embedding for d in named.data])
    want = reference_embeddings(tiny_bert_cls, TEXTS, pooling="cls")
    assert cosine(got, want).min() >= 0.9999
    assert [m.id for m in client.models.list()] == ["tiny", "tiny-cls"]


def test_openai_client_sees_errors(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.embeddings.create(model="missing", input="x")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny", input="")
    with pytest.raises(openai.BadRequestError, match="at most 64"):
        client.embeddings.create(model="tiny", input="word " * 200)


def test_inference_client_feature_extraction(
    server: ServerProcess, tiny_bert: Path, tiny_bert_cls: Path
) -> None:
    by_base = InferenceClient(base_url=server.url).feature_extraction(TEXTS[0])
    assert cosine(np.asarray(by_base), reference_embeddings(tiny_bert, TEXTS[:1])).min() >= 0.9999
    by_model = InferenceClient(model=f"{server.url}/models/tiny-cls").feature_extraction(TEXTS[1])
    want = reference_embeddings(tiny_bert_cls, TEXTS[1:], pooling="cls")
    assert cosine(np.asarray(by_model), want).min() >= 0.9999


def test_bad_input_over_http_keeps_the_server_serving(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.post("/embed", content=b"{nope", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error_type"] == "Validation"
        assert http.post("/embed", json={"inputs": []}).status_code == 400
        assert http.post("/embed", json={"inputs": [1.5]}).status_code == 422
        assert http.post("/v1/embeddings", json={"input": {"a": 1}}).status_code == 400
        assert http.post("/embed", content=b"x" * 3_000_000).status_code == 413
        assert http.post("/embed", json={"inputs": "fine"}).status_code == 200
        assert "squeezer_requests_total" in http.get("/metrics").text


def test_sigterm_answers_every_request_in_flight(tiny_bert: Path, tmp_path: Path) -> None:
    # --max-wait-ms keeps each batch open for a while, so requests are surely in flight.
    server = start_server(
        ["--model", f"tiny={tiny_bert}", "--max-wait-ms", "400", "--no-warmup"],
        tmp_path / "drain.log",
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:

            def call(i: int) -> int:
                return http.post("/embed", json={"inputs": [f"request {i}"] * 4}).status_code

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                futures = [pool.submit(call, i) for i in range(16)]
                for _ in range(500):  # until all 16 are inside the server (not by a clock)
                    metrics = http.get("/metrics").text
                    found = re.search(r"squeezer_http_requests_in_flight ([0-9.]+)", metrics)
                    if found and float(found.group(1)) >= 17:  # 16 + this scrape
                        break
                    time.sleep(0.01)
                server.proc.send_signal(15)
                codes = [f.result() for f in futures]
        assert codes == [200] * 16
        assert server.proc.wait(timeout=30) == 0
        assert "draining" in server.output()
    finally:
        server.terminate()


def test_drain_delay_keeps_serving_with_ready_at_503(tiny_bert: Path, tmp_path: Path) -> None:
    server = start_server(
        ["--model", f"tiny={tiny_bert}", "--drain-delay", "3", "--no-warmup"],
        tmp_path / "delay.log",
    )
    try:
        server.proc.send_signal(15)
        with httpx.Client(base_url=server.url, timeout=5) as http:
            for _ in range(100):  # the signal is handled asynchronously
                if http.get("/ready").status_code == 503:
                    break
                time.sleep(0.02)
            assert http.get("/ready").status_code == 503
            assert http.get("/health").status_code == 200
            r = http.post("/embed", json={"inputs": "late"})
            assert r.status_code == 503 and r.json()["error_type"] == "Unhealthy"
        assert server.proc.wait(timeout=30) == 0
    finally:
        server.terminate()
