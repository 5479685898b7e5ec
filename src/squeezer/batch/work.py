"""What one row of a batch job becomes: the same tasks and engine a server runs,
called in-process.

Task rows (``--task embed | classify | rerank | generate``) call the runtime's task
calls directly, one request per row: the engine's batcher groups the rows in flight
into token-budget batches (generation: continuous batching), as it groups a server's
requests. OpenAI batch lines go through the server's own routes in-process (an ASGI
call, no socket), so a line's answer is exactly what ``POST url`` with that body
answers a client, validation and errors included.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from squeezer.backends.sampling import SamplingParams
from squeezer.batch.rows import Row
from squeezer.errors import InvalidRequestError, SqueezerError
from squeezer.server.registry import ServedModel
from squeezer.server.runtime import Runtime
from squeezer.tasks.classify import ClassifyRequest
from squeezer.tasks.embed import EmbedRequest
from squeezer.tasks.generate import GenerateRequest, TextDone
from squeezer.tasks.rerank import RerankRequest
from squeezer.types import Task

#: The routes an OpenAI batch line may name (``vllm run-batch``'s set).
OPENAI_URLS = ("/v1/embeddings", "/v1/chat/completions", "/v1/completions")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """The columns and parameters of a task job (part of its resume key)."""

    task: Task
    text_column: str = "text"
    pair_column: str | None = None
    normalize: bool = True
    truncate: bool = False
    max_new_tokens: int = 256


@dataclass(frozen=True, slots=True)
class Outcome:
    """A row's result (JSON-able) or the reason it failed, and the tokens it took."""

    result: dict[str, Any] | None
    error: str | None = None
    tokens: int = 0

    def record(self, row: Row) -> dict[str, Any]:
        return {"id": row.id, "index": row.index, "result": self.result, "error": self.error}


Worker = Callable[[Row], Awaitable[Outcome]]


def _text(row: Row, column: str) -> str:
    value = row.record.get(column)
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"column {column!r} is missing or not a non-empty string")
    return value


def task_worker(runtime: Runtime, model: ServedModel, options: TaskOptions) -> Worker:
    """One row of ``options.task`` through ``model``."""

    async def embed(row: Row) -> Outcome:
        request = EmbedRequest(
            [_text(row, options.text_column)],
            normalize=options.normalize,
            truncate=options.truncate,
        )
        result = await runtime.embed(model, request)
        vector = [float(x) for x in result.embeddings[0]]
        return Outcome({"embedding": vector}, tokens=result.prompt_tokens)

    async def classify(row: Row) -> Outcome:
        text = _text(row, options.text_column)
        pair = _text(row, options.pair_column) if options.pair_column else None
        request = ClassifyRequest(
            [text if pair is None else (text, pair)], top_k=None, truncate=options.truncate
        )
        (labels,) = await runtime.classify(model, request)
        return Outcome({"labels": [{"label": s.label, "score": s.score} for s in labels]})

    async def rerank(row: Row) -> Outcome:
        if options.pair_column is None:
            raise InvalidRequestError("rerank rows are (query, text) pairs: give --pair-column")
        request = RerankRequest(
            query=_text(row, options.text_column),
            texts=[_text(row, options.pair_column)],
            truncate=options.truncate,
        )
        result = await runtime.rerank(model, request)
        return Outcome({"score": float(result.hits[0].score)})

    async def generate(row: Row) -> Outcome:
        request = GenerateRequest(
            prompt=_text(row, options.text_column), max_new_tokens=options.max_new_tokens
        )
        generation = await runtime.generate(model, request, SamplingParams())  # greedy
        text, done = [], None
        async for event in generation.events:
            if isinstance(event, TextDone):
                done = event
            else:
                text.append(event.text)
        assert done is not None
        result = {"text": "".join(text), "finish_reason": done.finish.openai}
        return Outcome(result, tokens=done.completion_tokens)

    run = {Task.EMBED: embed, Task.CLASSIFY: classify, Task.RERANK: rerank}.get(
        options.task, generate
    )

    async def work(row: Row) -> Outcome:
        if "_unreadable" in row.record:
            return Outcome(None, str(row.record["_unreadable"]))
        try:
            return await run(row)
        except SqueezerError as e:
            return Outcome(None, f"{type(e).__name__}: {e}")

    return work


def openai_worker(client: httpx.AsyncClient) -> Worker:
    """One OpenAI batch line through the server's own route, answered in OpenAI's
    batch output shape (``response.status_code`` and ``body``; an error of the line
    itself, such as a URL no route serves, in ``error``)."""

    async def work(row: Row) -> Outcome:
        line = row.record
        request_id = f"batch_req_{uuid.uuid4().hex}"
        url, method, body = line.get("url"), line.get("method", "POST"), line.get("body")
        problem = None
        if "_unreadable" in line:
            problem = str(line["_unreadable"])
        elif method != "POST" or url not in OPENAI_URLS:
            problem = f"{method} {url}: batch lines may POST to {', '.join(OPENAI_URLS)}"
        elif not isinstance(body, dict):
            problem = "'body' must be a JSON object"
        elif body.get("stream"):
            problem = "'stream' is not available in a batch: the output holds whole answers"
        if problem is not None:
            error = {"code": "invalid_request", "message": problem}
            return Outcome(_batch_line(line, request_id, None, error), problem)
        assert isinstance(url, str) and isinstance(body, dict)
        reply = await client.post(url, json=body)
        answer = reply.json()
        response = {"status_code": reply.status_code, "request_id": request_id, "body": answer}
        failed = None if reply.status_code == 200 else str(answer.get("error", answer))
        tokens = int((answer.get("usage") or {}).get("total_tokens", 0)) if not failed else 0
        return Outcome(_batch_line(line, request_id, response, None), failed, tokens)

    return work


def _batch_line(
    line: dict[str, Any],
    request_id: str,
    response: dict[str, Any] | None,
    error: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "custom_id": line.get("custom_id"),
        "response": response,
        "error": error,
    }
