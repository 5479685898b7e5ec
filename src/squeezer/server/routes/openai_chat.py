"""OpenAI's chat completions: ``/v1/chat/completions``, rendered with the model's chat
template, with structured outputs and tool calls."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from squeezer.backends.constraints import Constraint
from squeezer.errors import InvalidRequestError
from squeezer.server.errors import error_responses
from squeezer.server.jsonio import body_schema, read_json
from squeezer.server.routes import runtime_of
from squeezer.server.routes.openai_text import (
    Api,
    Choice,
    Start,
    check_prompt_logprobs,
    finish,
    finite_logprob,
    generation_model,
    refuse,
    respond,
    sampling,
    text_request,
)
from squeezer.server.schemas import openai as oa
from squeezer.server.schemas.structured import one_constraint
from squeezer.tasks import tool_calls
from squeezer.tasks.generate import GenerateRequest, GenerateTask, TextDelta
from squeezer.tasks.tool_calls import ToolFormat, parse

router = APIRouter(tags=["OpenAI"])
_ERRORS = error_responses("/v1/chat/completions")


def _chat_logprobs(task: GenerateTask, deltas: list[TextDelta]) -> dict[str, Any]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = task.token_text(token)
        return {"token": text, "logprob": finite_logprob(logprob), "bytes": list(text.encode())}

    return {
        "content": [
            {**entry(d.token, d.logprob), "top_logprobs": [entry(i, lp) for i, lp in d.top]}
            for d in deltas
        ]
    }


# -- chat completions --------------------------------------------------------------


def _chat_choice(task: GenerateTask, c: Choice) -> dict[str, Any]:
    content: str | None = "".join(c.text)
    if c.tools is not None:
        content, c.calls = parse(c.tools.fmt, "".join(c.text), c.tools.names)
    calls = [
        {k: v for k, v in call.openai(i).items() if k != "index"} for i, call in enumerate(c.calls)
    ]
    return {
        "index": c.index,
        "message": {"role": "assistant", "content": content, "tool_calls": calls},
        "logprobs": _chat_logprobs(task, c.logprobs) if c.want_logprobs else None,
        **finish(c),
    }


def _chat_delta(task: GenerateTask, c: Choice, d: TextDelta) -> dict[str, Any] | None:
    text = d.text if c.tools is None else c.tools.push(d.text)
    if not text and not c.want_logprobs:
        return None
    return {
        "index": c.index,
        "delta": {"content": text},
        "logprobs": _chat_logprobs(task, [d]) if c.want_logprobs else None,
        "finish_reason": None,
    }


def _chat_ending(task: GenerateTask, c: Choice) -> list[dict[str, Any]]:
    """What a stream held back: text that turned out not to be a call, or the calls,
    each whole in one ``tool_calls`` delta (OpenAI's clients join deltas by index)."""
    if c.tools is None:
        return []
    tail, c.calls = c.tools.finish()
    out = []
    if tail:
        out.append({"index": c.index, "delta": {"content": tail}, "logprobs": None})
    if c.calls:
        calls = [call.openai(i) for i, call in enumerate(c.calls)]
        out.append({"index": c.index, "delta": {"tool_calls": calls}, "logprobs": None})
    return out


_CHAT = Api(
    object="chat.completion",
    id_prefix="chatcmpl",
    choice=_chat_choice,
    delta=_chat_delta,
    opening=lambda c: {
        "index": c.index,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    },
    closing=lambda c: {"index": c.index, "delta": {}, "logprobs": None},
    ending=_chat_ending,
)


def _message(m: oa.ChatMessage) -> dict[str, Any]:
    """A message as chat templates expect it: text parts joined into one string, and
    a tool call's arguments as an object (OpenAI sends them as JSON text; templates
    write them with ``tojson``)."""
    out = m.model_dump(exclude_none=True)
    if isinstance(m.content, list):
        parts = []
        for part in m.content:
            if part.get("type") != "text":
                raise InvalidRequestError(
                    f"message content of type {part.get('type')!r}: this model reads text only",
                    param="messages",
                )
            parts.append(str(part.get("text", "")))
        out["content"] = "".join(parts)
    for call in out.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            with contextlib.suppress(json.JSONDecodeError):
                function["arguments"] = json.loads(function["arguments"])
    return out


def _tools(
    body: oa.ChatCompletionRequest, task: GenerateTask
) -> tuple[
    list[dict[str, Any]] | None, Constraint | None, tuple[ToolFormat, frozenset[str]] | None
]:
    """The tools for the template, the constraint ``tool_choice`` imposes, and what the
    answer is parsed with (None: no tools, or ``tool_choice: none``)."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none", "auto"):
            raise InvalidRequestError("tool_choice needs tools", param="tool_choice")
        return None, None, None
    tools = [t.model_dump(exclude_none=True) for t in body.tools]
    names = frozenset(t.function.name for t in body.tools)
    if choice == "none":
        return tools, None, None
    fmt = task.tool_format
    forced_name = choice.function.name if isinstance(choice, oa.NamedToolChoice) else None
    if forced_name is not None and forced_name not in names:
        raise InvalidRequestError(
            f"tool_choice names {forced_name!r}, which is not among the tools",
            param="tool_choice",
        )
    constraint = None
    if choice == "required" or forced_name is not None:
        parallel = body.parallel_tool_calls is not False and forced_name is None
        constraint = one_constraint(
            {"tool_choice": tool_calls.forced(fmt, tools, forced_name, parallel=parallel)}
        )
    return tools, constraint, (fmt, names)


async def _chat(request: Request, name: str | None) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, oa.ChatCompletionRequest)
    check_prompt_logprobs(body)
    refuse(body.chat_unsupported())
    model = generation_model(runtime, body.model if name is None else name)
    task = model.generator
    assert task is not None
    tools, forced, parsing = _tools(body, task)
    constraint = body.constraint()
    if forced is not None and constraint is not None:
        raise InvalidRequestError(
            "tool_choice forces a tool call; a response format cannot constrain it too",
            param="tool_choice",
        )
    req = text_request(
        GenerateRequest(
            messages=[_message(m) for m in body.messages],
            tools=tools,
            max_new_tokens=body.max_completion_tokens or body.max_tokens,
        ),
        body,
    )
    # A tokenizer that marks <tool_call> special would skip it from the text the calls
    # are parsed from (vLLM's hermes parser keeps special tokens too).
    hermes = parsing is not None and parsing[0] is ToolFormat.HERMES
    if hermes and task.is_special_text("<tool_call>"):
        req.skip_special_tokens = False
    top = (body.top_logprobs or 0) if body.logprobs else None
    starts = [
        Start(
            req,
            sampling(body, j, top, constraint=forced or constraint),
            vllm_prompt_logprobs=body.prompt_logprobs,
            tools=parsing,
        )
        for j in range(body.n)
    ]
    return await respond(request, runtime, model, body, _CHAT, starts)


@router.post(
    "/v1/chat/completions",
    summary="Chat completions (OpenAI) with the model's chat template",
    openapi_extra=body_schema(oa.ChatCompletionRequest),
    responses=_ERRORS,
)
async def chat_completions(request: Request) -> Response:
    return await _chat(request, None)


@router.post(
    "/models/{name}/v1/chat/completions",
    summary="Chat completions (OpenAI) from the model named in the path",
    openapi_extra=body_schema(oa.ChatCompletionRequest),
    responses=_ERRORS,
)
async def chat_completions_for(name: str, request: Request) -> Response:
    return await _chat(request, name)
