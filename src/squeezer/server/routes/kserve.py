"""The Open Inference Protocol (KServe v2), as Triton, KServe, Seldon MLServer and
OpenVINO Model Server speak it: health, metadata, ``infer`` with JSON or binary tensors
(``server/tensors.py``), and Triton's ``generate`` extension.

Tensors per task (model metadata states them):

| task | inputs | outputs |
| --- | --- | --- |
| embed | TEXT BYTES [N] | EMBEDDING FP32 [N, D] |
| classify | TEXT BYTES [N], optional TEXT_PAIR BYTES [N] | SCORES FP32 [N, L], LABEL BYTES [N] |
| rerank | QUERY BYTES [1], TEXT BYTES [N] | SCORE FP32 [N] |
| token-classify, fill-mask, zero-shot | TEXT BYTES [N] | RESULT BYTES [N] |
| question-answering | QUESTION BYTES [N], CONTEXT BYTES [N] | RESULT BYTES [N] |

``RESULT`` holds, per input, the JSON the HF Inference API dialect answers for it
(``routes/hf.py`` computes it). Request ``parameters`` carry the task's options, and
``parameters.task`` picks one task of a model that serves several. ``/v2/models/{m}``
may name ``m@alias``; ``/versions/{v}`` names a version. Triton's ``generate``
extension is ``triton_generate.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from squeezer import __version__
from squeezer.errors import (
    InvalidRequestError,
    ModelNotReadyError,
    TooManyInputsError,
)
from squeezer.server.errors import error_responses
from squeezer.server.jsonio import json_response, parse
from squeezer.server.registry import ServedModel
from squeezer.server.routes import hf, runtime_of
from squeezer.server.runtime import Phase, Runtime
from squeezer.server.schemas import hf as hf_schema
from squeezer.server.schemas import kserve
from squeezer.server.tensors import HEADER, InferRequest, decode, encode
from squeezer.tasks import ClassifyRequest, EmbedRequest, RerankRequest
from squeezer.tasks.classify import scores_by_label
from squeezer.types import Task, TruncationDirection

router = APIRouter(tags=["KServe v2 / Open Inference Protocol"])
_ERRORS = error_responses("/v2/models/{name}/infer")
_HF_SHAPED = (Task.TOKEN_CLASSIFY, Task.FILL_MASK, Task.ZERO_SHOT, Task.QUESTION_ANSWERING)


# -- health and metadata ------------------------------------------------------------------


@router.get("/v2/health/live", summary="Liveness (Open Inference Protocol)")
async def live(request: Request) -> Response:
    if runtime_of(request).phase is Phase.STOPPED:
        raise ModelNotReadyError("server has stopped")
    return json_response({"live": True})


@router.get("/v2/health/ready", summary="Readiness (Open Inference Protocol)")
async def ready(request: Request) -> Response:
    runtime = runtime_of(request)
    if not runtime.ready:
        raise ModelNotReadyError(f"server is {runtime.phase.value}")
    return json_response({"ready": True})


@router.get("/v2", summary="Server metadata (Open Inference Protocol)", responses=_ERRORS)
async def server_metadata(request: Request) -> Response:
    return json_response(
        {
            "name": "squeezer",
            "version": __version__,
            "extensions": ["model_repository", "binary_tensor_data", "generate"],
        }
    )


def model_of(runtime: Runtime, name: str, version: str | None) -> ServedModel:
    """``/v2/models/{name}[/versions/{version}]``'s model, leased to the request."""
    return runtime.registry.get(f"{name}:{version}" if version is not None else name)


def _tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


def _signature(model: ServedModel, task: Task) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    info = model.info
    text = _tensor("TEXT", "BYTES", [-1])
    if task is Task.EMBED:
        return [text], [_tensor("EMBEDDING", "FP32", [-1, info.hidden_size])]
    if task is Task.CLASSIFY:
        pair = {**_tensor("TEXT_PAIR", "BYTES", [-1]), "optional": True}
        outputs = [
            _tensor("SCORES", "FP32", [-1, len(info.labels)]),
            _tensor("LABEL", "BYTES", [-1]),
        ]
        return [text, pair], outputs
    if task is Task.RERANK:
        return [_tensor("QUERY", "BYTES", [1]), text], [_tensor("SCORE", "FP32", [-1])]
    if task is Task.QUESTION_ANSWERING:
        inputs = [_tensor("QUESTION", "BYTES", [-1]), _tensor("CONTEXT", "BYTES", [-1])]
        return inputs, [_tensor("RESULT", "BYTES", [-1])]
    if task is Task.GENERATE:
        return [_tensor("text_input", "BYTES", [1])], [_tensor("text_output", "BYTES", [1])]
    return [text], [_tensor("RESULT", "BYTES", [-1])]


async def _metadata(request: Request, name: str, version: str | None) -> Response:
    runtime = runtime_of(request)
    model = model_of(runtime, name, version)
    named = runtime.registry.named(model.name)
    inputs, outputs = _signature(model, model.main_task)
    return json_response(
        {
            "name": model.name,
            "versions": [v.version for v in named.versions.values() if v.serving],
            "platform": f"squeezer_{model.info.backend}",
            "inputs": inputs,
            "outputs": outputs,
            "parameters": {"tasks": [t.value for t in model.info.tasks]},
        }
    )


@router.get("/v2/models/{name}", summary="Model metadata", responses=_ERRORS)
async def model_metadata(request: Request, name: str) -> Response:
    return await _metadata(request, name, None)


@router.get("/v2/models/{name}/versions/{version}", summary="Version metadata", responses=_ERRORS)
async def version_metadata(request: Request, name: str, version: str) -> Response:
    return await _metadata(request, name, version)


@router.get("/v2/models/{name}/ready", summary="Model readiness", responses=_ERRORS)
async def model_ready(request: Request, name: str) -> Response:
    model_of(runtime_of(request), name, None)  # 404 unknown, 503 not serving
    return json_response({"name": name, "ready": True})


@router.get(
    "/v2/models/{name}/versions/{version}/ready", summary="Version readiness", responses=_ERRORS
)
async def version_ready(request: Request, name: str, version: str) -> Response:
    model_of(runtime_of(request), name, version)
    return json_response({"name": name, "ready": True})


# -- infer ----------------------------------------------------------------------------------


def _texts(req: InferRequest, name: str, *, required: bool = True) -> list[str]:
    tensor = req.inputs.get(name)
    if tensor is None:
        if required:
            raise InvalidRequestError(
                f"input {name!r} is required; inputs sent: {', '.join(req.inputs) or 'none'}",
                param=name,
            )
        return []
    if tensor.dtype != object:
        raise InvalidRequestError(f"input {name!r} must be BYTES", param=name)
    return [str(t) for t in tensor.ravel()]


def _task(runtime: Runtime, model: ServedModel, asked: str | None) -> Task:
    if asked is None:
        return model.main_task
    try:
        task = Task(asked)
    except ValueError:
        known = ", ".join(t.value for t in model.info.tasks)
        raise InvalidRequestError(
            f"parameters.task {asked!r}: this model serves {known}", param="task"
        ) from None
    runtime.registry.check(model, task)
    return task


async def _hf_results(
    runtime: Runtime, model: ServedModel, task: Task, req: InferRequest, options: dict[str, Any]
) -> list[Any]:
    """Each input's answer as the HF Inference API dialect gives it."""
    handler = hf.HANDLERS[task]
    if task is Task.QUESTION_ANSWERING:
        questions, contexts = _texts(req, "QUESTION"), _texts(req, "CONTEXT")
        if len(questions) != len(contexts):
            raise InvalidRequestError("QUESTION and CONTEXT must have the same length")
        out = []
        for question, context in zip(questions, contexts, strict=True):
            body = hf_schema.InferenceRequest(
                inputs={"question": question, "context": context}, parameters=options
            )
            out.append(orjson.loads((await handler(runtime, model, body)).body))
        return out
    body = hf_schema.InferenceRequest(inputs=_texts(req, "TEXT"), parameters=options)
    answer = orjson.loads((await handler(runtime, model, body)).body)
    return list(answer)


async def _infer(runtime: Runtime, model: ServedModel, req: InferRequest) -> dict[str, np.ndarray]:
    limit = runtime.settings.max_client_batch_size
    for name, tensor in req.inputs.items():
        if tensor.size > limit:
            raise TooManyInputsError(
                f"input {name!r} holds {tensor.size} elements; this server takes at most "
                f"{limit} per request (--max-client-batch-size)",
                param=name,
            )
    p = parse(req.parameters, kserve.InferParameters)
    task = _task(runtime, model, p.task)
    # The HF Inference API's parameters, for the tasks answered as its JSON.
    options = {
        k: v
        for k, v in req.parameters.items()
        if k not in ("task", "binary_data_output") and not k.startswith(("triton_", "sequence_"))
    }
    direction = TruncationDirection(p.truncation_direction.lower())
    if task is Task.EMBED:
        embed = EmbedRequest(
            inputs=_texts(req, "TEXT"),
            normalize=p.normalize,
            truncate=p.truncate,
            truncation_direction=direction,
            prompt_name=p.prompt_name,
            dimensions=p.dimensions,
        )
        vectors = (await runtime.embed(model, embed)).embeddings
        return {"EMBEDDING": np.asarray(vectors, dtype=np.float32)}
    if task is Task.CLASSIFY:
        texts, pairs = _texts(req, "TEXT"), _texts(req, "TEXT_PAIR", required=False)
        if pairs and len(pairs) != len(texts):
            raise InvalidRequestError("TEXT_PAIR must have as many elements as TEXT")
        inputs: list[str | tuple[str, str]] = (
            list(zip(texts, pairs, strict=True)) if pairs else list(texts)
        )
        rows = await runtime.classify(
            model,
            ClassifyRequest(
                inputs,
                top_k=None,
                function_to_apply=p.function_to_apply,
                truncate=p.truncate,
                truncation_direction=direction,
            ),
        )
        labels = list(model.info.labels)
        scores = scores_by_label(rows, labels)
        return {
            "SCORES": np.asarray(scores, dtype=np.float32).reshape(len(rows), len(labels)),
            "LABEL": np.array([row[0].label for row in rows], dtype=object),
        }
    if task is Task.RERANK:
        query = _texts(req, "QUERY")
        if len(query) != 1:
            raise InvalidRequestError("QUERY holds exactly one text", param="QUERY")
        rerank = RerankRequest(
            query[0],
            _texts(req, "TEXT"),
            raw_scores=p.raw_scores,
            truncate=p.truncate,
            truncation_direction=direction,
        )
        hits = (await runtime.rerank(model, rerank)).hits
        ordered = sorted(hits, key=lambda h: h.index)
        return {"SCORE": np.asarray([h.score for h in ordered], dtype=np.float32)}
    if task in _HF_SHAPED:
        results = await _hf_results(runtime, model, task, req, options)
        return {"RESULT": np.array([orjson.dumps(r).decode() for r in results], dtype=object)}
    raise InvalidRequestError(
        f"model {model.name!r} generates text: use POST /v2/models/{model.name}/generate"
    )


async def _infer_route(request: Request, name: str, version: str | None) -> Response:
    runtime = runtime_of(request)
    req = decode(await request.body(), request.headers.get(HEADER))
    model = model_of(runtime, name, version)
    outputs = await _infer(runtime, model, req)
    body, json_size = encode(req, model.name, model.version, outputs)
    if json_size is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER: str(json_size)})


@router.post(
    "/v2/models/{name}/infer", summary="Inference (Open Inference Protocol)", responses=_ERRORS
)
async def infer(request: Request, name: str) -> Response:
    return await _infer_route(request, name, None)


@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    summary="Inference on one version (Open Inference Protocol)",
    responses=_ERRORS,
)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer_route(request, name, version)
