"""What OpenAI's two text generation APIs share (``openai_completions``,
``openai_chat``): sampling from the request's fields, starting every choice or none,
the response or the stream of chunks, usage and finish reasons.

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

from starlette.requests import Request
from starlette.responses import Response

from squeezer.backends.base import PromptLogprob
from squeezer.backends.constraints import Constraint
from squeezer.backends.sampling import SamplingParams
from squeezer.errors import InvalidRequestError
from squeezer.server.jsonio import json_response
from squeezer.server.registry import ServedModel
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
from squeezer.tasks.tool_calls import ToolCall, ToolFormat, ToolStream
from squeezer.types import Task

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


def sampling(
    body: oa._Sampling,
    choice: int,
    top_logprobs: int | None,
    prompt_logprobs: int | None = None,
    constraint: Constraint | None = None,
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
        constraint=constraint,
    )


def text_request(req: GenerateRequest, body: oa._Sampling) -> GenerateRequest:
    """``req`` with what both APIs say about stopping and detokenizing."""
    req.stop = stops(body.stop)
    req.ignore_eos = body.ignore_eos
    req.stop_token_ids = list(body.stop_token_ids or [])
    req.skip_special_tokens = body.skip_special_tokens
    req.spaces_between_special_tokens = body.spaces_between_special_tokens
    req.include_stop_str_in_output = body.include_stop_str_in_output
    return req


def refuse(names: list[str]) -> None:
    if names:
        raise InvalidRequestError(
            f"not supported by this server: {', '.join(names)}", param=names[0]
        )


def stops(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


@dataclass(slots=True)
class Choice:
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
    #: Chat with tools: the text as it may turn into calls, and the calls it made.
    tools: ToolStream | None = None
    calls: list[ToolCall] = field(default_factory=list)

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
class Start:
    """One choice to start: its request, sampling, echoed prompt and prompt index."""

    request: GenerateRequest
    params: SamplingParams
    prompt_index: int = 0
    echo: str = ""
    prompt_only: bool = False
    vllm_prompt_logprobs: int | None = None
    #: Chat with tools (and tool_choice not ``none``): the model's format, the names.
    tools: tuple[ToolFormat, frozenset[str]] | None = None


async def _start_all(runtime: Runtime, model: ServedModel, starts: list[Start]) -> list[Choice]:
    """Start every choice, or none: a refusal (422, 429) after some started closes them."""
    choices: list[Choice] = []
    try:
        for index, s in enumerate(starts):
            generation = await runtime.generate(model, s.request, s.params)
            want = s.params.top_logprobs is not None
            choice = Choice(index, generation, s.echo, want, s.prompt_only, s.vllm_prompt_logprobs)
            if s.tools is not None:
                choice.tools = ToolStream(s.tools[0], set(s.tools[1]))
            choices.append(choice)
    except BaseException:
        for choice in choices:
            await _close(choice.generation.events)
        raise
    return choices


async def _close(events: AsyncGenerator[Any, None]) -> None:
    await events.aclose()


async def _run_choice(choice: Choice) -> None:
    async for delta, done in token_steps(choice.generation.events):
        choice.add(delta, done)


def _usage(choices: list[Choice], starts: list[Start]) -> dict[str, int]:
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


def finish(c: Choice) -> dict[str, Any]:
    if c.done is None:
        return {"finish_reason": None}
    if c.prompt_only:
        return {"finish_reason": "length", "stop_reason": None}
    if c.calls:
        return {"finish_reason": "tool_calls", "stop_reason": c.done.stop}
    return {"finish_reason": c.done.finish.openai, "stop_reason": c.done.stop}


# -- logprobs ----------------------------------------------------------------------

#: What a logprob of -inf (a token the model itself rules out) is written as, as vLLM
#: writes it: JSON has no infinity, and null would read as "not computed".
_LOGPROB_FLOOR = -9999.0


def finite_logprob(value: float) -> float:
    return max(value, _LOGPROB_FLOOR)


def vllm_prompt_logprobs(
    task: GenerateTask, c: Choice, top: int | None
) -> list[dict[str, dict[str, Any]] | None] | None:
    """vLLM's ``prompt_logprobs`` answer: per prompt token (None for the first), its
    own and its ``top`` most likely alternatives' logprobs, ranks and texts, keyed by
    token id."""
    if top is None or c.prompt is None:
        return None

    def entry(logprob: float, rank: int, token: int) -> dict[str, Any]:
        return {
            "logprob": finite_logprob(logprob),
            "rank": rank,
            "decoded_token": task.token_text(token),
        }

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
class Api:
    """What differs between completions and chat completions."""

    object: str
    id_prefix: str
    #: The response's per-choice body, from the whole text and logprobs.
    choice: Callable[[GenerateTask, Choice], dict[str, Any]]
    #: A streamed chunk's per-choice body for one token (None: nothing to send).
    delta: Callable[[GenerateTask, Choice, TextDelta], dict[str, Any] | None]
    #: The per-choice body of a choice's first chunk (chat's role), and of its last.
    opening: Callable[[Choice], dict[str, Any] | None]
    closing: Callable[[Choice], dict[str, Any]]
    #: Per-choice bodies sent after its last token, before the closing chunk (chat's
    #: held-back text and tool calls).
    ending: Callable[[GenerateTask, Choice], list[dict[str, Any]]] = lambda task, c: []


async def respond(
    request: Request,
    runtime: Runtime,
    model: ServedModel,
    body: oa._Sampling,
    api: Api,
    starts: list[Start],
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
            out["prompt_logprobs"] = vllm_prompt_logprobs(task, choices[0], body.prompt_logprobs)
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

    async def per_choice(choice: Choice) -> AsyncGenerator[bytes, None]:
        opening = api.opening(choice)
        if opening is not None:
            yield chunk([opening])
        async for delta, done in token_steps(choice.generation.events):
            choice.add(delta, done)
            piece = api.delta(task, choice, delta)
            if piece is not None:
                yield chunk([piece])
        for piece in api.ending(task, choice):
            yield chunk([piece])
        yield chunk([{**api.closing(choice), **finish(choice)}])

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


def generation_model(runtime: Runtime, name: str | None) -> ServedModel:
    return runtime.registry.get(name, Task.GENERATE)


def check_prompt_logprobs(body: oa._Sampling) -> None:
    if body.stream and body.prompt_logprobs is not None:
        raise InvalidRequestError(
            "prompt_logprobs are not returned when streaming (as in vLLM); with "
            "completions, echo with logprobs streams them",
            param="prompt_logprobs",
        )
