"""The rerank API of Cohere and Jina, as vLLM and Infinity serve it: ``POST /v1/rerank``.

Errors take OpenAI's shape, as on vLLM (the path decides, ``server.errors``). Only a
cross-encoder reranks; asking an embedding model is a 400 that names the models that
can.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from squeezer.errors import EmptyInputError
from squeezer.server.errors import error_responses
from squeezer.server.jsonio import body_schema, json_response, read_json
from squeezer.server.routes import runtime_of
from squeezer.server.schemas import rerank as schema
from squeezer.tasks import RerankRequest
from squeezer.types import Task

router = APIRouter(tags=["Rerank (Cohere/Jina)"])
_ERRORS = error_responses("/v1/rerank")


@router.post(
    "/v1/rerank",
    summary="Documents ranked by relevance to a query (Cohere/Jina rerank API)",
    openapi_extra=body_schema(schema.RerankRequest),
    responses={200: {"model": schema.RerankResponse}, **_ERRORS},
)
async def rerank(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await read_json(request, schema.RerankRequest)
    if not body.documents:
        raise EmptyInputError("`documents` cannot be empty", param="documents")
    model = runtime.registry.get(body.model, Task.RERANK)
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    req = RerankRequest(
        query=body.query,
        texts=texts,
        raw_scores=body.raw_scores,
        top_n=body.top_n or None,
        truncate=body.truncate,
    )
    result = await runtime.rerank(model, req)
    tokens = result.prompt_tokens
    return json_response(
        {
            "id": f"rerank-{uuid.uuid4().hex}",
            "object": "rerank",
            "model": model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": [
                {
                    "index": h.index,
                    "relevance_score": h.score,
                    **({"document": {"text": texts[h.index]}} if body.return_documents else {}),
                }
                for h in result.hits
            ],
        }
    )
