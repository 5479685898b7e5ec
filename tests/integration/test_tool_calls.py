"""Tool calls over HTTP, in-process, on a tiny random Llama whose chat template takes
tools (Hermes' format): tools reach the template as ``transformers`` renders them,
``required`` and named calls always parse and validate, ``auto`` finds calls in the
text, streams send ``tool_calls`` deltas, and a second turn renders the call and its
result back through the template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import transformers

from squeezer.config import ModelSettings, Settings
from tests.integration.test_generation_routes import _events

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["a"],
            "additionalProperties": False,
        },
    },
}
MESSAGES = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.fixture
async def client(
    make_async_client: Any, tiny_tool_llama: Path, tiny_llama: Path
) -> httpx.AsyncClient:
    settings = Settings(
        models=[
            ModelSettings(name="tools", path=str(tiny_tool_llama)),
            ModelSettings(name="plain", path=str(tiny_llama)),
        ],
        max_total_tokens=1024,
        max_num_seqs=8,
    )
    c: httpx.AsyncClient = await make_async_client(settings)
    return c


async def _chat(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body = {"model": "tools", "messages": MESSAGES, "max_tokens": 120, "temperature": 0, **body}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _check_call(call: dict[str, Any], tools: list[dict[str, Any]]) -> None:
    function = {t["function"]["name"]: t["function"] for t in tools}[call["function"]["name"]]
    arguments = json.loads(call["function"]["arguments"])
    assert jsonschema_rs.validator_for(function["parameters"]).is_valid(arguments), arguments
    assert call["type"] == "function" and call["id"].startswith("call_")


async def test_required_and_named_calls_always_parse_and_validate(
    client: httpx.AsyncClient, tiny_tool_llama: Path
) -> None:
    tools = [WEATHER, ADD]
    for sampling in ({"temperature": 0}, {"temperature": 1, "seed": 5}):
        out = await _chat(client, tools=tools, tool_choice="required", **sampling)
        choice = out["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None and choice["message"]["tool_calls"]
        for call in choice["message"]["tool_calls"]:
            _check_call(call, tools)
    named = {"type": "function", "function": {"name": "add"}}
    out = await _chat(client, tools=tools, tool_choice=named, temperature=1, seed=2)
    (call,) = out["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "add"
    _check_call(call, tools)
    # The tools reached the template as transformers renders them.
    tok = transformers.AutoTokenizer.from_pretrained(tiny_tool_llama)
    text = tok.apply_chat_template(
        MESSAGES, tools=tools, tokenize=False, add_generation_prompt=True
    )
    assert '"get_weather"' in text and '"add"' in text
    assert out["usage"]["prompt_tokens"] == len(tok(text, add_special_tokens=False).input_ids)


async def test_a_two_turn_round_trip_renders_the_call_and_its_result(
    client: httpx.AsyncClient, tiny_tool_llama: Path
) -> None:
    first = await _chat(client, tools=[WEATHER], tool_choice="required")
    call = first["choices"][0]["message"]["tool_calls"][0]
    history = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21 C"},
    ]
    second = await _chat(client, messages=history, tools=[WEATHER], tool_choice="none")
    assert second["choices"][0]["finish_reason"] in ("stop", "length")
    assert second["choices"][0]["message"]["tool_calls"] == []
    # The template saw the call's arguments as an object, and the tool's answer.
    tok = transformers.AutoTokenizer.from_pretrained(tiny_tool_llama)
    rendered = [dict(m) for m in history]
    arguments = json.loads(call["function"]["arguments"])
    rendered[1] = {
        **rendered[1],
        "tool_calls": [{**call, "function": {**call["function"], "arguments": arguments}}],
    }
    text = tok.apply_chat_template(
        rendered, tools=[WEATHER], tokenize=False, add_generation_prompt=True
    )
    assert "<tool_response>Sunny, 21 C</tool_response>" in text and '"city"' in text
    assert second["usage"]["prompt_tokens"] == len(tok(text, add_special_tokens=False).input_ids)


async def test_auto_finds_a_call_in_the_text_and_streams_it_as_a_delta(
    client: httpx.AsyncClient,
) -> None:
    """The random model never calls on its own, so a regex makes it write a call
    as text; ``auto`` must find it, whole and streamed."""
    call = '{"name": "get_weather", "arguments": {"city": "Lima", "days": 2}}'
    text = f"<tool_call>\n{call}\n</tool_call>"
    regex = "Checking\\. " + "".join(f"\\{c}" if c in "{}()[].*+?|^$\\" else c for c in text)
    body = {"tools": [WEATHER], "structured_outputs": {"regex": regex}}
    out = await _chat(client, **body)
    message = out["choices"][0]["message"]
    assert message["content"] == "Checking."
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather"]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {
        "city": "Lima",
        "days": 2,
    }
    assert out["choices"][0]["finish_reason"] == "tool_calls"

    r = await client.post(
        "/v1/chat/completions",
        json={"model": "tools", "messages": MESSAGES, "temperature": 0, "stream": True, **body},
    )
    chunks = [c for c in _events(r.content)[:-1] if c["choices"]]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert content == "Checking. "  # nothing of the call leaked into the content
    assert [d["function"]["name"] for d in deltas] == ["get_weather"] and deltas[0]["index"] == 0
    assert json.loads(deltas[0]["function"]["arguments"]) == {"city": "Lima", "days": 2}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # A forced call streams the same way.
    forced = await client.post(
        "/v1/chat/completions",
        json={
            "model": "tools",
            "messages": MESSAGES,
            "stream": True,
            "tools": [ADD],
            "tool_choice": "required",
            "max_tokens": 120,
        },
    )
    chunks = [c for c in _events(forced.content)[:-1] if c["choices"]]
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert deltas and all(d["function"]["name"] == "add" for d in deltas)


async def test_text_without_a_call_stays_content(client: httpx.AsyncClient) -> None:
    out = await _chat(client, tools=[WEATHER], max_tokens=8)
    message = out["choices"][0]["message"]
    assert message["tool_calls"] == [] and isinstance(message["content"], str)
    assert out["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        (
            {
                "tools": [WEATHER],
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            "tool_choice",
        ),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": "plain", "tools": [WEATHER]}, "tools"),
    ],
)
async def test_bad_tool_requests_are_400s(
    client: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    r = await client.post(
        "/v1/chat/completions", json={"model": "tools", "messages": MESSAGES, **body}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text
