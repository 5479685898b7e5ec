"""Tool calls out of model text, in the formats chat templates teach, and the grammar
that forces one: every text the grammar allows parses back into a call."""

from __future__ import annotations

import json
from pathlib import Path

import llguidance.hf
import transformers
from llguidance import LLMatcher

from squeezer.tasks.tool_calls import ToolFormat, ToolStream, forced, parse

NAMES = {"get_weather", "add"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
    },
}


def test_formats_are_read_off_the_template() -> None:
    assert ToolFormat.detect("... <tool_call> ...") is ToolFormat.HERMES
    assert ToolFormat.detect("{{ '<|python_tag|>' }} Environment: ipython") is (
        ToolFormat.LLAMA3_JSON
    )
    assert ToolFormat.detect(None) is ToolFormat.HERMES


def test_hermes_blocks_parse_with_the_text_before_them() -> None:
    text = (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
        '</tool_call>\n<tool_call>{"name": "add", "arguments": "{\\"a\\": 2}"}</tool_call>'
    )
    content, calls = parse(ToolFormat.HERMES, text, NAMES)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("add", {"a": 2}),
    ]
    assert calls[0].id.startswith("call_") and calls[0].id != calls[1].id
    # Unknown names, broken JSON, or no block at all: the text is content.
    assert parse(ToolFormat.HERMES, '<tool_call>{"name": "nope"}</tool_call>', NAMES)[1] == []
    assert parse(ToolFormat.HERMES, "<tool_call>{broken", NAMES) == ("<tool_call>{broken", [])
    assert parse(ToolFormat.HERMES, "just text", NAMES) == ("just text", [])
    # A block the model did not close (EOS came first) still parses.
    unclosed = '<tool_call>\n{"name": "add", "arguments": {"a": 1}}'
    assert [c.name for c in parse(ToolFormat.HERMES, unclosed, NAMES)[1]] == ["add"]


def test_llama3_json_calls_parse() -> None:
    one = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    content, calls = parse(ToolFormat.LLAMA3_JSON, one, NAMES)
    assert content is None and json.loads(calls[0].arguments) == {"city": "Paris"}
    call = '{{"name": "add", "parameters": {{"a": {}}}}}'
    two = f"<|python_tag|>{call.format(1)}; {call.format(2)}"
    assert [json.loads(c.arguments)["a"] for c in parse(ToolFormat.LLAMA3_JSON, two, NAMES)[1]] == [
        1,
        2,
    ]
    assert parse(ToolFormat.LLAMA3_JSON, '{"answer": 42}', NAMES) == ('{"answer": 42}', [])


def test_a_stream_lets_text_through_until_a_call_may_begin() -> None:
    stream = ToolStream(ToolFormat.HERMES, NAMES)
    sent = [
        stream.push(d)
        for d in [
            "Sure",
            ", checking <tool",
            '_call>\n{"name": "add", ',
            '"arguments": {"a": 3}}\n</tool_call>',
        ]
    ]
    assert "".join(sent) == "Sure, checking "
    tail, calls = stream.finish()
    assert tail == "" and [c.name for c in calls] == ["add"]
    plain = ToolStream(ToolFormat.HERMES, NAMES)
    assert "".join(plain.push(d) for d in ["a <to", "o> b"]) + plain.finish()[0] == "a <too> b"
    llama = ToolStream(ToolFormat.LLAMA3_JSON, NAMES)
    assert llama.push(" Hello") == " Hello" and llama.finish() == ("", [])
    held = ToolStream(ToolFormat.LLAMA3_JSON, NAMES)
    assert held.push('{"name": "add", "parameters": {}}') == ""
    assert [c.name for c in held.finish()[1]] == ["add"]


def test_forced_grammars_accept_calls_and_nothing_else(tiny_llama: Path) -> None:
    """Texts run through a matcher of each forced grammar: a call of an allowed tool
    with valid arguments is accepted whole; anything else is refused on the way."""
    hf = transformers.AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer = llguidance.hf.from_tokenizer(hf)

    def accepts(grammar: str, text: str) -> bool:
        matcher = LLMatcher(tokenizer, grammar, log_level=0)
        tokens = hf(text, add_special_tokens=False).input_ids
        return matcher.consume_tokens(tokens) and matcher.is_accepting()

    weather = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    add = '{"name": "add", "arguments": {"a": 2}}'
    required = forced(ToolFormat.HERMES, [WEATHER, ADD], None, parallel=True).grammar()
    assert accepts(required, f"<tool_call>\n{weather}\n</tool_call>")
    assert accepts(
        required, f"<tool_call>\n{weather}\n</tool_call>\n<tool_call>\n{add}\n</tool_call>"
    )
    assert not accepts(required, "I will not call anything.")
    assert not accepts(
        required, '<tool_call>\n{"name": "add", "arguments": {"a": "x"}}\n</tool_call>'
    )
    named = forced(ToolFormat.HERMES, [WEATHER, ADD], "add", parallel=False).grammar()
    assert accepts(named, f"<tool_call>\n{add}\n</tool_call>")
    assert not accepts(named, f"<tool_call>\n{weather}\n</tool_call>")
    llama = forced(ToolFormat.LLAMA3_JSON, [WEATHER, ADD], "get_weather", parallel=False)
    assert accepts(llama.grammar(), '{"name": "get_weather", "parameters": {"city": "Oslo"}}')
    assert not accepts(llama.grammar(), weather)  # Llama's calls say "parameters"
