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
from squeezer.server.jsonio import json_response, read_body
from squeezer.server.routes import runtime_of
from squeezer.server.routes.kserve import model_of
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


#: The generate extension's parameters (Triton's vLLM and TensorRT-LLM backends' names).
_GENERATE_PARAMETERS = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "ignore_eos",
        "repetition_penalty",
        "stream",
        "exclude_input_in_output",
    }
)


def _generate_request(body: Any) -> tuple[GenerateRequest, SamplingParams, bool]:
    if not isinstance(body, dict) or not isinstance(body.get("text_input"), str):
        raise InvalidRequestError("expected a JSON object with a string 'text_input'")
    nested = body.get("parameters") or {}
    if not isinstance(nested, dict):
        raise InvalidRequestError("'parameters' must be an object")
    p = {**{k: v for k, v in body.items() if k not in ("text_input", "parameters")}, **nested}
    unknown = sorted(set(p) - _GENERATE_PARAMETERS)
    if unknown:
        raise InvalidRequestError(
            f"unknown parameters {unknown}; this server takes {sorted(_GENERATE_PARAMETERS)}",
            param=unknown[0],
        )
    stop = p.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    try:
        temperature = float(p.get("temperature", 1.0))
        request = GenerateRequest(
            prompt=body["text_input"],
            max_new_tokens=int(p["max_tokens"]) if p.get("max_tokens") is not None else 16,
            stop=[str(s) for s in stop],
            ignore_eos=bool(p.get("ignore_eos", False)),
        )
        params = SamplingParams(
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0,
            top_k=int(p.get("top_k") or 0),
            top_p=float(p.get("top_p", 1.0)),
            repetition_penalty=float(p.get("repetition_penalty", 1.0)),
            seed=int(p["seed"]) if p.get("seed") is not None else random_seed(),
        )
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(f"invalid generate parameters: {e}") from None
    return request, params, not bool(p.get("exclude_input_in_output", True))


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
