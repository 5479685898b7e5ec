"""The Hugging Face Inference API: ``{"inputs", "parameters"}`` posted to a URL.

The URL chooses the model (``POST /`` the default model, ``/models/{name}`` that one)
and the task (the model's main task, or ``/pipeline/{task}/{name}`` /
``/models/{name}/pipeline/{task}`` for a model with several). Responses have the
shapes HF Inference Endpoints give for the same task, which ``InferenceClient`` parses:
the pipelines' shapes, except that one text classified answers ``[[labels]]`` (all
labels unless ``top_k``) and zero-shot answers ``[{label, score}]`` per text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from squeezer.errors import InvalidRequestError, TaskNotSupportedError, TooManyInputsError
from squeezer.server.errors import error_responses
from squeezer.server.jsonio import body_schema, json_response, parse, read_body, read_json
from squeezer.server.registry import ServedModel
from squeezer.server.routes import runtime_of, tgi
from squeezer.server.routes.tei import as_batch
from squeezer.server.runtime import Runtime
from squeezer.server.schemas import hf, tei
from squeezer.tasks import (
    ClassifyRequest,
    EmbedRequest,
    FillMaskRequest,
    QARequest,
    TokenClassifyRequest,
    ZeroShotRequest,
)
from squeezer.tasks.token_classify import DEFAULT_AGGREGATION
from squeezer.tasks.zero_shot import DEFAULT_TEMPLATE
from squeezer.types import Task, TruncationDirection

router = APIRouter(tags=["HF Inference API"])

#: HF pipeline task names -> squeezer task.
_PIPELINE_TASKS = {
    "feature-extraction": Task.EMBED,
    "sentence-embeddings": Task.EMBED,
    "sentence-similarity": Task.EMBED,
    "text-classification": Task.CLASSIFY,
    "sentiment-analysis": Task.CLASSIFY,
    "text-ranking": Task.RERANK,
    "token-classification": Task.TOKEN_CLASSIFY,
    "ner": Task.TOKEN_CLASSIFY,
    "fill-mask": Task.FILL_MASK,
    "question-answering": Task.QUESTION_ANSWERING,
    "zero-shot-classification": Task.ZERO_SHOT,
    "text-generation": Task.GENERATE,
}
#: ``POST /`` answers errors as TEI's routes do; ``/models/...`` and ``/pipeline/...``
#: as the HF Inference API (``server.errors``).
_ROOT_ERRORS = error_responses("/")
_ERRORS = error_responses("/models/{name}")


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


def _texts(inputs: Any, max_batch: int) -> tuple[list[str], bool]:
    """A string or a list of strings, and whether it was a list."""
    if isinstance(inputs, str):
        return [inputs], False
    if isinstance(inputs, list) and inputs and all(isinstance(x, str) for x in inputs):
        if len(inputs) > max_batch:
            raise TooManyInputsError(
                f"batch size {len(inputs)} > maximum allowed batch size {max_batch} "
                "(--max-client-batch-size)",
                param="inputs",
            )
        return list(inputs), True
    raise InvalidRequestError("inputs must be a string or a list of strings", param="inputs")


def _one_or_many(results: list[Any], is_batch: bool) -> Any:
    return results if is_batch else results[0]


async def _text_classification(
    runtime: Runtime, model: ServedModel, body: hf.InferenceRequest
) -> Response:
    params = parse(body.parameters or {}, hf.TextClassificationParameters)
    raw = body.inputs
    single = isinstance(raw, str | dict)
    items = [raw] if single else raw
    if not isinstance(items, list) or not items:
        raise InvalidRequestError(
            'inputs must be a text, a {"text", "text_pair"} pair, or a list of them',
            param="inputs",
        )
    inputs: list[str | tuple[str, str]] = []
    for x in items:
        if isinstance(x, str):
            inputs.append(x)
        else:
            pair = parse(x, hf.TextPair)
            inputs.append((pair.text, pair.text_pair))
    req = ClassifyRequest(
        inputs=inputs,
        top_k=params.top_k,
        function_to_apply=params.function_to_apply,
        truncate=params.truncate,
        truncation_direction=_direction(params.truncation_direction),
    )
    # One input answers [[labels...]], as the HF Inference API (and InferenceClient).
    return json_response(await runtime.classify(model, req))


async def _token_classification(
    runtime: Runtime, model: ServedModel, body: hf.InferenceRequest
) -> Response:
    params = parse(body.parameters or {}, hf.TokenClassificationParameters)
    texts, is_batch = _texts(body.inputs, runtime.settings.max_client_batch_size)
    req = TokenClassifyRequest(
        inputs=texts,
        aggregation_strategy=params.aggregation_strategy or DEFAULT_AGGREGATION,
        ignore_labels=params.ignore_labels,
        stride=params.stride,
    )
    return json_response(_one_or_many(await runtime.token_classify(model, req), is_batch))


async def _fill_mask(runtime: Runtime, model: ServedModel, body: hf.InferenceRequest) -> Response:
    params = parse(body.parameters or {}, hf.FillMaskParameters)
    texts, is_batch = _texts(body.inputs, runtime.settings.max_client_batch_size)
    targets = [params.targets] if isinstance(params.targets, str) else params.targets
    req = FillMaskRequest(
        inputs=texts,
        top_k=params.top_k,
        targets=targets,
        truncate=params.truncate,
        truncation_direction=_direction(params.truncation_direction),
    )
    # As the pipeline: one mask gives a list of fills, several masks a list per mask.
    per_input = [m[0] if len(m) == 1 else m for m in await runtime.fill_mask(model, req)]
    return json_response(_one_or_many(per_input, is_batch))


async def _zero_shot(runtime: Runtime, model: ServedModel, body: hf.InferenceRequest) -> Response:
    if not body.parameters or "candidate_labels" not in body.parameters:
        raise InvalidRequestError(
            "parameters.candidate_labels is required", param="candidate_labels"
        )
    params = parse(body.parameters, hf.ZeroShotParameters)
    texts, is_batch = _texts(body.inputs, runtime.settings.max_client_batch_size)
    labels = params.candidate_labels
    if isinstance(labels, str):
        labels = [x.strip() for x in labels.split(",") if x.strip()]
    req = ZeroShotRequest(
        inputs=texts,
        candidate_labels=labels,
        multi_label=params.multi_label,
        hypothesis_template=params.hypothesis_template or DEFAULT_TEMPLATE,
        truncate=params.truncate,
        truncation_direction=_direction(params.truncation_direction),
    )
    # The HF Inference API's shape (what InferenceClient parses): [{label, score}, ...]
    # per input, best first; the pipeline's {sequence, labels, scores} holds the same.
    results = [
        [{"label": label, "score": score} for label, score in zip(r.labels, r.scores, strict=True)]
        for r in await runtime.zero_shot(model, req)
    ]
    return json_response(_one_or_many(results, is_batch))


async def _question_answering(
    runtime: Runtime, model: ServedModel, body: hf.InferenceRequest
) -> Response:
    params = parse(body.parameters or {}, hf.QuestionAnsweringParameters)
    inputs = parse(body.inputs, hf.QuestionAnsweringInput)
    req = QARequest(
        question=inputs.question,
        context=inputs.context,
        top_k=params.top_k,
        max_answer_len=params.max_answer_len,
        doc_stride=params.doc_stride,
        max_seq_len=params.max_seq_len,
        max_question_len=params.max_question_len,
        handle_impossible_answer=params.handle_impossible_answer,
        align_to_words=params.align_to_words,
    )
    answers = await runtime.question_answering(model, req)
    # As the pipeline: top_k=1 answers one object, more a list.
    return json_response(answers[0] if params.top_k == 1 and answers else answers)


_Handler = Callable[[Runtime, ServedModel, hf.InferenceRequest], Awaitable[Response]]
#: Each task's HF Inference API answer (the KServe dialect's ``RESULT`` reuses them).
HANDLERS: dict[Task, _Handler] = {
    Task.EMBED: _feature_extraction,
    Task.CLASSIFY: _text_classification,
    Task.RERANK: _text_classification,
    Task.ZERO_SHOT: _zero_shot,
    Task.TOKEN_CLASSIFY: _token_classification,
    Task.FILL_MASK: _fill_mask,
    Task.QUESTION_ANSWERING: _question_answering,
}


async def _run(
    runtime: Runtime, model: ServedModel, pipeline: str | None, request: Request
) -> Response:
    if Task.GENERATE in model.info.tasks and pipeline in (None, "text-generation"):
        return await tgi.compat_generate(runtime, model, await read_body(request), request)
    body = await read_json(request, hf.InferenceRequest)
    if pipeline is None:
        task = model.main_task
        # An NLI model classifies, unless the body is zero-shot-shaped (the client
        # sends no task; the parameters say it).
        if Task.ZERO_SHOT in model.info.tasks and "candidate_labels" in (body.parameters or {}):
            task = Task.ZERO_SHOT
    else:
        task = _pipeline_task(pipeline)
        runtime.registry.check(model, task)
        if pipeline == "sentence-similarity":
            return await _similarity(runtime, model, body)
    handler = HANDLERS.get(task)
    if handler is None:
        raise TaskNotSupportedError(
            f"model {model.name!r} serves {task.value!r}, which this server does not run "
            "over the HF Inference API"
        )
    return await handler(runtime, model, body)


def _pipeline_task(pipeline: str) -> Task:
    task = _PIPELINE_TASKS.get(pipeline)
    if task is None:
        raise TaskNotSupportedError(
            f"unknown pipeline {pipeline!r}; pipelines: {', '.join(sorted(_PIPELINE_TASKS))}",
            param="pipeline",
        )
    return task


@router.post(
    "/",
    summary="Run the default model's main task (HF Inference API)",
    openapi_extra=body_schema(hf.InferenceRequest),
    responses=_ROOT_ERRORS,
)
async def root(request: Request) -> Response:
    runtime = runtime_of(request)
    served = runtime.registry
    if served.serving(Task.GENERATE):
        data = await read_body(request)
        only_generation = len(served.serving(Task.GENERATE)) == len(served)
        if only_generation or tgi.is_generation_body(data):
            return await tgi.compat_generate(
                runtime, served.default_for(Task.GENERATE), data, request
            )
    if served.serving(Task.EMBED):
        model = served.default_for(Task.EMBED)
    else:  # the first model that is not a causal LM
        model = next(m for m in served if Task.GENERATE not in m.info.tasks)
    return await _run(runtime, model, None, request)


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
