"""OpenAI's embeddings and models routes, also mounted under ``/models/{name}``.

``InferenceClient(model=URL/models/NAME)`` calls ``URL/models/NAME/v1/...``: there the
path names the model and the body's ``model`` (often a placeholder) is ignored.
"""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from squeezer.server.errors import error_responses
from squeezer.server.jsonio import body_schema, json_response, read_json
from squeezer.server.registry import ServedModel
from squeezer.server.routes import runtime_of
from squeezer.server.routes.tei import as_batch
from squeezer.server.runtime import Runtime
from squeezer.server.schemas import openai as oa
from squeezer.tasks import EmbedRequest
from squeezer.types import Task

router = APIRouter(tags=["OpenAI"])
_ERRORS = error_responses("/v1/embeddings")


async def _embeddings(runtime: Runtime, model: ServedModel, body: oa.EmbeddingsRequest) -> Response:
    req = EmbedRequest(
        inputs=as_batch(body.input, runtime.settings.max_client_batch_size),
        normalize=True,
        dimensions=body.dimensions,
    )
    result = await runtime.embed(model, req)
    vectors = result.embeddings
    assert isinstance(vectors, np.ndarray)
    if body.encoding_format == "base64":
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode(),
            }
            for i, v in enumerate(vectors)
        ]
    else:
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return json_response({"object": "list", "data": data, "model": model.name, "usage": usage})


def _model_list(runtime: Runtime) -> Response:
    created = int(runtime.started_at)
    cards = [
        {
            "id": info.name,
            "object": "model",
            "created": created,
            "owned_by": "squeezer",
            "version": info.version,  # the default's: NAME:VERSION and NAME@ALIAS work too
            "tasks": [t.value for t in info.tasks],
            "backend": info.backend,
            "device": info.device,
            "dtype": info.dtype,
            "content_hash": info.content_hash,
            "fingerprint": info.fingerprint,
            "golden": info.golden.as_dict() if info.golden else None,
            "precision": info.precision.as_dict() if info.precision else None,
            "versions": info.versions.as_dict(),
        }
        for info in runtime.model_infos()
    ]
    return json_response({"object": "list", "data": cards})


@router.post(
    "/v1/embeddings",
    summary="Embeddings (OpenAI); `model` names a served model, placeholders mean the default",
    openapi_extra=body_schema(oa.EmbeddingsRequest),
    responses={200: {"model": oa.EmbeddingsResponse}, **_ERRORS},
)
async def embeddings(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, oa.EmbeddingsRequest)
    model = runtime.registry.get(body.model, Task.EMBED)
    return await _embeddings(runtime, model, body)


@router.post(
    "/models/{name}/v1/embeddings",
    summary="Embeddings (OpenAI) from the model named in the path",
    openapi_extra=body_schema(oa.EmbeddingsRequest),
    responses={200: {"model": oa.EmbeddingsResponse}, **_ERRORS},
)
async def embeddings_for(name: str, request: Request) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, oa.EmbeddingsRequest)
    return await _embeddings(runtime, runtime.embed_model(name), body)


@router.get(
    "/v1/models",
    summary="Every served model",
    responses={200: {"model": oa.ModelList}, **error_responses("/v1/models", [503])},
)
async def models(request: Request) -> Response:
    return _model_list(runtime_of(request))


@router.get(
    "/models/{name}/v1/models",
    summary="Every served model (OpenAI clients whose base URL names a model)",
    responses={
        200: {"model": oa.ModelList},
        **error_responses("/models/{name}/v1/models", [404, 503]),
    },
)
async def models_for(name: str, request: Request) -> Response:
    runtime = runtime_of(request)
    runtime.registry.get(name)
    return _model_list(runtime)
