"""Generation from the real server process, with the clients people use: ``openai``
(streaming and not) and ``huggingface_hub``'s ``InferenceClient`` (``text_generation``
through ``POST /`` on a server that also embeds, and ``chat_completion``)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from huggingface_hub import InferenceClient

from tests.e2e.conftest import ServerProcess, start_server, tiny_and_llama

pytestmark = pytest.mark.e2e
PROMPT = "Functions are objects"
MESSAGES = [{"role": "user", "content": "What is a class?"}]


@pytest.fixture(scope="module")
def gen_server(
    tiny_bert: Path, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("e2e-gen") / "server.log"
    s = start_server(tiny_and_llama(tiny_bert, tiny_llama), log)
    yield s
    assert s.terminate() == 0, s.output()


def test_openai_client_completions_and_chat(gen_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{gen_server.url}/v1", api_key="unused", max_retries=0)
    done = client.completions.create(model="llama", prompt=PROMPT, max_tokens=12, temperature=0)
    text = done.choices[0].text
    assert done.usage is not None and done.usage.completion_tokens >= 1
    streamed = client.completions.create(
        model="llama", prompt=PROMPT, max_tokens=12, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text

    chat = client.chat.completions.create(
        model="llama",
        messages=MESSAGES,
        max_tokens=10,
        temperature=0,  # type: ignore[arg-type]
    )
    reply = chat.choices[0].message.content
    assert chat.choices[0].finish_reason in ("stop", "length")
    chunks = list(
        client.chat.completions.create(
            model="llama",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == chat.usage.total_tokens  # type: ignore[union-attr]
    # vLLM's extra fields, as benchmark clients send them.
    extra = client.completions.create(
        model="llama",
        prompt=PROMPT,
        max_tokens=8,
        extra_body={"ignore_eos": True, "min_tokens": 8, "top_k": 20, "repetition_penalty": 1.1},
    )
    assert extra.usage is not None and extra.usage.completion_tokens == 8
    # OpenAI's own sampling fields, and the loglikelihood call (echo + logprobs).
    sampled = client.completions.create(
        model="llama",
        prompt=PROMPT,
        max_tokens=6,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        logit_bias={"70": 3},
        logprobs=2,
        extra_body={"min_p": 0.05, "stop_token_ids": [1]},
    )
    assert sampled.choices[0].logprobs is not None
    scored = client.completions.create(
        model="llama", prompt=PROMPT, max_tokens=0, echo=True, logprobs=1
    )
    lp = scored.choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.token_logprobs[0] is None
    assert scored.choices[0].text == PROMPT and all(x < 0 for x in lp.token_logprobs[1:])
    with pytest.raises(openai.BadRequestError, match="max-total-tokens"):
        client.completions.create(model="llama", prompt=PROMPT, max_tokens=5000)


def test_inference_client_text_generation_via_root_and_chat(gen_server: ServerProcess) -> None:
    client = InferenceClient(base_url=gen_server.url)
    text = client.text_generation(PROMPT, max_new_tokens=12)
    pieces = list(client.text_generation(PROMPT, max_new_tokens=12, stream=True))
    assert "".join(pieces) == text
    details = client.text_generation(PROMPT, max_new_tokens=12, details=True)
    assert details.generated_text == text and details.details is not None
    assert details.details.generated_tokens == len(details.details.tokens)
    scored = client.text_generation(
        PROMPT, max_new_tokens=2, details=True, decoder_input_details=True
    )
    assert scored.details is not None and scored.details.prefill[0].logprob is None
    assert all(t.logprob is not None and t.logprob < 0 for t in scored.details.prefill[1:])
    events = list(client.text_generation(PROMPT, max_new_tokens=12, details=True, stream=True))
    assert events[-1].generated_text == text and events[-1].details is not None
    assert len(client.feature_extraction("the same server still embeds")[0]) == 32

    chat = client.chat_completion(MESSAGES, max_tokens=10, temperature=0)
    reply = chat.choices[0].message.content
    streamed = client.chat_completion(MESSAGES, max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == reply


def _generated(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    found = re.search(r'squeezer_generated_tokens_total\{model="llama"\} ([0-9.e+]+)', metrics)
    return float(found.group(1)) if found else 0.0


def _running(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    found = re.search(r'squeezer_generation_running\{model="llama"\} ([0-9.e+]+)', metrics)
    return float(found.group(1)) if found else 0.0


def test_a_client_that_goes_away_frees_its_sequence(gen_server: ServerProcess) -> None:
    url = gen_server.url
    body = {"prompt": PROMPT, "max_tokens": 230, "ignore_eos": True}
    for route, stream in (("/v1/completions", True), ("/v1/completions", False)):
        before = _generated(url)
        if stream:
            streaming = {**body, "stream": True}
            with httpx.stream("POST", f"{url}{route}", json=streaming, timeout=30) as r:
                lines = r.iter_lines()
                assert next(line for line in lines if line.startswith("data:"))
        else:
            with pytest.raises(httpx.TimeoutException):
                httpx.post(f"{url}{route}", json=body, timeout=0.05)
        for _ in range(200):
            if _running(url) == 0:
                break
            time.sleep(0.02)
        assert _running(url) == 0
        # Stopped early, not run to the end for nobody.
        assert _generated(url) - before < 230, (stream, _generated(url) - before)
    # And the server serves the next request as before.
    r = httpx.post(f"{url}/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 3}})
    assert r.status_code == 200
