"""OpenAI's chat completions: ``/v1/chat/completions``, rendered with the model's chat
template, with structured outputs and tool calls."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

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
from squeezer.tasks.generate import GenerateRequest, GenerateTask, TextDelta

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
    return {
        "index": c.index,
        "message": {"role": "assistant", "content": "".join(c.text), "tool_calls": []},
        "logprobs": _chat_logprobs(task, c.logprobs) if c.want_logprobs else None,
        **finish(c),
    }


def _chat_delta(task: GenerateTask, c: Choice, d: TextDelta) -> dict[str, Any] | None:
    if not d.text and not c.want_logprobs:
        return None
    return {
        "index": c.index,
        "delta": {"content": d.text},
        "logprobs": _chat_logprobs(task, [d]) if c.want_logprobs else None,
        "finish_reason": None,
    }


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
)


def _message(m: oa.ChatMessage) -> dict[str, Any]:
    """A message as chat templates expect it: text parts joined into one string."""
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
    return out


async def _chat(request: Request, name: str | None) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, oa.ChatCompletionRequest)
    check_prompt_logprobs(body)
    refuse(body.chat_unsupported())
    model = generation_model(runtime, body.model if name is None else name)
    req = text_request(
        GenerateRequest(
            messages=[_message(m) for m in body.messages],
            max_new_tokens=body.max_completion_tokens or body.max_tokens,
        ),
        body,
    )
    top = (body.top_logprobs or 0) if body.logprobs else None
    constraint = body.constraint()
    starts = [
        Start(
            req,
            sampling(body, j, top, constraint=constraint),
            vllm_prompt_logprobs=body.prompt_logprobs,
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
