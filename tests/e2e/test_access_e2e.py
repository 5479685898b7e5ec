"""API keys, TLS, request ids and the JSON access log, on the real server process,
called with the clients people use: ``openai``, ``huggingface_hub``, curl and a
Prometheus-style scrape."""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
import trustme
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError, TextGenerationError
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ServerProcess, start_server, tiny_and_llama

pytestmark = pytest.mark.e2e

FLAG_KEY = "sk-e2e-flag-key-7f3a"
FILE_KEY = "sk-e2e-file-key-91c2"
ADMIN_KEY = "sk-e2e-admin-key-5d0e"
WRONG_KEY = "sk-e2e-wrong-key-0000"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is a class?"}]
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(
    tiny_bert: Path, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """An embedding and a generation model behind two inference keys (one from the
    flag, one from a file) and an admin key, logging JSON."""
    folder = tmp_path_factory.mktemp("e2e-access")
    key_file = folder / "keys.txt"
    key_file.write_text(f"# inference keys\n\n{FILE_KEY}\n")
    s = start_server(
        [
            *tiny_and_llama(tiny_bert, tiny_llama),
            "--api-key",
            FLAG_KEY,
            "--api-key-file",
            str(key_file),
            "--admin-api-key",
            ADMIN_KEY,
            "--log-format",
            "json",
        ],
        folder / "server.log",
    )
    yield s
    assert s.terminate() == 0, s.output()


def test_openai_client_needs_a_key(keyed: ServerProcess) -> None:
    for key in (FLAG_KEY, FILE_KEY, ADMIN_KEY):  # the admin key serves inference too
        client = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=key, max_retries=0)
        done = client.embeddings.create(model="tiny", input=["keyed", "embeddings"])
        assert len(done.data) == 2 and len(done.data[0].embedding) == 32
    client = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=FILE_KEY, max_retries=0)
    chat = client.chat.completions.create(
        model="llama",
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
    )
    reply = chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.completion_tokens >= 1
    chunks = list(
        client.chat.completions.create(
            model="llama",
            messages=MESSAGES,
            max_tokens=8,
            temperature=0,
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply

    wrong = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=WRONG_KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.embeddings.create(model="tiny", input="x")
    assert caught.value.status_code == 401
    assert caught.value.response.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="llama", messages=MESSAGES, max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        list(wrong.chat.completions.create(model="llama", messages=MESSAGES, stream=True))
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_inference_client_needs_a_token(keyed: ServerProcess) -> None:
    vector = InferenceClient(base_url=keyed.url, token=FLAG_KEY).feature_extraction("hello")
    assert len(vector[0]) == 32
    client = InferenceClient(base_url=keyed.url, token=FILE_KEY)
    text = client.text_generation("Functions are objects", max_new_tokens=6)
    pieces = list(client.text_generation("Functions are objects", max_new_tokens=6, stream=True))
    assert "".join(pieces) == text

    wrong = InferenceClient(base_url=keyed.url, token=WRONG_KEY)
    with pytest.raises(HfHubHTTPError) as caught:
        wrong.feature_extraction("hello")
    assert caught.value.response.status_code == 401
    # text_generation reads the TGI error_type ("unauthorized" is not one it names):
    # an UnknownError raised from the 401.
    with pytest.raises(TextGenerationError) as generation_error:
        wrong.text_generation("Functions are objects", max_new_tokens=2)
    cause = generation_error.value.__cause__
    assert isinstance(cause, HfHubHTTPError) and cause.response.status_code == 401
    anonymous = InferenceClient(base_url=keyed.url)
    with pytest.raises(HfHubHTTPError) as caught:
        anonymous.feature_extraction("hello")
    assert caught.value.response.status_code == 401


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_with_a_tei_style_header(keyed: ServerProcess) -> None:
    def curl(*headers: str) -> tuple[int, Any]:
        args = ["curl", "-s", "-w", "\n%{http_code}", "-H", "Content-Type: application/json"]
        for h in headers:
            args += ["-H", h]
        args += ["-d", '{"inputs":"hi"}', f"{keyed.url}/embed"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout
        body, code = out.rsplit("\n", 1)
        return int(code), json.loads(body)

    code, body = curl(f"Authorization: Bearer {FLAG_KEY}")
    assert code == 200 and len(body) == 1 and len(body[0]) == 32
    assert all(isinstance(x, float) for x in body[0])
    code, body = curl()
    assert code == 401 and body["error_type"] == "Unauthorized" and body["error"]
    code, body = curl(f"Authorization: Bearer {WRONG_KEY}")
    assert code == 401 and body["error_type"] == "Unauthorized"


def test_each_dialect_says_401_its_own_way(keyed: ServerProcess) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        r = http.post("/embed", json={"inputs": "x"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert set(r.json()) == {"error", "error_type"} and r.json()["error_type"] == "Unauthorized"
        r = http.post("/v1/embeddings", json={"input": "x"}, headers=bearer(WRONG_KEY))
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        error = r.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"} and error["message"]
        r = http.post("/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 2}})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error_type"] == "unauthorized"
        # Not a key, and not the scheme: still 401.
        r = http.post("/embed", json={"inputs": "x"}, headers={"Authorization": FLAG_KEY})
        assert r.status_code == 401
        # /info: open to inference keys, the model paths to the admin only.
        assert http.get("/info").status_code == 401
        models = http.get("/info", headers=bearer(FLAG_KEY)).json()["models"]
        assert {m["name"] for m in models} == {"tiny", "llama"}
        assert all(m["path"] is None for m in models)
        models = http.get("/info", headers=bearer(ADMIN_KEY)).json()["models"]
        assert all(m["path"] for m in models)


def test_open_routes_need_no_key(keyed: ServerProcess) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/ready").status_code == 200
        r = http.get("/openapi.json")
        assert r.status_code == 200 and "/v1/embeddings" in r.json()["paths"]


def test_prometheus_scrape_with_the_admin_token(keyed: ServerProcess) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        r = http.post(
            "/generate",
            json={"inputs": "Functions are objects", "parameters": {"max_new_tokens": 3}},
            headers=bearer(FLAG_KEY),
        )
        assert r.status_code == 200
        scrape = {**bearer(ADMIN_KEY), "Accept": PROMETHEUS_ACCEPT}
        r = http.get("/metrics", headers=scrape)
        assert r.status_code == 200, r.text
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        assert "squeezer_requests" in families, sorted(families)
        ttft = families["squeezer_time_to_first_token_seconds"]
        counts = [
            s.value
            for s in ttft.samples
            if s.name.endswith("_count") and s.labels.get("model") == "llama"
        ]
        assert counts and counts[0] >= 1
        for key in (FLAG_KEY, FILE_KEY, WRONG_KEY):
            r = http.get("/metrics", headers={**bearer(key), "Accept": PROMETHEUS_ACCEPT})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert http.get("/metrics").status_code == 401


def _json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in server.output().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            lines.append(obj)
    return lines


def _access_line(server: ServerProcess, request_id: str) -> dict[str, Any]:
    for _ in range(100):  # written as the response ends: maybe just after the client has it
        for obj in _json_lines(server):
            if obj.get("logger") == "squeezer.access" and obj.get("request_id") == request_id:
                return obj
        time.sleep(0.05)
    raise AssertionError(f"no access line for {request_id}:\n{server.output()}")


def test_json_access_log_traces_a_request_and_holds_no_text(keyed: ServerProcess) -> None:
    marker = "zanzibar-quokka-e2e-marker"
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        r = http.post(
            "/embed",
            json={"inputs": f"the {marker} sentence"},
            headers={**bearer(FILE_KEY), "X-Request-Id": "e2e-trace-1"},
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "e2e-trace-1"
        r = http.post(
            "/v1/completions",
            json={"model": "llama", "prompt": f"{marker} again", "max_tokens": 4},
            headers={**bearer(FLAG_KEY), "X-Request-Id": "e2e-trace-2"},
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "e2e-trace-2"
        denied = http.post(
            "/embed",
            json={"inputs": marker},
            headers={**bearer(WRONG_KEY), "X-Request-Id": "e2e-trace-3"},
        )
        assert denied.status_code == 401 and denied.headers["x-request-id"] == "e2e-trace-3"
        # No id, or one not fit for a log line: a fresh one, 32 hex digits.
        for headers in ({}, {"X-Request-Id": "two words"}, {"X-Request-Id": "x" * 200}):
            r = http.get("/health", headers=headers)
            assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), headers

    embed = _access_line(keyed, "e2e-trace-1")
    assert embed["method"] == "POST" and embed["route"] == "/embed"
    assert embed["status"] == 200 and embed["model"] == "tiny"
    assert embed["input_tokens"] > 0 and embed["output_tokens"] == 0
    for field in ("queue_ms", "compute_ms", "duration_ms"):
        assert isinstance(embed[field], (int, float)) and embed[field] >= 0, field
    assert embed["duration_ms"] > 0 and embed["level"] == "INFO"
    completion = _access_line(keyed, "e2e-trace-2")
    assert completion["route"] == "/v1/completions" and completion["model"] == "llama"
    assert completion["status"] == 200 and completion["input_tokens"] > 0
    assert 1 <= completion["output_tokens"] <= 4
    assert _access_line(keyed, "e2e-trace-3")["status"] == 401

    log = keyed.output()
    assert marker not in log
    for key in (FLAG_KEY, FILE_KEY, ADMIN_KEY, WRONG_KEY):
        assert key not in log, "a key is in the log"


# TLS -------------------------------------------------------------------------------


def test_tls_with_a_key(tiny_bert: Path, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_pem, cert_pem, key_pem = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(cert_pem), append=i > 0)
    trusted = ssl.create_default_context(cafile=str(ca_pem))
    server = start_server(
        [
            "--model",
            f"tiny={tiny_bert}",
            "--no-warmup",
            "--ssl-certfile",
            str(cert_pem),
            "--ssl-keyfile",
            str(key_pem),
            "--api-key",
            FLAG_KEY,
        ],
        tmp_path / "tls.log",
        tls=trusted,
    )
    try:
        assert server.url.startswith("https://")
        with httpx.Client(base_url=server.url, verify=trusted, timeout=30) as http:
            r = http.post("/embed", json={"inputs": "over TLS"}, headers=bearer(FLAG_KEY))
            assert r.status_code == 200 and len(r.json()[0]) == 32
            r = http.post("/embed", json={"inputs": "over TLS"})
            assert r.status_code == 401 and r.json()["error_type"] == "Unauthorized"
        # openai's own client type (httpx2), trusting the test CA.
        with httpx2.Client(verify=trusted, timeout=30) as tls_http:
            client = openai.OpenAI(
                base_url=f"{server.url}/v1", api_key=FLAG_KEY, http_client=tls_http, max_retries=0
            )
            done = client.embeddings.create(model="tiny", input=["a", "b"])
            assert len(done.data) == 2 and len(done.data[0].embedding) == 32
            wrong = openai.OpenAI(
                base_url=f"{server.url}/v1", api_key=WRONG_KEY, http_client=tls_http, max_retries=0
            )
            with pytest.raises(openai.AuthenticationError):
                wrong.embeddings.create(model="tiny", input="a")
        # An unknown CA is refused by the client; plain HTTP on the TLS port fails.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/health", timeout=5)
        plain = server.url.replace("https://", "http://")
        try:
            status = httpx.post(
                f"{plain}/embed", json={"inputs": "x"}, headers=bearer(FLAG_KEY), timeout=5
            ).status_code
        except httpx.TransportError:
            status = None
        assert status != 200
        port = server.url.rsplit(":", 1)[1]
        assert f"squeezer serving on https://127.0.0.1:{port}" in server.output()
        assert server.terminate() == 0, server.output()
    finally:
        server.terminate()
