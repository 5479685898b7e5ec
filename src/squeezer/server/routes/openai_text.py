"""OpenAI's text generation API: ``/v1/completions`` and ``/v1/chat/completions``.

Streams are server-sent chunks ending with ``data: [DONE]``; ``stream_options.
include_usage`` adds a last chunk with the usage. Sampling follows OpenAI (and vLLM):
temperature 1 samples by default, temperature 0 is greedy. vLLM's extra fields
(``top_k``, ``min_p``, ``repetition_penalty``, ``stop_token_ids``, ``ignore_eos``,
``min_tokens``, ``prompt_logprobs``, ...) are accepted; unknown fields are refused, as
OpenAI refuses them.

Completions with ``echo`` and ``logprobs`` return the prompt's logprobs before the
generated tokens' (the first is null: nothing precedes it), and ``max_tokens: 0``
returns the prompt alone: the loglikelihood call of evaluation harnesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from squeezer.backends.base import PromptLogprob
from squeezer.backends.sampling import SamplingParams
from squeezer.errors import InvalidRequestError
from squeezer.server.errors import error_responses
from squeezer.server.jsonio import body_schema, json_response, read_json
from squeezer.server.registry import ServedModel
from squeezer.server.routes import runtime_of
from squeezer.server.runtime import Runtime
from squeezer.server.schemas import openai as oa
from squeezer.server.streaming import (
    error_event,
    merge,
    random_seed,
    sse_event,
    sse_response,
    token_steps,
    unless_disconnected,
)
from squeezer.tasks.generate import GenerateRequest, GenerateTask, Generation, TextDelta, TextDone
from squeezer.types import Task

router = APIRouter(tags=["OpenAI"])
_ERRORS = error_responses("/v1/completions")
_SEED_MASK = (1 << 63) - 1


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``logit_bias`` (token ids as JSON keys, so strings) as (id, bias)."""
    out = []
    for key, value in (bias or {}).items():
        try:
            out.append((int(key), float(value)))
        except ValueError:
            raise InvalidRequestError(
                f"logit_bias: keys are token ids, got {key[:40]!r}", param="logit_bias"
            ) from None
    return tuple(out)


def _sampling(
    body: oa._Sampling,
    choice: int,
    top_logprobs: int | None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    temperature = 1.0 if body.temperature is None else body.temperature
    seed = body.seed if body.seed is not None else random_seed()
    # Echo's logprobs and vLLM's prompt_logprobs are scored once, with the larger N.
    asked = [n for n in (prompt_logprobs, body.prompt_logprobs) if n is not None]
    return SamplingParams(
        do_sample=temperature > 0,
        temperature=temperature or 1.0,
        top_k=body.top_k if body.top_k and body.top_k > 0 else 0,
        top_p=body.top_p or 1.0,
        typical_p=body.typical_p or 1.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        # n choices of one request differ; each is still reproducible from the seed.
        seed=(seed + choice) & _SEED_MASK,
        top_logprobs=top_logprobs,
        min_new_tokens=body.min_tokens,
        min_p=body.min_p or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=_logit_bias(body.logit_bias),
        prompt_logprobs=max(asked, default=None),
    )


def _text_request(req: GenerateRequest, body: oa._Sampling) -> GenerateRequest:
    """``req`` with what both APIs say about stopping and detokenizing."""
    req.stop = _stops(body.stop)
    req.ignore_eos = body.ignore_eos
    req.stop_token_ids = list(body.stop_token_ids or [])
    req.skip_special_tokens = body.skip_special_tokens
    req.spaces_between_special_tokens = body.spaces_between_special_tokens
    req.include_stop_str_in_output = body.include_stop_str_in_output
    return req


def _refuse(names: list[str]) -> None:
    if names:
        raise InvalidRequestError(
            f"not supported by this server: {', '.join(names)}", param=names[0]
        )


def _stops(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


@dataclass(slots=True)
class _Choice:
    index: int
    generation: Generation
    #: Completions' ``echo``: the prompt's text before the generated text.
    echo: str = ""
    want_logprobs: bool = False
    #: ``max_tokens: 0``: one token is generated (the prompt's logprobs come with it)
    #: and left out.
    prompt_only: bool = False
    #: vLLM's ``prompt_logprobs``: alternatives per prompt token in its own field.
    vllm_prompt_logprobs: int | None = None
    text: list[str] = field(default_factory=list)
    logprobs: list[TextDelta] = field(default_factory=list)
    #: The prompt's logprobs, when asked for (from the first delta).
    prompt: tuple[PromptLogprob | None, ...] | None = None
    done: TextDone | None = None

    def add(self, delta: TextDelta, done: TextDone | None) -> None:
        if delta.prompt is not None:
            self.prompt = delta.prompt
        if not self.prompt_only:
            self.text.append(delta.text)
            if self.want_logprobs:
                self.logprobs.append(delta)
        self.done = done

    @property
    def completion_tokens(self) -> int:
        if self.done is None or self.prompt_only:
            return 0
        return self.done.completion_tokens


@dataclass(frozen=True, slots=True)
class _Start:
    """One choice to start: its request, sampling, echoed prompt and prompt index."""

    request: GenerateRequest
    params: SamplingParams
    prompt_index: int = 0
    echo: str = ""
    prompt_only: bool = False
    vllm_prompt_logprobs: int | None = None


async def _start_all(runtime: Runtime, model: ServedModel, starts: list[_Start]) -> list[_Choice]:
    """Start every choice, or none: a refusal (422, 429) after some started closes them."""
    choices: list[_Choice] = []
    try:
        for index, s in enumerate(starts):
            generation = await runtime.generate(model, s.request, s.params)
            want = s.params.top_logprobs is not None
            choices.append(
                _Choice(index, generation, s.echo, want, s.prompt_only, s.vllm_prompt_logprobs)
            )
    except BaseException:
        for choice in choices:
            await _close(choice.generation.events)
        raise
    return choices


async def _close(events: AsyncGenerator[Any, None]) -> None:
    await events.aclose()


async def _run_choice(choice: _Choice) -> None:
    async for delta, done in token_steps(choice.generation.events):
        choice.add(delta, done)


def _usage(choices: list[_Choice], starts: list[_Start]) -> dict[str, int]:
    # Each prompt counts once, however many choices (n) it has.
    prompts = {
        s.prompt_index: len(c.generation.prompt) for s, c in zip(starts, choices, strict=True)
    }
    prompt = sum(prompts.values())
    completion = sum(c.completion_tokens for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish(c: _Choice) -> dict[str, Any]:
    if c.done is None:
        return {"finish_reason": None}
    if c.prompt_only:
        return {"finish_reason": "length", "stop_reason": None}
    return {"finish_reason": c.done.finish.openai, "stop_reason": c.done.stop}


# -- logprobs ----------------------------------------------------------------------

#: What a logprob of -inf (a token the model itself rules out) is written as, as vLLM
#: writes it: JSON has no infinity, and null would read as "not computed".
_LOGPROB_FLOOR = -9999.0


def _lp(value: float) -> float:
    return max(value, _LOGPROB_FLOOR)


def _chat_logprobs(task: GenerateTask, deltas: list[TextDelta]) -> dict[str, Any]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = task.token_text(token)
        return {"token": text, "logprob": _lp(logprob), "bytes": list(text.encode())}

    return {
        "content": [
            {**entry(d.token, d.logprob), "top_logprobs": [entry(i, lp) for i, lp in d.top]}
            for d in deltas
        ]
    }


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
        logprobs.append(_lp(s.logprob))
        top = {task.token_text(i): _lp(lp) for i, lp in s.top}
        top.setdefault(text, _lp(s.logprob))
        tops.append(top)
    return {
        "tokens": tokens,
        "token_logprobs": logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _prompt_scored(task: GenerateTask, c: _Choice) -> list[_Scored]:
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


def _vllm_prompt_logprobs(
    task: GenerateTask, c: _Choice, top: int | None
) -> list[dict[str, dict[str, Any]] | None] | None:
    """vLLM's ``prompt_logprobs`` answer: per prompt token (None for the first), its
    own and its ``top`` most likely alternatives' logprobs, ranks and texts, keyed by
    token id."""
    if top is None or c.prompt is None:
        return None

    def entry(logprob: float, rank: int, token: int) -> dict[str, Any]:
        return {"logprob": _lp(logprob), "rank": rank, "decoded_token": task.token_text(token)}

    out: list[dict[str, dict[str, Any]] | None] = []
    for p in c.prompt:
        if p is None:
            out.append(None)
            continue
        position = {str(t): entry(lp, rank, t) for rank, (t, lp) in enumerate(p.top[:top], 1)}
        position[str(p.token)] = entry(p.logprob, p.rank, p.token)
        out.append(position)
    return out


# -- one handler for both APIs ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Api:
    """What differs between completions and chat completions."""

    object: str
    id_prefix: str
    #: The response's per-choice body, from the whole text and logprobs.
    choice: Callable[[GenerateTask, _Choice], dict[str, Any]]
    #: A streamed chunk's per-choice body for one token (None: nothing to send).
    delta: Callable[[GenerateTask, _Choice, TextDelta], dict[str, Any] | None]
    #: The per-choice body of a choice's first chunk (chat's role), and of its last.
    opening: Callable[[_Choice], dict[str, Any] | None]
    closing: Callable[[_Choice], dict[str, Any]]


async def _respond(
    request: Request,
    runtime: Runtime,
    model: ServedModel,
    body: oa._Sampling,
    api: _Api,
    starts: list[_Start],
) -> Response:
    task = model.generator
    assert task is not None
    choices = await _start_all(runtime, model, starts)
    head = {
        "id": f"{api.id_prefix}-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": model.name,
        "system_fingerprint": None,
    }

    if not body.stream:
        gathered = asyncio.gather(*(_run_choice(c) for c in choices))
        if await unless_disconnected(request, gathered) is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        out = {
            **head,
            "object": api.object,
            "choices": [api.choice(task, c) for c in choices],
            "usage": _usage(choices, starts),
        }
        if api.object == "chat.completion" and body.prompt_logprobs is not None:
            # vLLM's chat answers carry them once, for the one prompt.
            out["prompt_logprobs"] = _vllm_prompt_logprobs(task, choices[0], body.prompt_logprobs)
        return json_response(out)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    path = request.url.path

    def chunk(choice_bodies: list[dict[str, Any]], usage: Any = None) -> bytes:
        out = {**head, "object": f"{api.object}.chunk", "choices": choice_bodies}
        if api.object == "text_completion":
            out["object"] = api.object  # completions chunks keep the response's name
        if include_usage:
            out["usage"] = usage
        return sse_event(out)

    async def per_choice(choice: _Choice) -> AsyncGenerator[bytes, None]:
        opening = api.opening(choice)
        if opening is not None:
            yield chunk([opening])
        async for delta, done in token_steps(choice.generation.events):
            choice.add(delta, done)
            piece = api.delta(task, choice, delta)
            if piece is not None:
                yield chunk([piece])
        yield chunk([{**api.closing(choice), **_finish(choice)}])

    async def events() -> AsyncGenerator[bytes, None]:
        streams = merge([per_choice(c) for c in choices])
        async with contextlib.aclosing(streams):
            try:
                async for event in streams:
                    yield event
                if include_usage:
                    yield chunk([], _usage(choices, starts))
            except Exception as e:  # a failed step, after the response started
                yield error_event(e, path)
        yield b"data: [DONE]\n\n"

    return sse_response(events())


def _model(runtime: Runtime, name: str | None) -> ServedModel:
    return runtime.registry.get(name, Task.GENERATE)


# -- completions -------------------------------------------------------------------


def _completion_choice(task: GenerateTask, c: _Choice) -> dict[str, Any]:
    logprobs = None
    if c.want_logprobs:
        prompt = _prompt_scored(task, c)
        offset = 0 if prompt else len(c.echo)
        logprobs = _completion_logprobs(task, prompt + _generated_scored(c.logprobs), offset)
    out = {
        "index": c.index,
        "text": c.echo + "".join(c.text),
        "logprobs": logprobs,
        **_finish(c),
    }
    if c.vllm_prompt_logprobs is not None:
        out["prompt_logprobs"] = _vllm_prompt_logprobs(task, c, c.vllm_prompt_logprobs)
    return out


def _completion_delta(task: GenerateTask, c: _Choice, d: TextDelta) -> dict[str, Any] | None:
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


_COMPLETIONS = _Api(
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


def _check_prompt_logprobs(body: oa._Sampling) -> None:
    if body.stream and body.prompt_logprobs is not None:
        raise InvalidRequestError(
            "prompt_logprobs are not returned when streaming (as in vLLM); with "
            "completions, echo with logprobs streams them",
            param="prompt_logprobs",
        )


async def _completions(request: Request, name: str | None) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, oa.CompletionRequest)
    _check_prompt_logprobs(body)
    refused = []
    if body.suffix:
        refused.append("suffix")
    if body.best_of not in (None, body.n):
        refused.append("best_of")
    _refuse(refused)
    model = _model(runtime, body.model if name is None else name)
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
    for i, req in enumerate(_prompts(body.prompt)):
        req.max_new_tokens = 1 if prompt_only else body.max_tokens
        _text_request(req, body)
        echo = ""
        if body.echo:
            # Token ids are checked (in the vocabulary, not empty) before they are
            # decoded: a negative id made the tokenizer raise OverflowError, a 500.
            echo = req.prompt if req.prompt is not None else task.decode(task.prompt_ids(req))
        for j in range(body.n):
            params = _sampling(body, j, body.logprobs, prompt_logprobs)
            starts.append(_Start(req, params, i, echo, prompt_only, body.prompt_logprobs))
    return await _respond(request, runtime, model, body, _COMPLETIONS, starts)


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


# -- chat completions --------------------------------------------------------------


def _chat_choice(task: GenerateTask, c: _Choice) -> dict[str, Any]:
    return {
        "index": c.index,
        "message": {"role": "assistant", "content": "".join(c.text), "tool_calls": []},
        "logprobs": _chat_logprobs(task, c.logprobs) if c.want_logprobs else None,
        **_finish(c),
    }


def _chat_delta(task: GenerateTask, c: _Choice, d: TextDelta) -> dict[str, Any] | None:
    if not d.text and not c.want_logprobs:
        return None
    return {
        "index": c.index,
        "delta": {"content": d.text},
        "logprobs": _chat_logprobs(task, [d]) if c.want_logprobs else None,
        "finish_reason": None,
    }


_CHAT = _Api(
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
    _check_prompt_logprobs(body)
    _refuse(body.chat_unsupported())
    model = _model(runtime, body.model if name is None else name)
    req = _text_request(
        GenerateRequest(
            messages=[_message(m) for m in body.messages],
            max_new_tokens=body.max_completion_tokens or body.max_tokens,
        ),
        body,
    )
    top = (body.top_logprobs or 0) if body.logprobs else None
    starts = [
        _Start(req, _sampling(body, j, top), vllm_prompt_logprobs=body.prompt_logprobs)
        for j in range(body.n)
    ]
    return await _respond(request, runtime, model, body, _CHAT, starts)


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
