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
may name ``m@alias``; ``/versions/{v}`` names a version.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from squeezer import __version__
from squeezer.backends.sampling import SamplingParams
from squeezer.errors import InvalidRequestError, ModelNotReadyError, TaskNotSupportedError
from squeezer.server.errors import error_responses
from squeezer.server.jsonio import json_response, read_body
from squeezer.server.registry import ServedModel
from squeezer.server.routes import hf, runtime_of
from squeezer.server.runtime import Phase, Runtime
from squeezer.server.schemas import hf as hf_schema
from squeezer.server.streaming import error_event, random_seed, sse_event, sse_response
from squeezer.server.tensors import HEADER, InferRequest, decode, encode
from squeezer.tasks import ClassifyRequest, EmbedRequest, RerankRequest
from squeezer.tasks.generate import GenerateRequest, TextDelta
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


def _model(runtime: Runtime, name: str, version: str | None) -> ServedModel:
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
    model = _model(runtime, name, version)
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
    _model(runtime_of(request), name, None)  # 404 unknown, 503 not serving
    return json_response({"name": name, "ready": True})


@router.get(
    "/v2/models/{name}/versions/{version}/ready", summary="Version readiness", responses=_ERRORS
)
async def version_ready(request: Request, name: str, version: str) -> Response:
    _model(runtime_of(request), name, version)
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


def _task(model: ServedModel, parameters: dict[str, Any]) -> Task:
    asked = parameters.get("task")
    if asked is None:
        return model.main_task
    try:
        task = Task(str(asked))
    except ValueError:
        known = ", ".join(t.value for t in model.info.tasks)
        raise InvalidRequestError(f"parameters.task {asked!r}: this model serves {known}") from None
    if task not in model.info.tasks:
        raise TaskNotSupportedError(
            f"model {model.name!r} does not serve {task.value!r}; it serves "
            + ", ".join(t.value for t in model.info.tasks)
        )
    return task


def _direction(parameters: dict[str, Any]) -> TruncationDirection:
    value = str(parameters.get("truncation_direction", "right")).lower()
    try:
        return TruncationDirection(value)
    except ValueError:
        raise InvalidRequestError(f"truncation_direction {value!r}: left or right") from None


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
    parameters = dict(req.parameters)
    task = _task(model, parameters)
    options = {
        k: v
        for k, v in parameters.items()
        if k not in ("task", "binary_data_output") and not k.startswith(("triton_", "sequence_"))
    }
    truncate = bool(options.get("truncate", False))
    if task is Task.EMBED:
        embed = EmbedRequest(
            inputs=_texts(req, "TEXT"),
            normalize=bool(options.get("normalize", True)),
            truncate=truncate,
            truncation_direction=_direction(options),
            prompt_name=options.get("prompt_name"),
            dimensions=options.get("dimensions"),
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
                function_to_apply=options.get("function_to_apply"),
                truncate=truncate,
                truncation_direction=_direction(options),
            ),
        )
        labels = list(model.info.labels)
        scores = [[{s.label: s.score for s in row}[label] for label in labels] for row in rows]
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
            raw_scores=bool(options.get("raw_scores", False)),
            truncate=truncate,
            truncation_direction=_direction(options),
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
    model = _model(runtime, name, version)
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


# -- Triton's generate extension -------------------------------------------------------

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
    model = _model(runtime, name, version)
    runtime.registry.check(model, Task.GENERATE)
    generation = await runtime.generate(model, gen_request, params)
    head = {"model_name": model.name, "model_version": model.version}
    prefix = (gen_request.prompt or "") if with_prompt else ""
    if not stream:
        text = [prefix]
        async for event in generation.events:
            if isinstance(event, TextDelta):
                text.append(event.text)
        return json_response({**head, "text_output": "".join(text)})
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
