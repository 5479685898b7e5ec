"""TEI 1.9's routes: ``/embed``, ``/embed_all``, ``/similarity``, ``/tokenize``,
``/decode`` on the default embedding model, ``/predict`` on the default classifier and
``/rerank`` on the default reranker. TEI serves one model; these routes name none."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from squeezer.errors import EmptyInputError, InvalidRequestError, TooManyInputsError
from squeezer.server.errors import error_responses
from squeezer.server.jsonio import body_schema, json_response, read_json
from squeezer.server.routes import runtime_of
from squeezer.server.schemas import tei
from squeezer.tasks import ClassifyRequest, EmbedRequest, RerankRequest
from squeezer.types import Task

router = APIRouter(tags=["TEI"])
_ERRORS = error_responses("/embed")


def as_batch(inputs: tei.TeiInput, max_client_batch_size: int) -> list[str] | list[list[int]]:
    """TEI's input forms as a list of inputs; a flat list of ints is ONE id sequence."""
    if isinstance(inputs, str):
        batch: list[str] | list[list[int]] = [inputs]
    elif inputs and all(isinstance(x, int) for x in inputs):
        batch = [inputs]  # type: ignore[list-item,assignment]
    else:
        batch = inputs  # type: ignore[assignment]
    if len(batch) > max_client_batch_size:
        raise TooManyInputsError(
            f"batch size {len(batch)} > maximum allowed batch size {max_client_batch_size} "
            "(--max-client-batch-size)",
            param="inputs",
        )
    return batch


def embed_request(
    body: tei.EmbedRequest | tei.EmbedAllRequest, max_client_batch_size: int, *, pooled: bool
) -> EmbedRequest:
    return EmbedRequest(
        inputs=as_batch(body.inputs, max_client_batch_size),
        normalize=getattr(body, "normalize", True),
        truncate=bool(body.truncate),
        truncation_direction=tei.direction(body.truncation_direction),
        prompt_name=body.prompt_name,
        pooled=pooled,
        dimensions=getattr(body, "dimensions", None),
    )


@router.post(
    "/embed",
    summary="Pooled embeddings of the default embedding model",
    openapi_extra=body_schema(tei.EmbedRequest),
    responses={200: {"model": list[list[float]]}, **_ERRORS},
)
async def embed(request: Request) -> Response:
    return await _embed(request, tei.EmbedRequest, pooled=True)


async def _embed(
    request: Request, schema: type[tei.EmbedRequest | tei.EmbedAllRequest], *, pooled: bool
) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, schema)
    req = embed_request(body, runtime.settings.max_client_batch_size, pooled=pooled)
    result = await runtime.embed(runtime.embed_model(None), req)
    return json_response(result.embeddings)


@router.post(
    "/embed_all",
    summary="Every token's embedding, without pooling",
    openapi_extra=body_schema(tei.EmbedAllRequest),
    responses={200: {"model": list[list[list[float]]]}, **_ERRORS},
)
async def embed_all(request: Request) -> Response:
    return await _embed(request, tei.EmbedAllRequest, pooled=False)


@router.post(
    "/similarity",
    summary="Cosine similarity of a source sentence to each of several sentences",
    openapi_extra=body_schema(tei.SimilarityRequest),
    responses={200: {"model": list[float]}, **_ERRORS},
)
async def similarity(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, tei.SimilarityRequest)
    params = body.parameters or tei.SimilarityParameters()
    scores = await runtime.similarity(
        runtime.embed_model(None),
        body.inputs.source_sentence,
        body.inputs.sentences,
        truncate=bool(params.truncate),
        direction=tei.direction(params.truncation_direction),
        prompt_name=params.prompt_name,
    )
    return json_response(scores)


@router.post(
    "/tokenize",
    summary="Tokens of each input, with their text and character offsets",
    openapi_extra=body_schema(tei.TokenizeRequest),
    responses={200: {"model": list[list[tei.SimpleToken]]}, **_ERRORS},
)
async def tokenize(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, tei.TokenizeRequest)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    as_batch(texts, runtime.settings.max_client_batch_size)
    model = runtime.embed_model(None)
    if model.embed is not None:  # the same prompt /embed would prepend
        prefix = model.embed.prompt(body.prompt_name)
        texts = [prefix + t for t in texts]
    tokens = await runtime.tokenize(model, texts, add_special_tokens=body.add_special_tokens)
    return json_response(tokens)  # orjson writes the TokenInfo dataclasses as objects


@router.post(
    "/decode",
    summary="Text of token ids",
    openapi_extra=body_schema(tei.DecodeRequest),
    responses={200: {"model": list[str]}, **_ERRORS},
)
async def decode(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, tei.DecodeRequest)
    ids = [body.ids] if body.ids and isinstance(body.ids[0], int) else body.ids
    if not ids or any(len(x) == 0 for x in ids):  # type: ignore[arg-type]
        raise EmptyInputError("`ids` cannot be empty", param="ids")
    model = runtime.embed_model(None)
    texts = await runtime.decode(
        model,
        ids,  # type: ignore[arg-type]
        skip_special_tokens=body.skip_special_tokens,
    )
    return json_response(texts)


def predict_inputs(inputs: tei.PredictInput) -> tuple[list[str | tuple[str, str]], bool]:
    """TEI's predict inputs as a list, and whether they were a batch.

    As TEI reads them: a string is one input, a list of two strings is ONE pair, and a
    list of lists is a batch of texts ([text]) and pairs ([text, text_pair])."""
    shape = (
        "expected a string, a pair of strings [string, string] or a batch of mixed "
        "strings and pairs [[string], [string, string], ...]"
    )
    if isinstance(inputs, str):
        return [inputs], False
    if inputs and all(isinstance(x, str) for x in inputs):
        if len(inputs) > 2:
            raise InvalidRequestError(
                f"inputs: invalid length {len(inputs)}, {shape}", param="inputs"
            )
        flat = [str(x) for x in inputs]
        return [flat[0] if len(flat) == 1 else (flat[0], flat[1])], False
    batch: list[str | tuple[str, str]] = []
    for x in inputs:
        if not isinstance(x, list) or len(x) not in (1, 2):
            raise InvalidRequestError(
                f"inputs: invalid batch element {x!r}, {shape}", param="inputs"
            )
        batch.append(str(x[0]) if len(x) == 1 else (str(x[0]), str(x[1])))
    if not batch:
        raise InvalidRequestError(f"inputs: invalid length 0, {shape}", param="inputs")
    return batch, True


@router.post(
    "/predict",
    summary="Labels and scores of the default classifier, for texts and pairs",
    openapi_extra=body_schema(tei.PredictRequest),
    responses={200: {"model": list[tei.Prediction] | list[list[tei.Prediction]]}, **_ERRORS},
)
async def predict(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, tei.PredictRequest)
    inputs, is_batch = predict_inputs(body.inputs)
    model = runtime.registry.default_for(Task.CLASSIFY)
    # TEI's scores: softmax over several labels, sigmoid of a single one, whatever
    # the config's problem_type says.
    activation = "sigmoid" if len(model.info.labels) == 1 else "softmax"
    req = ClassifyRequest(
        inputs=inputs,
        top_k=None,
        function_to_apply="none" if body.raw_scores else activation,
        truncate=bool(body.truncate),
        truncation_direction=tei.direction(body.truncation_direction),
    )
    results = await runtime.classify(model, req)
    return json_response(results if is_batch else results[0])


@router.post(
    "/rerank",
    summary="Texts ranked by relevance to a query, by the default cross-encoder",
    openapi_extra=body_schema(tei.RerankRequest),
    responses={200: {"model": list[tei.Rank]}, **_ERRORS},
)
async def rerank(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, tei.RerankRequest)
    if not body.texts:
        raise EmptyInputError("`texts` cannot be empty", param="texts")
    req = RerankRequest(
        query=body.query,
        texts=body.texts,
        raw_scores=body.raw_scores,
        return_text=body.return_text,
        truncate=bool(body.truncate),
        truncation_direction=tei.direction(body.truncation_direction),
    )
    result = await runtime.rerank(runtime.registry.default_for(Task.RERANK), req)
    return json_response(
        [
            {"index": h.index, "score": h.score, **({"text": h.text} if body.return_text else {})}
            for h in result.hits
        ]
    )
