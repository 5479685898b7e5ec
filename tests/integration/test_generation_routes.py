"""Generation over HTTP, in-process: TGI and OpenAI routes on a tiny random Llama.

Parity: greedy tokens of concurrent requests of different lengths equal
``model.generate`` for each prompt alone; seeded sampling gives the same tokens
alone and in a crowd. Then the dialects' shapes, limits and errors.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import torch
import transformers

from squeezer.config import ModelSettings, Settings

PROMPTS = [
    "Functions are objects",
    "The",
    "A class definition is an executable statement that may use",
    "If the",
    "Exceptions are raised",
]


def _settings(tiny_bert: Path, tiny_llama: Path, **kw: Any) -> Settings:
    return Settings(
        models=[
            ModelSettings(name="bert", path=str(tiny_bert)),
            ModelSettings(name="llama", path=str(tiny_llama)),
        ],
        **{"max_total_tokens": 256, "max_num_seqs": 8, **kw},
    )


@pytest.fixture
async def client(make_async_client: Any, tiny_bert: Path, tiny_llama: Path) -> httpx.AsyncClient:
    c: httpx.AsyncClient = await make_async_client(_settings(tiny_bert, tiny_llama))
    return c


def _events(body: bytes) -> list[Any]:
    out = []
    for line in body.decode().splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def _reference(path: Path, prompt: str, new: int) -> list[int]:
    """``generate`` alone, greedy, stopping at the tokenizer's EOS as the server does."""
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([tok(prompt).input_ids])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=new,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    return [int(t) for t in out[0, ids.shape[1] :]]


async def _tokens(client: httpx.AsyncClient, prompt: str, **params: Any) -> dict[str, Any]:
    r = await client.post(
        "/generate", json={"inputs": prompt, "parameters": {"details": True, **params}}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_concurrent_greedy_requests_equal_generate_alone(
    client: httpx.AsyncClient, tiny_llama: Path
) -> None:
    lengths = [40, 7, 25, 60, 13]
    results = await asyncio.gather(
        *(_tokens(client, p, max_new_tokens=n) for p, n in zip(PROMPTS, lengths, strict=True))
    )
    for prompt, n, result in zip(PROMPTS, lengths, results, strict=True):
        got = [t["id"] for t in result["details"]["tokens"]]
        assert got == _reference(tiny_llama, prompt, n), prompt
        finish = result["details"]["finish_reason"]
        assert finish == ("length" if len(got) == n else "eos_token")
        hf = transformers.AutoTokenizer.from_pretrained(tiny_llama)
        assert result["generated_text"] == hf.decode(got, skip_special_tokens=True)


async def test_seeded_sampling_is_the_same_alone_and_in_a_crowd(
    client: httpx.AsyncClient,
) -> None:
    params = {"max_new_tokens": 30, "do_sample": True, "temperature": 0.9, "top_k": 50, "seed": 7}
    alone = await _tokens(client, PROMPTS[0], **params)
    crowd = await asyncio.gather(
        _tokens(client, PROMPTS[1], max_new_tokens=50, do_sample=True, seed=1),
        _tokens(client, PROMPTS[0], **params),
        _tokens(client, PROMPTS[2], max_new_tokens=10),
        _tokens(client, PROMPTS[0], **{**params, "seed": 8}),
    )
    assert crowd[1]["generated_text"] == alone["generated_text"]
    assert crowd[1]["details"]["seed"] == 7
    ids = [t["id"] for t in alone["details"]["tokens"]]
    assert [t["id"] for t in crowd[1]["details"]["tokens"]] == ids
    assert [t["id"] for t in crowd[3]["details"]["tokens"]] != ids  # another seed
    unseeded = await _tokens(client, PROMPTS[0], max_new_tokens=5, do_sample=True)
    assert isinstance(unseeded["details"]["seed"], int)  # reported, so it can be replayed
    greedy = await _tokens(client, PROMPTS[0], max_new_tokens=5)
    assert greedy["details"]["seed"] is None


async def test_stream_events_add_up_to_the_generated_text(client: httpx.AsyncClient) -> None:
    whole = await _tokens(client, PROMPTS[0], max_new_tokens=20, top_n_tokens=2)
    r = await client.post(
        "/generate_stream",
        json={"inputs": PROMPTS[0], "parameters": {"max_new_tokens": 20, "top_n_tokens": 2}},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.content)
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))
    assert [e["token"]["id"] for e in events] == [t["id"] for t in whole["details"]["tokens"]]
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    last = events[-1]
    assert last["generated_text"] == whole["generated_text"]
    assert "".join(e["token"]["text"] for e in events) == whole["generated_text"]
    assert last["details"]["finish_reason"] == whole["details"]["finish_reason"]
    assert last["details"]["generated_tokens"] == len(events)
    assert all(len(e["top_tokens"]) == 2 for e in events)
    top = whole["details"]["top_tokens"][0]
    assert top[0]["logprob"] >= top[1]["logprob"]


async def test_stop_sequences_cut_the_text_before_them(client: httpx.AsyncClient) -> None:
    text = (await _tokens(client, PROMPTS[2], max_new_tokens=40))["generated_text"]
    stop = text[10:13]
    cut = await _tokens(client, PROMPTS[2], max_new_tokens=40, stop=[stop])
    assert cut["generated_text"] == text[: text.index(stop)]
    assert cut["details"]["finish_reason"] == "stop_sequence"
    full = await _tokens(client, PROMPTS[2], max_new_tokens=5, return_full_text=True)
    assert full["generated_text"].startswith(PROMPTS[2])


async def test_root_routes_generation_bodies_to_the_generation_model(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/", json={"inputs": "The", "parameters": {"max_new_tokens": 3}})
    assert r.status_code == 200 and isinstance(r.json()[0]["generated_text"], str)
    r = await client.post("/", json={"inputs": "The", "stream": True})
    assert _events(r.content)[-1]["details"]["finish_reason"] in ("length", "eos_token")
    embedded = await client.post("/", json={"inputs": "The"})  # still the embedding default
    assert embedded.status_code == 200 and len(embedded.json()[0]) == 32
    r = await client.post(
        "/models/llama", json={"inputs": "The", "parameters": {"max_new_tokens": 2}}
    )
    assert r.status_code == 200 and "generated_text" in r.json()[0]


async def test_tgi_errors_have_tgi_statuses_and_types(client: httpx.AsyncClient) -> None:
    cases = [
        ({"inputs": "x", "parameters": {"max_new_tokens": 0}}, 422, "validation"),
        ({"inputs": "x", "parameters": {"temperature": 0}}, 422, "validation"),
        ({"inputs": "x", "parameters": {"top_p": 1.0}}, 422, "validation"),
        (
            {"inputs": "x", "parameters": {"grammar": {"type": "regex", "value": "("}}},
            422,
            "validation",
        ),
        ({"inputs": "x", "parameters": {"max_new_tokens": 1000}}, 422, "validation"),
        ({"inputs": "x", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}, 422, "validation"),
        ({"inputs": "x", "parameters": {"bogus": 1}}, 422, "validation"),
        ({"inputs": ""}, 422, "validation"),
    ]
    for body, status, kind in cases:
        r = await client.post("/generate", json=body)
        assert (r.status_code, r.json()["error_type"]) == (status, kind), (body, r.text)
    long = " ".join(["word"] * 400)
    r = await client.post("/generate", json={"inputs": long})
    assert r.status_code == 422 and "max-input-tokens" in r.json()["error"]
    r = await client.post(
        "/generate", json={"inputs": long, "parameters": {"truncate": 10, "max_new_tokens": 2}}
    )
    assert r.status_code == 200  # truncation asked for: the prompt's last 10 tokens


async def test_openai_completions(client: httpx.AsyncClient) -> None:
    body = {"model": "llama", "prompt": PROMPTS[0], "max_tokens": 12, "temperature": 0}
    r = await client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    greedy = await _tokens(client, PROMPTS[0], max_new_tokens=12)
    assert out["object"] == "text_completion" and out["model"] == "llama"
    assert out["choices"][0]["text"] == greedy["generated_text"]
    usage = out["usage"]
    assert usage["completion_tokens"] == len(greedy["details"]["tokens"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    # Several prompts and n choices each, seeded; logprobs with 2 alternatives.
    body = {
        "prompt": [PROMPTS[0], PROMPTS[1]],
        "n": 2,
        "max_tokens": 6,
        "seed": 3,
        "logprobs": 2,
        "ignore_eos": True,
    }
    first = (await client.post("/v1/completions", json=body)).json()
    again = (await client.post("/v1/completions", json=body)).json()
    assert [c["index"] for c in first["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in again["choices"]]
    assert first["usage"]["completion_tokens"] == 24
    lp = first["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == 6
    # The 2 most likely, and the chosen token when it is not one of them (by text:
    # byte tokens that render alike share a key).
    pairs = zip(lp["top_logprobs"], lp["tokens"], strict=True)
    assert all(len(t) <= 3 and tok in t for t, tok in pairs)

    stream = await client.post("/v1/completions", json={**body, "stream": True, "n": 1})
    chunks = _events(stream.content)
    assert chunks[-1] == "[DONE]"
    texts = {0: "", 1: ""}
    for c in chunks[:-1]:
        for choice in c["choices"]:
            texts[choice["index"]] += choice["text"]
    assert texts[0] == first["choices"][0]["text"]


async def test_openai_chat_completions_stream_with_usage(client: httpx.AsyncClient) -> None:
    messages = [{"role": "user", "content": "What are functions?"}]
    body = {"model": "llama", "messages": messages, "max_tokens": 10, "temperature": 0}
    whole = (await client.post("/v1/chat/completions", json=body)).json()
    assert whole["object"] == "chat.completion"
    message = whole["choices"][0]["message"]
    assert message["role"] == "assistant"
    r = await client.post(
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}, "logprobs": True},
    )
    chunks = _events(r.content)
    assert chunks[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks[:-1])
    content = "".join(
        c["choices"][0]["delta"].get("content", "") for c in chunks[:-1] if c["choices"]
    )
    assert content == message["content"]
    finish = [c for c in chunks[:-1] if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish[0]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"] == whole["usage"]
    assert all(c["usage"] is None for c in chunks[:-2])


async def test_openai_errors(client: httpx.AsyncClient, tiny_bert: Path) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    cases = [
        ({**chat, "bogus_field": 1}, 400, "bogus_field"),
        ({**chat, "presence_penalty": 2.5}, 400, "presence_penalty"),
        ({**chat, "logit_bias": {"one": 5}}, 400, "logit_bias"),
        ({**chat, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({**chat, "max_tokens": 10_000}, 400, "max_new_tokens"),
        ({**chat, "model": "bert"}, 400, "model"),
        ({**chat, "model": "nope"}, 404, "model"),
        ({"messages": []}, 400, "messages"),
    ]
    for body, status, param in cases:
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["param"] == param, r.text
    # vLLM's extras are accepted.
    r = await client.post(
        "/v1/chat/completions",
        json={**chat, "max_tokens": 4, "ignore_eos": True, "min_tokens": 4, "top_k": 5},
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


async def test_concurrency_limit_answers_429(
    make_async_client: Any, tiny_bert: Path, tiny_llama: Path
) -> None:
    client = await make_async_client(
        _settings(tiny_bert, tiny_llama, max_concurrent_requests=2, max_num_seqs=1)
    )
    body = {"inputs": "The", "parameters": {"max_new_tokens": 200}}
    results = await asyncio.gather(*(client.post("/generate", json=body) for _ in range(5)))
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) >= 2 and 429 in statuses
    refused = next(r for r in results if r.status_code == 429)
    assert refused.json()["error_type"] == "overloaded" and "Retry-After" in refused.headers
    r = await client.post("/generate", json={**body, "parameters": {"max_new_tokens": 2}})
    assert r.status_code == 200  # and it keeps serving


async def test_an_embedding_completes_while_32_streams_decode(
    make_async_client: Any, tiny_bert: Path, tiny_llama: Path
) -> None:
    client = await make_async_client(_settings(tiny_bert, tiny_llama, max_num_seqs=32))
    scheduler = client._transport.app.state.runtime.engine.generator("llama:1")  # type: ignore[attr-defined]
    body = {"inputs": "The", "parameters": {"max_new_tokens": 250}}
    streams = [asyncio.ensure_future(client.post("/generate_stream", json=body)) for _ in range(32)]
    for _ in range(500):
        if scheduler.load[0] == 32:
            break
        await asyncio.sleep(0.01)
    assert scheduler.load[0] == 32
    steps = scheduler.steps
    r = await client.post("/embed", json={"inputs": "still served"})
    assert r.status_code == 200
    assert scheduler.load[0] > 0, "the embedding waited for every stream to finish"
    assert scheduler.steps - steps < 250
    done = await asyncio.gather(*streams)
    assert all(_events(d.content)[-1]["details"]["generated_tokens"] >= 1 for d in done)
    metrics = (await client.get("/metrics")).text
    assert 'squeezer_generation_running{model="llama"} 0.0' in metrics
    assert 'squeezer_generated_tokens_total{model="llama"}' in metrics


def _counter(metrics: str, name: str) -> float:
    line = next((x for x in metrics.splitlines() if x.startswith(name + " ")), None)
    return float(line.split()[-1]) if line else 0.0


async def test_a_repeated_prompt_starts_from_the_prefix_cache(client: httpx.AsyncClient) -> None:
    name = 'squeezer_generation_prompt_tokens_cached_total{model="llama"}'
    before = _counter((await client.get("/metrics")).text, name)
    body = {"inputs": PROMPTS[0] + " again", "parameters": {"max_new_tokens": 4}}
    first = (await client.post("/generate", json=body)).json()
    second = (await client.post("/generate", json=body)).json()
    assert first == second  # greedy: the cached keys give the same tokens
    after = _counter((await client.get("/metrics")).text, name)
    assert after - before >= 2  # the whole prompt but its last token, at least


async def test_info_has_tgi_fields(client: httpx.AsyncClient) -> None:
    info = (await client.get("/info")).json()
    assert info["model_id"] == "bert"  # TEI clients still see the embedding default
    assert info["max_total_tokens"] == 256 and info["max_input_tokens"] == 255
    assert info["max_stop_sequences"] == 4 and info["max_best_of"] == 1
    assert info["generation_model_id"] == "llama"
    assert {m["name"]: m["tasks"] for m in info["models"]}["llama"] == ["generate"]


@pytest.mark.parametrize("method", ["int8", "fp16"])
async def test_quantized_torch_paths_serve_and_say_so(
    make_async_client: Any, tiny_bert: Path, tiny_llama: Path, method: str
) -> None:
    client = await make_async_client(_settings(tiny_bert, tiny_llama, quantize=method))
    info = {m["name"]: m for m in (await client.get("/info")).json()["models"]}
    assert info["llama"]["dtype"] == f"float32+{method} weights"
    assert info["bert"]["dtype"] == "float32"  # encoders are not generation models
    r = await client.post("/generate", json={"inputs": "The", "parameters": {"max_new_tokens": 8}})
    assert r.status_code == 200 and isinstance(r.json()["generated_text"], str)


async def test_a_failed_step_ends_streams_with_an_error_event_and_the_server_serves_on(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from squeezer.backends.torch_generation import TorchGenerationBackend

    step = TorchGenerationBackend.step

    def failing(self: TorchGenerationBackend, chunks: Any, tokens: Any) -> Any:
        if tokens:  # prompts go in; the first step with decode tokens fails
            raise RuntimeError("decode exploded")
        return step(self, chunks, tokens)

    monkeypatch.setattr(TorchGenerationBackend, "step", failing)
    body = {"inputs": PROMPTS[0], "parameters": {"max_new_tokens": 5}}
    events = _events((await client.post("/generate_stream", json=body)).content)
    assert events[-1]["error_type"] == "generation" and "decode exploded" in events[-1]["error"]
    chat = {  # ignore_eos: a first token that happens to be EOS would skip the decode step
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "stream": True,
        "ignore_eos": True,
    }
    chunks = _events((await client.post("/v1/chat/completions", json=chat)).content)
    assert chunks[-1] == "[DONE]" and chunks[-2]["error"]["type"] == "server_error"
    r = await client.post("/generate", json=body)
    assert r.status_code == 424 and r.json()["error_type"] == "generation"
    monkeypatch.setattr(TorchGenerationBackend, "step", step)
    r = await client.post("/generate", json=body)
    assert r.status_code == 200  # the failed steps failed only their own requests


async def test_the_paged_cache_serves_the_same_tokens_and_reports_its_blocks(
    make_async_client: Any, tiny_bert: Path, tiny_llama: Path
) -> None:
    # On CPU the pool holds what the slots would (8 x 256 positions, 256 blocks of 8).
    settings = _settings(tiny_bert, tiny_llama, kv_cache="paged", kv_block_size=8)
    paged: httpx.AsyncClient = await make_async_client(settings)
    lengths = [40, 7, 25, 60, 13]
    results = await asyncio.gather(
        *(_tokens(paged, p, max_new_tokens=n) for p, n in zip(PROMPTS, lengths, strict=True))
    )
    for prompt, n, result in zip(PROMPTS, lengths, results, strict=True):
        assert [t["id"] for t in result["details"]["tokens"]] == _reference(tiny_llama, prompt, n)
    metrics = (await paged.get("/metrics")).text
    assert 'squeezer_kv_cache_blocks{model="llama"} 256.0' in metrics  # 8 x 256 / 8
    assert 'squeezer_kv_cache_blocks_in_use{model="llama"} 0.0' in metrics  # all given back


async def test_a_u64_seed_beside_six_streams_ends_none_of_them(client: httpx.AsyncClient) -> None:
    """Seen as a user: six chat streams were decoding when a TGI /generate arrived with
    seed 2**64 - 1, which TGI's contract allows; the step overflowed and all six ended
    with an error event. Now every stream completes, and the seed is honoured."""
    chat = {
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 12,
        "stream": True,
        "ignore_eos": True,
    }
    poison = {
        "inputs": PROMPTS[0],
        "parameters": {"max_new_tokens": 4, "do_sample": True, "seed": 2**64 - 1},
    }
    streams = [client.post("/v1/chat/completions", json=chat) for _ in range(6)]
    *answers, tgi = await asyncio.gather(*streams, client.post("/generate", json=poison))
    assert tgi.status_code == 200, tgi.text
    for answer in answers:
        events = _events(answer.content)
        assert events[-1] == "[DONE]" and all("error" not in e for e in events[:-1])
        finish = [c["finish_reason"] for e in events[:-1] for c in e["choices"]]
        assert finish[-1] == "length"  # all 12 tokens, not an error
    again = await client.post("/generate", json=poison)
    assert again.json() == tgi.json()  # the same u64 seed, the same text
    too_big = {**poison, "parameters": {**poison["parameters"], "seed": 2**64}}
    r = await client.post("/generate", json=too_big)
    assert r.status_code == 422 and r.json()["error_type"] == "validation"


async def test_a_huge_prompt_is_tokenized_off_the_event_loop(
    make_async_client: Any, tiny_bert: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1.9 MB prompt is planned (tokenized, checked) on the tokenizer pool: while its
    plan is held, another stream keeps getting tokens. Counted in tokens, not timed: on
    the event loop, the held plan would block every stream until it gave up."""
    import threading

    from squeezer.backends.sampling import SamplingParams
    from squeezer.tasks.generate import GenerateRequest, GenerateTask, TextDelta
    from squeezer.types import Task

    client = await make_async_client(_settings(tiny_bert, tiny_llama))
    runtime = client._transport.app.state.runtime  # type: ignore[attr-defined]
    model = runtime.registry.get("llama", Task.GENERATE)
    entered, release = threading.Event(), threading.Event()
    released_by_stream: list[bool] = []
    plan = GenerateTask.plan

    def held_plan(self: GenerateTask, request: GenerateRequest, params: SamplingParams) -> Any:
        if request.text_size > 10**6:
            entered.set()
            # On the event loop nothing could release it: the wait would time out.
            released_by_stream.append(release.wait(5))
        return plan(self, request, params)

    monkeypatch.setattr(GenerateTask, "plan", held_plan)
    running = await runtime.generate(
        model, GenerateRequest(prompt="The", max_new_tokens=60, ignore_eos=True), SamplingParams()
    )
    huge = GenerateRequest(prompt="word " * 380_000, max_new_tokens=1, truncate=64)
    big = asyncio.create_task(runtime.generate(model, huge, SamplingParams()))
    while not entered.is_set():
        await asyncio.sleep(0.001)
    while_held = 0
    async for event in running.events:
        if isinstance(event, TextDelta) and not release.is_set():
            while_held += 1
            if while_held == 5:
                release.set()
    assert while_held >= 5
    answer = await big
    assert released_by_stream == [True]
    assert [e async for e in answer.events]


async def test_a_huge_request_gives_its_heap_back_on_the_thread_that_used_it(
    make_async_client: Any, tiny_bert: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1.9 MB prompt, refused or not, and a huge embedding input trim the heap of the
    tokenizer thread they ran on (the soak saw an API process's RSS creep up by
    50-150 MiB per such request without it); a sentence does not pay for a trim."""
    import threading

    from squeezer.backends import heap

    client = await make_async_client(_settings(tiny_bert, tiny_llama))
    trims: list[str] = []
    monkeypatch.setattr(heap, "trim_heap", lambda: trims.append(threading.current_thread().name))
    r = await client.post("/generate", json={"inputs": "word " * 380_000})
    assert r.status_code == 422  # longer than the model takes
    r = await client.post(
        "/generate", json={"inputs": "word " * 380_000, "parameters": {"truncate": 16}}
    )
    assert r.status_code == 200
    r = await client.post("/embed", json={"inputs": "word " * 60_000, "truncate": True})
    assert r.status_code == 200
    assert len(trims) == 4  # the two plans, the embedding's prepare and finish
    assert threading.current_thread().name not in trims  # never on the event loop
    trims.clear()
    await client.post("/embed", json={"inputs": "a sentence"})
    await client.post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    assert trims == []


async def test_a_stream_that_waits_past_its_deadline_is_a_504_not_a_broken_200(
    make_async_client: Any, tiny_bert: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--request-timeout covers generation requests waiting for a slot, streamed ones
    too: the first event is awaited before the response starts, so the refusal is a
    504 in the dialect's shape (the soak found them as error events in 200 streams)."""
    import time as clock

    from squeezer.backends.torch_generation import TorchGenerationBackend

    step = TorchGenerationBackend.step

    def slow(self: TorchGenerationBackend, chunks: Any, tokens: Any) -> Any:
        clock.sleep(0.02)  # one slot held for seconds by the first request
        return step(self, chunks, tokens)

    monkeypatch.setattr(TorchGenerationBackend, "step", slow)
    client = await make_async_client(
        _settings(tiny_bert, tiny_llama, max_num_seqs=1, request_timeout=0.3)
    )
    hog = asyncio.create_task(
        client.post(
            "/generate",
            json={"inputs": "The", "parameters": {"max_new_tokens": 200}, "stream": False},
        )
    )
    await asyncio.sleep(0.1)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    r = await client.post("/v1/chat/completions", json=chat)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "timeout_error"
    tgi = await client.post("/generate_stream", json={"inputs": "The"})
    assert tgi.status_code == 504 and tgi.json()["error_type"] == "overloaded"  # TGI's word
    hog.cancel()
