"""Triton's generate extension: ``POST /v2/models/{m}[/versions/{v}]/generate`` and
``/generate_stream`` (server-sent events), with the field names of Triton's vLLM and
TensorRT-LLM backends (``text_input``, ``parameters``, ``text_output``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from squeezer.backends.sampling import SamplingParams
from squeezer.errors import InvalidRequestError
from squeezer.server.errors import error_responses
from squeezer.server.jsonio import json_response, parse, read_body
from squeezer.server.routes import runtime_of
from squeezer.server.routes.kserve import model_of
from squeezer.server.schemas import kserve
from squeezer.server.streaming import (
    error_event,
    random_seed,
    sse_event,
    sse_response,
    unless_disconnected,
)
from squeezer.tasks.generate import GenerateRequest, TextDelta
from squeezer.types import Task

router = APIRouter(tags=["KServe v2 / Open Inference Protocol"])
_ERRORS = error_responses("/v2/models/{name}/generate")


def _generate_request(body: Any) -> tuple[GenerateRequest, SamplingParams, bool]:
    """The request, its sampling, and whether the prompt leads the output."""
    if not isinstance(body, dict) or not isinstance(body.get("text_input"), str):
        raise InvalidRequestError("expected a JSON object with a string 'text_input'")
    nested = body.get("parameters") or {}
    if not isinstance(nested, dict):
        raise InvalidRequestError("'parameters' must be an object")
    top = {k: v for k, v in body.items() if k not in ("text_input", "parameters")}
    p = parse({**top, **nested}, kserve.GenerateParameters)
    request = GenerateRequest(
        prompt=body["text_input"],
        max_new_tokens=p.max_tokens,
        stop=[p.stop] if isinstance(p.stop, str) else list(p.stop),
        ignore_eos=p.ignore_eos,
        stop_token_ids=p.stop_token_ids,
        skip_special_tokens=p.skip_special_tokens,
        spaces_between_special_tokens=p.spaces_between_special_tokens,
        include_stop_str_in_output=p.include_stop_str_in_output,
    )
    params = SamplingParams(
        do_sample=p.temperature > 0,
        temperature=p.temperature if p.temperature > 0 else 1.0,
        top_k=p.top_k,
        top_p=p.top_p,
        repetition_penalty=p.repetition_penalty,
        seed=p.seed if p.seed is not None else random_seed(),
        min_p=p.min_p,
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        min_new_tokens=p.min_tokens,
    )
    return request, params, not p.exclude_input_in_output


async def _generate(request: Request, name: str, version: str | None, stream: bool) -> Response:
    runtime = runtime_of(request)
    gen_request, params, with_prompt = _generate_request(await read_body(request))
    model = model_of(runtime, name, version)
    runtime.registry.check(model, Task.GENERATE)
    generation = await runtime.generate(model, gen_request, params)
    head = {"model_name": model.name, "model_version": model.version}
    prefix = (gen_request.prompt or "") if with_prompt else ""
    if not stream:

        async def collect() -> str:
            text = [prefix]
            async for event in generation.events:
                if isinstance(event, TextDelta):
                    text.append(event.text)
            return "".join(text)

        output = await unless_disconnected(request, collect())
        return json_response({**head, "text_output": output})
    path = request.url.path

    async def events() -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(generation.events) as steps:
            try:
                if prefix:
                    yield sse_event({**head, "text_output": prefix})
                async for event in steps:
                    if isinstance(event, TextDelta) and event.text:
                        yield sse_event({**head, "text_output": event.text})
            except Exception as e:
                yield error_event(e, path)

    return sse_response(events())


@router.post("/v2/models/{name}/generate", summary="Generate (Triton)", responses=_ERRORS)
async def generate(request: Request, name: str) -> Response:
    return await _generate(request, name, None, stream=False)


@router.post(
    "/v2/models/{name}/generate_stream", summary="Generate, streamed (Triton)", responses=_ERRORS
)
async def generate_stream(request: Request, name: str) -> Response:
    return await _generate(request, name, None, stream=True)


@router.post(
    "/v2/models/{name}/versions/{version}/generate",
    summary="Generate on one version (Triton)",
    responses=_ERRORS,
)
async def generate_version(request: Request, name: str, version: str) -> Response:
    return await _generate(request, name, version, stream=False)


@router.post(
    "/v2/models/{name}/versions/{version}/generate_stream",
    summary="Generate on one version, streamed (Triton)",
    responses=_ERRORS,
)
async def generate_stream_version(request: Request, name: str, version: str) -> Response:
    return await _generate(request, name, version, stream=True)
