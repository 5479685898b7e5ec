"""Function calling: tool calls parsed out of a chat model's text, in the formats
chat templates teach, and the grammar that forces one when a request requires it.

The tools reach the model through its chat template (``apply_chat_template(tools=)``);
what comes back is text, in the format that template asked for:

- ``hermes`` (Hermes, Qwen 2/2.5/3, SmolLM3 and most templates with tools):
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call;
- ``llama3_json`` (Llama 3.1+ "JSON based tool calling"): the whole answer is
  ``{"name": ..., "parameters": {...}}`` (after an optional ``<|python_tag|>``),
  several calls separated by ``;``.

The format is read off the template (``detect``), as vLLM's ``--tool-call-parser``
would be set for it. With ``tool_choice`` ``required`` or a named function, the
output is constrained to the format's call syntax with each tool's parameter schema,
so the call always parses.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from squeezer.backends.constraints import JSON_OPTIONS, Constraint

_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"
_HERMES_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


class ToolFormat(str, Enum):
    HERMES = "hermes"
    LLAMA3_JSON = "llama3_json"

    @classmethod
    def detect(cls, chat_template: str | None) -> ToolFormat:
        """The format a chat template teaches: Llama 3's when it speaks of
        ``parameters`` and its python tag or ipython environment, else Hermes'."""
        template = chat_template or ""
        if _HERMES_OPEN in template:
            return cls.HERMES
        if "python_tag" in template or "ipython" in template:
            return cls.LLAMA3_JSON
        return cls.HERMES


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    #: The arguments as JSON text (what OpenAI's ``function.arguments`` carries).
    arguments: str
    id: str = ""

    def openai(self, index: int) -> dict[str, Any]:
        return {
            "index": index,
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def _call(obj: Any, names: set[str], arguments_key: str) -> ToolCall | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    arguments = obj.get(arguments_key, obj.get("arguments", {}))
    if isinstance(arguments, str):  # some models write them as JSON text already
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    return ToolCall(obj["name"], json.dumps(arguments), f"call_{uuid.uuid4().hex[:24]}")


def parse(fmt: ToolFormat, text: str, names: set[str]) -> tuple[str | None, list[ToolCall]]:
    """(content, calls): the text before the calls, and every call that parses and
    names a tool of the request. A text without one is content alone."""
    if fmt is ToolFormat.HERMES:
        start = text.find(_HERMES_OPEN)
        if start < 0:
            return text, []
        calls = []
        for block in _HERMES_BLOCK.findall(text[start:]):
            try:
                call = _call(json.loads(block), names, "arguments")
            except json.JSONDecodeError:
                call = None
            if call is not None:
                calls.append(call)
        if not calls:
            return text, []
        return text[:start].strip() or None, calls
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG) :].strip()
    if not body.startswith("{"):
        return text, []
    calls = []
    for part in _split_objects(body):
        try:
            call = _call(json.loads(part), names, "parameters")
        except json.JSONDecodeError:
            return text, []
        if call is None:
            return text, []
        calls.append(call)
    return (None, calls) if calls else (text, [])


def _split_objects(body: str) -> list[str]:
    """``{...}; {...}`` as its objects (braces counted outside strings)."""
    parts, depth, start, in_string, escaped = [], 0, 0, False, False
    for i, ch in enumerate(body):
        if in_string:
            escaped = ch == "\\" and not escaped
            if ch == '"' and not escaped:
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
            if depth == 1:
                start = i
        elif ch == "}":
            depth -= 1
            if depth == 0:
                parts.append(body[start : i + 1])
    return parts


class ToolStream:
    """Content of a streamed answer that may turn into tool calls: text is let through
    until it may be a call, then held until the end, when ``finish`` parses it."""

    def __init__(self, fmt: ToolFormat, names: set[str]) -> None:
        self.fmt, self.names = fmt, names
        self._text: list[str] = []
        self._sent = 0  # characters of the text already let through
        self._holding = False

    def push(self, delta: str) -> str:
        """The part of ``delta`` that is content for sure."""
        self._text.append(delta)
        if self._holding:
            return ""
        text = "".join(self._text)
        if self.fmt is ToolFormat.HERMES:
            at = text.find(_HERMES_OPEN, self._sent)
            if at >= 0:
                self._holding = True
                out, self._sent = text[self._sent : at], at
                return out
            keep = _partial_suffix(text, _HERMES_OPEN)  # may be the marker's start
            out, self._sent = text[self._sent : len(text) - keep], len(text) - keep
            return out
        stripped = text.lstrip()
        if stripped.startswith(("{", _PYTHON_TAG)):  # the answer is calls, or JSON
            self._holding = True
            return ""
        if not stripped or _PYTHON_TAG.startswith(stripped):  # too early to tell
            return ""
        out, self._sent = text[self._sent :], len(text)
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(content not let through yet, the calls)."""
        rest = "".join(self._text)[self._sent :]
        content, calls = parse(self.fmt, rest, self.names)
        return ((content or ""), calls) if calls else (rest, [])


def _partial_suffix(text: str, marker: str) -> int:
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def _call_schema(tool: dict[str, Any], arguments_key: str) -> dict[str, Any]:
    function = tool.get("function", tool)
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, arguments_key: parameters},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def forced(
    fmt: ToolFormat, tools: Sequence[dict[str, Any]], name: str | None, *, parallel: bool
) -> Constraint:
    """A grammar whose every text is one call (or several, with ``parallel``) of
    ``name``, or of any tool when ``name`` is None (``tool_choice: required``)."""
    chosen = [t for t in tools if name is None or t.get("function", t).get("name") == name]
    key = "arguments" if fmt is ToolFormat.HERMES else "parameters"
    schema = {"anyOf": [_call_schema(t, key) for t in chosen], "x-guidance": JSON_OPTIONS}
    if fmt is ToolFormat.HERMES:
        call = f'"{_HERMES_OPEN}\\n" body "\\n{_HERMES_CLOSE}"'
        more = ' ("\\n" call)*' if parallel else ""
        lark = f"start: call{more}\ncall: {call}\nbody: %json {json.dumps(schema)}"
        return Constraint("grammar", lark)
    if parallel:
        lark = f'start: body ("; " body)*\nbody: %json {json.dumps(schema)}'
        return Constraint("grammar", lark)
    return Constraint.json_schema(schema)
