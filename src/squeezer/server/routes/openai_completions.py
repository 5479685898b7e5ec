"""OpenAI's completions: ``/v1/completions``, with ``echo`` and prompt logprobs (the
loglikelihood call of evaluation harnesses: ``max_tokens: 0`` returns the prompt
alone) and vLLM's extra fields."""

from __future__ import annotations

from dataclasses import dataclass
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
    vllm_prompt_logprobs,
)
from squeezer.server.schemas import openai as oa
from squeezer.tasks.generate import GenerateRequest, GenerateTask, TextDelta

router = APIRouter(tags=["OpenAI"])
_ERRORS = error_responses("/v1/completions")


@dataclass(frozen=True, slots=True)
class _Scored:
    """One token of a completions ``logprobs`` object: a prompt token (logprob None
    for the first) or a generated one, with its text's length in the answer."""

    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...]
    length: int


def _completion_logprobs(task: GenerateTask, scored: list[_Scored], offset: int) -> dict[str, Any]:
    """OpenAI's legacy logprobs object. ``top_logprobs`` has the ``logprobs`` most
    likely tokens and the chosen one (so up to one more), as OpenAI and vLLM do."""
    tokens: list[str] = []
    logprobs: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    for s in scored:
        text = task.token_text(s.token)
        tokens.append(text)
        offsets.append(offset)
        offset += s.length
        if s.logprob is None:
            logprobs.append(None)
            tops.append(None)
            continue
        logprobs.append(finite_logprob(s.logprob))
        top = {task.token_text(i): finite_logprob(x) for i, x in s.top}
        top.setdefault(text, finite_logprob(s.logprob))
        tops.append(top)
    return {
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _prompt_scored(task: GenerateTask, c: Choice) -> list[_Scored]:
    n = c.generation.params.top_logprobs or 0  # the request's logprobs: N alternatives
    out = []
    for i, p in enumerate(c.prompt or ()):
        token = p.token if p is not None else c.generation.prompt[i]
        length = len(task.token_text(token))
        out.append(
            _Scored(token, None, (), length)
            if p is None
            else _Scored(token, p.logprob, p.top[:n], length)
        )
    return out


def _generated_scored(deltas: list[TextDelta]) -> list[_Scored]:
    return [_Scored(d.token, d.logprob, d.top, len(d.text)) for d in deltas]


# -- completions -------------------------------------------------------------------


def _completion_choice(task: GenerateTask, c: Choice) -> dict[str, Any]:
    logprobs = None
    if c.want_logprobs:
        prompt = _prompt_scored(task, c)
        offset = 0 if prompt else len(c.echo)
        logprobs = _completion_logprobs(task, prompt + _generated_scored(c.logprobs), offset)
    out = {
        "index": c.index,
        "text": c.echo + "".join(c.text),
        "logprobs": logprobs,
        **finish(c),
    }
    if c.vllm_prompt_logprobs is not None:
        out["prompt_logprobs"] = vllm_prompt_logprobs(task, c, c.vllm_prompt_logprobs)
    return out


def _completion_delta(task: GenerateTask, c: Choice, d: TextDelta) -> dict[str, Any] | None:
    first = d.prompt is not None or (len(c.text) == 1 and not c.prompt_only)
    if c.prompt_only and not first:
        return None
    text = (c.echo if first else "") + ("" if c.prompt_only else d.text)
    if not text and not c.want_logprobs:
        return None
    logprobs = None
    if c.want_logprobs:
        scored = _prompt_scored(task, c) if d.prompt is not None else []
        if not c.prompt_only:
            scored += _generated_scored([d])
        logprobs = _completion_logprobs(task, scored, 0)
    return {"index": c.index, "text": text, "logprobs": logprobs, "finish_reason": None}


_COMPLETIONS = Api(
    object="text_completion",
    id_prefix="cmpl",
    choice=_completion_choice,
    delta=_completion_delta,
    opening=lambda c: None,
    closing=lambda c: {"index": c.index, "text": "", "logprobs": None},
)


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[GenerateRequest]:
    if isinstance(prompt, str):
        return [GenerateRequest(prompt=prompt)]
    if not prompt:
        raise InvalidRequestError("prompt must not be empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [GenerateRequest(prompt_tokens=[int(p) for p in prompt])]  # type: ignore[arg-type]
    if all(isinstance(p, str) for p in prompt):
        return [GenerateRequest(prompt=str(p)) for p in prompt]
    return [GenerateRequest(prompt_tokens=list(p)) for p in prompt]  # type: ignore[arg-type]


async def _completions(request: Request, name: str | None) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, oa.CompletionRequest)
    check_prompt_logprobs(body)
    refused = []
    if body.suffix:
        refused.append("suffix")
    if body.best_of not in (None, body.n):
        refused.append("best_of")
    refuse(refused)
    model = generation_model(runtime, body.model if name is None else name)
    task = model.generator
    assert task is not None
    starts = []
    prompt_only = body.max_tokens == 0
    if prompt_only and not body.echo:
        raise InvalidRequestError(
            "max_tokens 0 returns the prompt alone, so it needs echo: true", param="max_tokens"
        )
    # With echo, logprobs cover the prompt's tokens too (vLLM's prompt_logprobs).
    prompt_logprobs = body.logprobs if body.echo and body.logprobs is not None else None
    constraint = body.constraint()
    for i, req in enumerate(_prompts(body.prompt)):
        req.max_new_tokens = 1 if prompt_only else body.max_tokens
        text_request(req, body)
        echo = ""
        if body.echo:
            # Token ids are checked (in the vocabulary, not empty) before they are
            # decoded: a negative id made the tokenizer raise OverflowError, a 500.
            echo = req.prompt if req.prompt is not None else task.decode(task.prompt_ids(req))
        for j in range(body.n):
            params = sampling(body, j, body.logprobs, prompt_logprobs, constraint)
            starts.append(Start(req, params, i, echo, prompt_only, body.prompt_logprobs))
    return await respond(request, runtime, model, body, _COMPLETIONS, starts)


@router.post(
    "/v1/completions",
    summary="Text completions (OpenAI); vLLM's extra sampling fields accepted",
    openapi_extra=body_schema(oa.CompletionRequest),
    responses=_ERRORS,
)
async def completions(request: Request) -> Response:
    return await _completions(request, None)


@router.post(
    "/models/{name}/v1/completions",
    summary="Text completions (OpenAI) from the model named in the path",
    openapi_extra=body_schema(oa.CompletionRequest),
    responses=_ERRORS,
)
async def completions_for(name: str, request: Request) -> Response:
    return await _completions(request, name)
