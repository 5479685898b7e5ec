"""Structured outputs over HTTP, in-process, on a tiny random Llama: whatever the
(random) model wants, every constrained output parses and validates against its
schema, regex, choice list or grammar, in every dialect's field; an unconstrained
stream is unchanged by a constrained neighbour; greedy output that already satisfies
a constraint is unchanged by it."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import transformers

from tests.integration.test_generation_routes import _events

PROMPT = "Functions are objects"
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
#: [0-9], not \d: the engine's \d is Unicode's (as Rust's regex), Python's knows fewer.
PHONE = r"[0-9]{3}-[0-9]{4}"
CHOICES = ["positive", "negative", "neutral"]
LARK = 'start: "yes" | "no" | NUMBER\nNUMBER: /[0-9]{1,3}/'
GBNF = 'root ::= "(" [a-c]+ ")"'


@pytest.fixture
def client(llama_client: httpx.AsyncClient) -> httpx.AsyncClient:
    return llama_client


async def _complete(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body = {"model": "llama", "prompt": PROMPT, "max_tokens": 80, "temperature": 0, **body}
    r = await client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _valid_json(text: str, schema: dict[str, Any]) -> bool:
    return bool(jsonschema_rs.validator_for(schema).is_valid(json.loads(text)))


def _object(text: str) -> bool:
    return isinstance(json.loads(text), dict)


@pytest.mark.parametrize(
    ("fields", "check"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "p", "schema": SCHEMA, "strict": True},
                }
            },
            lambda t: _valid_json(t, SCHEMA),
        ),
        ({"response_format": {"type": "json_object"}}, _object),
        (
            {"response_format": {"type": "json", "value": SCHEMA}},
            lambda t: _valid_json(t, SCHEMA),
        ),
        (
            {"response_format": {"type": "regex", "value": PHONE}},
            lambda t: re.fullmatch(PHONE, t),
        ),
        ({"structured_outputs": {"json": SCHEMA}}, lambda t: _valid_json(t, SCHEMA)),
        ({"structured_outputs": {"regex": PHONE}}, lambda t: re.fullmatch(PHONE, t)),
        ({"structured_outputs": {"choice": CHOICES}}, lambda t: t in CHOICES),
        (
            {"structured_outputs": {"grammar": LARK}},
            lambda t: re.fullmatch(r"yes|no|[0-9]{1,3}", t),
        ),
        ({"structured_outputs": {"grammar": GBNF}}, lambda t: re.fullmatch(r"\([a-c]+\)", t)),
        ({"structured_outputs": {"json_object": True}}, _object),
        ({"guided_json": json.dumps(SCHEMA)}, lambda t: _valid_json(t, SCHEMA)),
        ({"guided_regex": PHONE}, lambda t: re.fullmatch(PHONE, t)),
        ({"guided_choice": CHOICES}, lambda t: t in CHOICES),
        ({"guided_grammar": GBNF}, lambda t: re.fullmatch(r"\([a-c]+\)", t)),
    ],
)
async def test_every_constrained_completion_matches_its_constraint(
    client: httpx.AsyncClient, fields: dict[str, Any], check: Any
) -> None:
    """Any JSON object (``_object``) has unbounded keys and strings: the random model
    may still be inside one at max_tokens. Every other constraint here is bounded and
    must end the text itself."""
    # Greedy and two seeds: the random model wants something else each time.
    for sampling in (
        {"temperature": 0},
        {"temperature": 1, "seed": 1},
        {"temperature": 1, "seed": 2},
    ):
        out = await _complete(client, **fields, **sampling)
        choice = out["choices"][0]
        if check is _object and choice["finish_reason"] == "length":
            assert choice["text"].startswith("{")
            continue
        assert choice["finish_reason"] == "stop", choice  # the grammar ended it
        assert check(choice["text"]), choice["text"]


async def test_min_tokens_never_pushes_a_text_past_its_grammar(
    client: httpx.AsyncClient,
) -> None:
    out = await _complete(client, guided_choice=CHOICES, min_tokens=6, max_tokens=10)
    assert out["choices"][0]["text"] in CHOICES


async def test_chat_and_streams_are_constrained_too(client: httpx.AsyncClient) -> None:
    messages = [{"role": "user", "content": "Describe a person."}]
    response_format = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    body = {
        "messages": messages,
        "max_tokens": 80,
        "temperature": 0,
        "response_format": response_format,
    }
    whole = (await client.post("/v1/chat/completions", json=body)).json()
    content = whole["choices"][0]["message"]["content"]
    assert _valid_json(content, SCHEMA)
    r = await client.post("/v1/chat/completions", json={**body, "stream": True})
    chunks = [c for c in _events(r.content)[:-1] if c["choices"]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == content


async def test_tgi_grammar_on_generate_and_generate_stream(client: httpx.AsyncClient) -> None:
    for grammar, check in [
        ({"type": "json", "value": SCHEMA}, lambda t: _valid_json(t, SCHEMA)),
        ({"type": "json", "value": json.dumps(SCHEMA)}, lambda t: _valid_json(t, SCHEMA)),
        ({"type": "regex", "value": PHONE}, lambda t: re.fullmatch(PHONE, t)),
    ]:
        params = {"grammar": grammar, "max_new_tokens": 80, "details": True}
        r = await client.post("/generate", json={"inputs": PROMPT, "parameters": params})
        assert r.status_code == 200, r.text
        text = r.json()["generated_text"]
        assert check(text), text
        assert r.json()["details"]["finish_reason"] == "eos_token"
        stream = await client.post(
            "/generate_stream", json={"inputs": PROMPT, "parameters": params}
        )
        events = _events(stream.content)
        assert events[-1]["generated_text"] == text


async def test_greedy_output_that_already_satisfies_a_constraint_is_unchanged(
    client: httpx.AsyncClient, tiny_llama: Path
) -> None:
    """The random model's greedy text is bytes, not text; a logit bias on the letters
    a-z (the same in both runs) makes it choose among them by its own logits. Under a
    regex that letters satisfy, every token it picks stays allowed, so not one changes,
    nor its logprob."""
    tok = transformers.AutoTokenizer.from_pretrained(tiny_llama)
    letters = {str(tok.convert_tokens_to_ids(c)): 30 for c in "abcdefghijklmnopqrstuvwxyz"}
    body = {"max_tokens": 12, "ignore_eos": True, "logprobs": 0, "logit_bias": letters}
    plain = (await _complete(client, **body))["choices"][0]
    assert re.fullmatch("[a-z]{12}", plain["text"]), plain["text"]
    constrained = (await _complete(client, **body, guided_regex="[a-z ]{0,40}"))["choices"][0]
    assert constrained["logprobs"]["tokens"] == plain["logprobs"]["tokens"]
    assert constrained["logprobs"]["token_logprobs"] == plain["logprobs"]["token_logprobs"]


async def test_an_unconstrained_stream_is_the_same_beside_constrained_ones(
    client: httpx.AsyncClient,
) -> None:
    body = {"max_tokens": 24, "temperature": 1, "seed": 11, "ignore_eos": True}
    alone = (await _complete(client, **body))["choices"][0]["text"]
    crowd = await asyncio.gather(
        _complete(client, **body),
        _complete(client, guided_json=SCHEMA),
        _complete(client, guided_regex=PHONE, temperature=1, seed=3),
        _complete(client, guided_choice=CHOICES),
    )
    assert crowd[0]["choices"][0]["text"] == alone
    assert _valid_json(crowd[1]["choices"][0]["text"], SCHEMA)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"guided_regex": "("}, "guided_regex"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_json": "not json"}, "guided_json"),
        ({"guided_grammar": "root ::= ("}, "guided_grammar"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
        ({"structured_outputs": {"structural_tag": "x"}}, "structured_outputs"),
        ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_regex"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}},
            "response_format",
        ),
    ],
)
async def test_bad_constraints_are_400s_naming_the_field(
    client: httpx.AsyncClient, fields: dict[str, Any], param: str
) -> None:
    r = await client.post("/v1/completions", json={"prompt": PROMPT, **fields})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text
    bad = {"grammar": {"type": "regex", "value": "("}}
    tgi = await client.post("/generate", json={"inputs": PROMPT, "parameters": bad})
    assert tgi.status_code == 422 and "grammar" in tgi.json()["error"]
