"""TGI's generate API: ``POST /generate``, ``POST /generate_stream``, and generation-
shaped bodies posted to ``POST /`` (TGI's compat route, which ``InferenceClient``
calls with a base URL).

Model-less, as TGI is: they use the default generation model (``--default-model
generate=NAME``, else the first causal LM served).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from squeezer.backends.base import PromptLogprob
from squeezer.backends.sampling import SamplingParams
from squeezer.errors import InvalidRequestError
from squeezer.server.errors import error_responses
from squeezer.server.jsonio import body_schema, json_response, parse, read_json
from squeezer.server.registry import ServedModel
from squeezer.server.routes import runtime_of
from squeezer.server.runtime import Runtime
from squeezer.server.schemas import tgi
from squeezer.server.schemas.structured import one_constraint
from squeezer.server.streaming import (
    error_event,
    random_seed,
    sse_event,
    sse_response,
    token_steps,
    unless_disconnected,
)
from squeezer.tasks.generate import GenerateRequest, GenerateTask, Generation, TextDelta
from squeezer.types import Task

router = APIRouter(tags=["TGI"])
_ERRORS = error_responses("/generate")
#: Keys that make a ``POST /`` body a generation request rather than another task's.
GENERATION_KEYS = frozenset(tgi.GenerateParameters.model_fields) | {"stream"}


def sampling_params(p: tgi.GenerateParameters) -> SamplingParams:
    """TGI samples when asked to, or when any warper is set (as its server does)."""
    warped = (
        (p.temperature is not None and p.temperature != 1.0)
        or p.top_k is not None
        or p.top_p is not None
        or p.typical_p is not None
    )
    return SamplingParams(
        do_sample=p.do_sample or warped,
        temperature=p.temperature or 1.0,
        top_k=p.top_k or 0,
        top_p=p.top_p or 1.0,
        typical_p=p.typical_p or 1.0,
        repetition_penalty=p.repetition_penalty or 1.0,
        seed=p.seed if p.seed is not None else random_seed(),
        top_logprobs=p.top_n_tokens or 0,
        # details.prefill: each prompt token's logprob (TGI's decoder_input_details).
        prompt_logprobs=0 if p.details and p.decoder_input_details else None,
        constraint=one_constraint(
            {"grammar": None if p.grammar is None else p.grammar.constraint()}
        ),
    )


async def _start(
    runtime: Runtime, model: ServedModel, body: tgi.GenerateRequest, *, stream: bool = False
) -> tuple[Generation, GenerateTask]:
    p = body.parameters
    unsupported = p.unsupported()
    if stream and p.decoder_input_details:
        unsupported.append("decoder_input_details")  # as TGI: not when streaming
    if unsupported:
        raise InvalidRequestError(
            f"not supported by this server: {', '.join(unsupported)}", param=unsupported[0]
        )
    request = GenerateRequest(
        prompt=body.inputs,
        max_new_tokens=p.max_new_tokens,
        stop=p.stop,
        truncate=p.truncate,
        ignore_eos=p.ignore_eos,
    )
    generation = await runtime.generate(model, request, sampling_params(p))
    assert model.generator is not None
    return generation, model.generator


def _token(task: GenerateTask, delta: TextDelta) -> dict[str, Any]:
    special = task.is_special(delta.token)
    return {
        "id": delta.token,
        "text": task.token_text(delta.token) if special else delta.text,
        "logprob": delta.logprob,
        "special": special,
    }


def _prefill(
    task: GenerateTask, prompt: list[int], scored: tuple[PromptLogprob | None, ...] | None
) -> list[dict[str, Any]]:
    """TGI's ``details.prefill``: the prompt's tokens, each with its logprob given the
    ones before it (null for the first) when ``decoder_input_details`` asked."""
    if scored is None:
        return []
    return [
        {
            "id": token,
            "text": task.token_text(token),
            "logprob": None if s is None else s.logprob,
            "special": task.is_special(token),
        }
        for token, s in zip(prompt, scored, strict=True)
    ]


def _top_tokens(task: GenerateTask, delta: TextDelta) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "text": task.token_text(i),
            "logprob": lp,
            "special": task.is_special(i),
        }
        for i, lp in delta.top
    ]


async def _generate(
    runtime: Runtime, model: ServedModel, body: tgi.GenerateRequest, request: Request
) -> dict[str, Any] | None:
    generation, task = await _start(runtime, model, body)
    p = body.parameters

    async def collect() -> dict[str, Any]:
        text: list[str] = []
        tokens: list[dict[str, Any]] = []
        top: list[list[dict[str, Any]]] = []
        prefill: list[dict[str, Any]] = []
        async for delta, done in token_steps(generation.events):
            text.append(delta.text)
            if delta.prompt is not None:
                prefill = _prefill(task, generation.prompt, delta.prompt)
            if p.details:
                tokens.append(_token(task, delta))
                top.append(_top_tokens(task, delta))
            if done is None:
                continue
            generated = "".join(text)
            if p.return_full_text:
                generated = body.inputs + generated
            out: dict[str, Any] = {"generated_text": generated}
            if p.details:
                out["details"] = {
                    "finish_reason": done.finish.value,
                    "generated_tokens": done.completion_tokens,
                    "seed": generation.seed,
                    "prefill": prefill,
                    "tokens": tokens,
                    "top_tokens": top if p.top_n_tokens else None,
                    "best_of_sequences": None,
                }
            return out
        raise AssertionError("token_steps ends with a TextDone")

    return await unless_disconnected(request, collect())


async def _stream(
    runtime: Runtime, model: ServedModel, body: tgi.GenerateRequest, path: str
) -> Response:
    generation, task = await _start(runtime, model, body, stream=True)

    async def events() -> AsyncGenerator[bytes, None]:
        text: list[str] = []
        steps = token_steps(generation.events)
        async with contextlib.aclosing(steps):
            try:
                index = 0
                async for delta, done in steps:
                    index += 1
                    text.append(delta.text)
                    event: dict[str, Any] = {
                        "index": index,
                        "token": _token(task, delta),
                        "top_tokens": _top_tokens(task, delta) if delta.top else None,
                        "generated_text": None,
                        "details": None,
                    }
                    if done is not None:
                        event["generated_text"] = "".join(text)
                        event["details"] = {
                            "finish_reason": done.finish.value,
                            "generated_tokens": done.completion_tokens,
                            "seed": generation.seed,
                            "input_length": done.prompt_tokens,
                        }
                    yield sse_event(event)
            except Exception as e:  # a failed step: TGI's error event, then the end
                yield error_event(e, path)

    return sse_response(events())


def _model(runtime: Runtime) -> ServedModel:
    return runtime.registry.get(None, Task.GENERATE)


@router.post(
    "/generate",
    summary="Generate text (TGI)",
    openapi_extra=body_schema(tgi.GenerateRequest),
    responses={200: {"model": tgi.GenerateResponse}, **_ERRORS},
)
async def generate(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, tgi.GenerateRequest)
    return json_response(await _generate(runtime, _model(runtime), body, request))


@router.post(
    "/generate_stream",
    summary="Generate text as server-sent token events (TGI)",
    openapi_extra=body_schema(tgi.GenerateRequest),
    responses={200: {"model": tgi.StreamResponse}, **_ERRORS},
)
async def generate_stream(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, tgi.GenerateRequest)
    return await _stream(runtime, _model(runtime), body, request.url.path)


def is_generation_body(body: Any) -> bool:
    """TGI's ``POST /`` bodies: ``{"inputs": str, "parameters": {...}, "stream": ...}``
    with generation parameters (``InferenceClient.text_generation`` sends all of them)."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
        return False
    params = body.get("parameters")
    keys = set(body) | (set(params) if isinstance(params, dict) else set())
    # ``truncate`` and ``top_k`` are other tasks' parameters too.
    return bool(keys & (GENERATION_KEYS - {"truncate", "top_k"}))


async def compat_generate(
    runtime: Runtime, model: ServedModel, data: Any, request: Request
) -> Response:
    """TGI's ``POST /``: a list with one result, or the stream when ``stream`` is true."""
    body = parse(data, tgi.GenerateRequest)
    if body.stream:
        return await _stream(runtime, model, body, "/generate_stream")
    return json_response([await _generate(runtime, model, body, request)])
