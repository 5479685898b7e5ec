"""The OpenAI and vLLM sampling fields and prompt logprobs, over HTTP, in-process.

Each field against a reference written here: prompt logprobs against the model's own
``forward``; ``logit_bias`` forcing a token; stop token ids; seeded requests with
every field set, alone and in a crowd. The loglikelihood call as lm-eval's
``local-completions`` sends it is here too; ``tests/e2e/test_lm_eval.py`` runs the
harness itself.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import transformers

from tests.integration.test_generation_routes import _events

CONTEXT = "Functions are objects that"
CONTINUATION = " may be passed around"
#: Prompt logprobs are compared with ``forward``'s log-softmax: the same float32
#: model on the same CPU, batched differently.
TOL = 1e-4


@pytest.fixture
def client(llama_client: httpx.AsyncClient) -> httpx.AsyncClient:
    return llama_client


@pytest.fixture(scope="module")
def reference(tiny_llama: Path) -> tuple[Any, Any]:
    tok = transformers.AutoTokenizer.from_pretrained(tiny_llama)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    return tok, model


def _forward_logprobs(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


@pytest.fixture(scope="module")
def context(reference: tuple[Any, Any]) -> tuple[list[int], torch.Tensor]:
    """CONTEXT's token ids and ``forward``'s log-softmax at each of its positions."""
    tok, model = reference
    ids = tok(CONTEXT).input_ids
    return ids, _forward_logprobs(model, ids)


async def _complete(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/v1/completions", json={"model": "llama", **body})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


# -- prompt logprobs ----------------------------------------------------------------


async def test_echo_with_logprobs_scores_the_prompt_as_forward_does(
    client: httpx.AsyncClient, reference: tuple[Any, Any]
) -> None:
    tok, model = reference
    ids = tok(CONTEXT + CONTINUATION).input_ids
    want = _forward_logprobs(model, ids)
    out = await _complete(
        client, prompt=CONTEXT + CONTINUATION, echo=True, logprobs=3, max_tokens=2, temperature=0
    )
    choice = out["choices"][0]
    lp = choice["logprobs"]
    n = len(ids)
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == n + 2
    assert lp["tokens"][:n] == [tok.decode([i]) for i in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for position in range(1, n):
        expected = want[position - 1]
        assert lp["token_logprobs"][position] == pytest.approx(
            float(expected[ids[position]]), abs=TOL
        )
        top = lp["top_logprobs"][position]
        best = [tok.decode([int(i)]) for i in expected.topk(3).indices]
        assert set(best) <= set(top) and lp["tokens"][position] in top
    # The generated tokens follow, greedy: the most likely after the whole prompt.
    assert lp["token_logprobs"][n] == pytest.approx(float(want[-1].max()), abs=TOL)
    assert choice["text"].startswith(CONTEXT + CONTINUATION)
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    assert out["usage"]["prompt_tokens"] == n and out["usage"]["completion_tokens"] == 2


async def test_lm_evals_loglikelihood_call_on_token_ids(
    client: httpx.AsyncClient, reference: tuple[Any, Any]
) -> None:
    """What lm-eval's local-completions sends for loglikelihood: token-id prompts in a
    batch, max_tokens 1, logprobs 1, echo; it reads token_logprobs[ctxlen:-1]."""
    tok, model = reference
    pairs = [(CONTEXT, CONTINUATION), ("The", " class statement"), ("If the", " x")]
    prompts, ctxlens, want = [], [], []
    for context, continuation in pairs:
        ctx = tok(context).input_ids
        whole = ctx + tok(continuation, add_special_tokens=False).input_ids
        logprobs = _forward_logprobs(model, whole)
        targets = torch.tensor(whole[len(ctx) :])
        chosen = logprobs[len(ctx) - 1 : -1].gather(1, targets.unsqueeze(1)).squeeze(1)
        greedy = bool((logprobs[len(ctx) - 1 : -1].argmax(-1) == targets).all())
        prompts.append(whole)
        ctxlens.append(len(ctx))
        want.append((float(chosen.sum()), greedy))
    body = {"prompt": prompts, "max_tokens": 1, "logprobs": 1, "echo": True, "temperature": 0}
    out = await _complete(client, seed=1234, **body)
    for choice, ctxlen, (loglikelihood, greedy) in zip(
        sorted(out["choices"], key=lambda c: c["index"]), ctxlens, want, strict=True
    ):
        lp = choice["logprobs"]
        got = sum(lp["token_logprobs"][ctxlen:-1])
        assert got == pytest.approx(loglikelihood, abs=1e-3)
        is_greedy = all(
            t == max(top.values())
            for t, top in zip(
                lp["token_logprobs"][ctxlen:-1], lp["top_logprobs"][ctxlen:-1], strict=True
            )
        )
        assert is_greedy == greedy
    # max_tokens 0: the prompt alone, nothing generated.
    only = await _complete(client, **{**body, "max_tokens": 0})
    for choice, prompt in zip(only["choices"], prompts, strict=True):
        assert len(choice["logprobs"]["token_logprobs"]) == len(prompt)
        assert choice["text"] == tok.decode(prompt, skip_special_tokens=True)
        assert choice["finish_reason"] == "length"
    assert only["usage"]["completion_tokens"] == 0


async def test_streamed_echo_carries_the_same_logprobs(client: httpx.AsyncClient) -> None:
    body = {"prompt": CONTEXT, "echo": True, "logprobs": 2, "max_tokens": 3, "temperature": 0}
    whole = (await _complete(client, **body))["choices"][0]
    r = await client.post("/v1/completions", json={"model": "llama", **body, "stream": True})
    chunks = [c for c in _events(r.content)[:-1] if c["choices"]]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    token_logprobs = [
        x
        for c in chunks
        if c["choices"][0]["logprobs"]
        for x in c["choices"][0]["logprobs"]["token_logprobs"]
    ]
    assert text == whole["text"]
    assert token_logprobs == whole["logprobs"]["token_logprobs"]
    only = {**body, "max_tokens": 0, "stream": True}
    r = await client.post("/v1/completions", json={"model": "llama", **only})
    chunks = [c for c in _events(r.content)[:-1] if c["choices"]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == CONTEXT
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_vllms_prompt_logprobs_field_in_completions_and_chat(
    client: httpx.AsyncClient, reference: tuple[Any, Any], context: tuple[list[int], torch.Tensor]
) -> None:
    tok = reference[0]
    ids, want = context
    out = await _complete(client, prompt=CONTEXT, max_tokens=1, prompt_logprobs=2)
    scored = out["choices"][0]["prompt_logprobs"]
    assert len(scored) == len(ids) and scored[0] is None
    for position in range(1, len(ids)):
        expected = want[position - 1]
        own = scored[position][str(ids[position])]
        assert own["logprob"] == pytest.approx(float(expected[ids[position]]), abs=TOL)
        assert own["rank"] == int((expected > expected[ids[position]]).sum()) + 1
        assert own["decoded_token"] == tok.decode([ids[position]])
        best = expected.topk(2).indices.tolist()
        assert {str(i) for i in best} <= set(scored[position])
        assert [scored[position][str(i)]["rank"] for i in best] == [1, 2]
    # With echo and logprobs 1 as well: each output keeps its own number of alternatives.
    both = await _complete(
        client, prompt=CONTEXT, max_tokens=1, prompt_logprobs=2, echo=True, logprobs=0
    )
    assert both["choices"][0]["prompt_logprobs"] == scored
    assert all(len(top) == 1 for top in both["choices"][0]["logprobs"]["top_logprobs"][1:])
    messages = [{"role": "user", "content": "hi"}]
    chat = await client.post(
        "/v1/chat/completions", json={"messages": messages, "prompt_logprobs": 0, "max_tokens": 2}
    )
    assert chat.status_code == 200, chat.text
    chat_scored = chat.json()["prompt_logprobs"]
    assert chat_scored[0] is None and all(len(p) == 1 for p in chat_scored[1:])
    streamed = await client.post(
        "/v1/chat/completions",
        json={"messages": messages, "prompt_logprobs": 0, "stream": True},
    )
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "prompt_logprobs"


# -- sampling fields ----------------------------------------------------------------


async def test_logit_bias_forces_and_forbids_tokens(
    client: httpx.AsyncClient, reference: tuple[Any, Any]
) -> None:
    tok, _ = reference
    b = tok.convert_tokens_to_ids("b")
    plain = await _complete(client, prompt=CONTEXT, max_tokens=1, temperature=0, logprobs=0)
    first = plain["choices"][0]["logprobs"]["tokens"][0]
    forced = await _complete(
        client, prompt=CONTEXT, max_tokens=4, temperature=0, logit_bias={str(b): 100}
    )
    assert forced["choices"][0]["text"] == "bbbb"
    banned = {str(tok.convert_tokens_to_ids(tok.tokenize(first)[0])): -100}
    other = await _complete(
        client, prompt=CONTEXT, max_tokens=1, temperature=0, logit_bias=banned, logprobs=0
    )
    assert other["choices"][0]["logprobs"]["tokens"][0] != first
    chat = await client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "temperature": 0,
            "logit_bias": {str(b): 100},
        },
    )
    assert chat.json()["choices"][0]["message"]["content"] == "bbb"


async def test_a_stop_token_id_ends_the_text_and_is_its_stop_reason(
    client: httpx.AsyncClient, reference: tuple[Any, Any]
) -> None:
    b = reference[0].convert_tokens_to_ids("b")
    body = {"prompt": CONTEXT, "max_tokens": 8, "temperature": 0, "logit_bias": {str(b): 100}}
    out = await _complete(client, **body, stop_token_ids=[b])
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == b
    assert choice["text"] == "" and out["usage"]["completion_tokens"] == 1
    kept = await _complete(client, **body, stop_token_ids=[b], include_stop_str_in_output=True)
    assert kept["choices"][0]["text"] == "b"
    # min_tokens holds stop tokens back as it holds EOS back.
    late = await _complete(client, **body, stop_token_ids=[b], min_tokens=3)
    assert late["usage"]["completion_tokens"] == 4


async def test_special_tokens_show_when_not_skipped(
    client: httpx.AsyncClient, reference: tuple[Any, Any]
) -> None:
    eos = {str(reference[0].eos_token_id): 100}  # "</s>", forced as the first token
    body = {"prompt": CONTEXT, "max_tokens": 3, "temperature": 0, "logit_bias": eos}
    out = await _complete(client, **body)
    assert out["choices"][0]["text"] == "" and out["choices"][0]["finish_reason"] == "stop"
    shown = await _complete(
        client, **body, skip_special_tokens=False, include_stop_str_in_output=True
    )
    assert shown["choices"][0]["text"] == "</s>"
    ignored = await _complete(client, **body, ignore_eos=True, skip_special_tokens=False)
    assert ignored["choices"][0]["text"] == "</s>" * 3  # ignored: text like any other


async def test_every_field_set_is_reproducible_alone_and_in_a_crowd(
    client: httpx.AsyncClient,
) -> None:
    body = {
        "prompt": CONTEXT,
        "max_tokens": 12,
        "seed": 42,
        "temperature": 0.9,
        "top_p": 0.95,
        "top_k": 40,
        "min_p": 0.02,
        "presence_penalty": 0.6,
        "frequency_penalty": 0.4,
        "repetition_penalty": 1.1,
        "logit_bias": {"70": 2.5, "71": -3},
        "ignore_eos": True,
        "logprobs": 2,
    }
    alone = await _complete(client, **body)
    others = [
        _complete(client, prompt=f"{CONTEXT} {i}", max_tokens=12, seed=i, ignore_eos=True)
        for i in range(5)
    ]
    crowd = await asyncio.gather(_complete(client, **body), *others)
    assert crowd[0]["choices"][0]["text"] == alone["choices"][0]["text"]
    assert crowd[0]["choices"][0]["logprobs"] == alone["choices"][0]["logprobs"]
    plain = await _complete(client, **{**body, "presence_penalty": 0, "frequency_penalty": 0})
    assert plain["choices"][0]["text"] != alone["choices"][0]["text"]


async def test_logprobs_never_serialize_as_null_under_filters(client: httpx.AsyncClient) -> None:
    body = {"prompt": CONTEXT, "max_tokens": 6, "seed": 3, "top_k": 1, "logprobs": 5}
    lp = (await _complete(client, **body))["choices"][0]["logprobs"]
    assert all(isinstance(x, float) for x in lp["token_logprobs"])
    assert all(len(top) >= 2 and None not in top.values() for top in lp["top_logprobs"])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"logit_bias": {"1000000": 1}}, None),
        ({"logit_bias": {"5": 101}}, None),
        ({"min_p": 1.5}, "min_p"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"prompt_logprobs": 21}, "prompt_logprobs"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"logprobs": 21, "echo": True}, "logprobs"),
    ],
)
async def test_bad_sampling_fields_are_400s_naming_them(
    client: httpx.AsyncClient, body: dict[str, Any], param: str | None
) -> None:
    r = await client.post("/v1/completions", json={"prompt": CONTEXT, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    if param is not None:
        assert error["param"] == param, error
    else:
        assert "logit_bias" in error["message"]


async def test_tgi_decoder_input_details_score_the_prefill(
    client: httpx.AsyncClient, context: tuple[list[int], torch.Tensor]
) -> None:
    ids, want = context
    params = {"details": True, "decoder_input_details": True, "max_new_tokens": 2}
    r = await client.post("/generate", json={"inputs": CONTEXT, "parameters": params})
    assert r.status_code == 200, r.text
    prefill = r.json()["details"]["prefill"]
    assert [t["id"] for t in prefill] == ids and prefill[0]["logprob"] is None
    for position in range(1, len(ids)):
        assert prefill[position]["logprob"] == pytest.approx(
            float(want[position - 1, ids[position]]), abs=TOL
        )
    stream = await client.post("/generate_stream", json={"inputs": CONTEXT, "parameters": params})
    assert stream.status_code == 422 and "decoder_input_details" in stream.json()["error"]
