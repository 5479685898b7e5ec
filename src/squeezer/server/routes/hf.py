"""The Hugging Face Inference API: ``{"inputs", "parameters"}`` posted to a URL.

The URL chooses the model (``POST /`` the default model, ``/models/{name}`` that one)
and the task (the model's main task, or ``/pipeline/{task}/{name}`` /
``/models/{name}/pipeline/{task}`` for a model with several). Responses have the
shapes HF Inference Endpoints give for the same task.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from squeezer.errors import InvalidRequestError, TaskNotSupportedError
from squeezer.server.jsonio import body_schema, json_response, parse, read_json
from squeezer.server.registry import ServedModel
from squeezer.server.routes import runtime_of
from squeezer.server.routes.tei import as_batch
from squeezer.server.runtime import Runtime
from squeezer.server.schemas import hf, tei
from squeezer.tasks import EmbedRequest
from squeezer.types import Task, TruncationDirection

router = APIRouter(tags=["HF Inference API"])

#: HF pipeline task names -> squeezer task.
_PIPELINE_TASKS = {
    "feature-extraction": Task.EMBED,
    "sentence-embeddings": Task.EMBED,
    "sentence-similarity": Task.EMBED,
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"description": "{'error': message, 'error_type': kind}"} for s in (400, 404, 422, 429)
}


def _embed_params(body: hf.InferenceRequest) -> hf.FeatureExtractionParameters:
    merged: dict[str, Any] = dict(body.parameters or {})
    for key in ("normalize", "truncate", "truncation_direction", "prompt_name"):
        value = getattr(body, key)
        if value is not None:
            merged.setdefault(key, value)
    return parse(merged, hf.FeatureExtractionParameters)


def _direction(value: str | None) -> TruncationDirection:
    try:
        return TruncationDirection((value or "right").lower())
    except ValueError:
        raise InvalidRequestError(
            f"truncation_direction {value!r}: expected left or right", param="truncation_direction"
        ) from None


async def _feature_extraction(
    runtime: Runtime, model: ServedModel, body: hf.InferenceRequest
) -> Response:
    params = _embed_params(body)
    inputs = body.inputs
    if isinstance(inputs, dict):
        return await _similarity(runtime, model, body)
    if not isinstance(inputs, str) and not (
        isinstance(inputs, list) and all(isinstance(x, str) for x in inputs)
    ):
        raise InvalidRequestError("inputs must be a string or a list of strings", param="inputs")
    req = EmbedRequest(
        inputs=as_batch(inputs, runtime.settings.max_client_batch_size),
        normalize=True if params.normalize is None else params.normalize,
        truncate=bool(params.truncate),
        truncation_direction=_direction(params.truncation_direction),
        prompt_name=params.prompt_name,
    )
    return json_response((await runtime.embed(model, req)).embeddings)


async def _similarity(runtime: Runtime, model: ServedModel, body: hf.InferenceRequest) -> Response:
    inputs = parse(body.inputs, tei.SimilarityInput)
    params = _embed_params(body)
    scores = await runtime.similarity(
        model,
        inputs.source_sentence,
        inputs.sentences,
        truncate=bool(params.truncate),
        direction=_direction(params.truncation_direction),
        prompt_name=params.prompt_name,
    )
    return json_response(scores)


async def _run(
    runtime: Runtime, model: ServedModel, pipeline: str | None, request: Request
) -> Response:
    body = await read_json(request, hf.InferenceRequest)
    if Task.EMBED not in model.info.tasks:
        raise TaskNotSupportedError(
            f"model {model.name!r} serves {', '.join(t.value for t in model.info.tasks)}, "
            "which this server does not run over the HF Inference API yet"
        )
    if pipeline is not None:
        task = _PIPELINE_TASKS.get(pipeline)
        if task is None or task not in model.info.tasks:
            raise TaskNotSupportedError(
                f"model {model.name!r} does not serve pipeline {pipeline!r}; it serves "
                f"{', '.join(t.value for t in model.info.tasks)}"
            )
        if pipeline == "sentence-similarity":
            return await _similarity(runtime, model, body)
    return await _feature_extraction(runtime, model, body)


@router.post(
    "/",
    summary="Run the default model's main task (HF Inference API)",
    openapi_extra=body_schema(hf.InferenceRequest),
    responses=_ERRORS,
)
async def root(request: Request) -> Response:
    runtime = runtime_of(request)
    return await _run(runtime, runtime.registry.default_for(Task.EMBED), None, request)


@router.post(
    "/models/{name}",
    summary="Run this model's main task (HF Inference API)",
    openapi_extra=body_schema(hf.InferenceRequest),
    responses=_ERRORS,
)
async def model_main_task(name: str, request: Request) -> Response:
    runtime = runtime_of(request)
    return await _run(runtime, runtime.registry.get(name), None, request)


@router.post(
    "/pipeline/{pipeline}/{name}",
    summary="Run one task of a model that has several (HF Inference API)",
    openapi_extra=body_schema(hf.InferenceRequest),
    responses=_ERRORS,
)
@router.post(
    "/models/{name}/pipeline/{pipeline}",
    summary="Run one task of a model (the form huggingface_hub builds)",
    openapi_extra=body_schema(hf.InferenceRequest),
    responses=_ERRORS,
    operation_id="model_pipeline_task",
)
async def pipeline_task(pipeline: str, name: str, request: Request) -> Response:
    runtime = runtime_of(request)
    return await _run(runtime, runtime.registry.get(name), pipeline, request)
