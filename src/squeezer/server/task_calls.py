"""How one request of each task runs: tokenize (on the pool when big), compute through
the engine (in-process or over the ``--api-workers`` socket), finish, and record what
its access-log line, metrics and trace report.

``Runtime`` is a ``TaskCalls``: this half answers the routes' calls, the other
(``runtime.py``) owns what the server holds and its lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from squeezer.backends.heap import trimmed
from squeezer.backends.sampling import SamplingParams
from squeezer.config import Settings
from squeezer.engine.generation import GenerationRequest
from squeezer.engine.remote import EngineCalls
from squeezer.errors import TooManyInputsError, UnavailableError
from squeezer.server import tracing
from squeezer.server.observe import GenerationClock, current_record
from squeezer.server.registry import ModelRegistry, ServedModel
from squeezer.tasks import (
    ClassifyRequest,
    EmbedRequest,
    EmbedResult,
    EntityGroup,
    FillMaskRequest,
    LabelScore,
    MaskFill,
    QAAnswer,
    QARequest,
    RerankRequest,
    RerankResult,
    TokenClassifyRequest,
    TokenEntity,
    TokenInfo,
    ZeroShotRequest,
    ZeroShotResult,
)
from squeezer.tasks.generate import GenerateRequest, Generation, TextDelta, TextDone
from squeezer.types import EngineRequest, Task, TruncationDirection

#: Requests smaller than this (characters) are tokenized inline: a thread hop costs
#: more than tokenizing one sentence (~20 us in Rust).
_INLINE_TOKENIZE_CHARS = 2048
#: Requests larger than this (characters) give their freed heap back to the OS when
#: done (``backends/heap.py``): below it, what they free is reused by the next request.
_TRIM_HEAP_CHARS = 256_000


async def _resume(
    first: TextDelta | TextDone,
    rest: AsyncGenerator[TextDelta | TextDone, None],
    clock: GenerationClock,
) -> AsyncGenerator[TextDelta | TextDone, None]:
    """A text stream whose first event was already taken; closing it closes the rest
    (which cancels the engine's sequence). Its tokens are timed into the request's
    record (time to first token, inter-token gaps) as they pass."""
    async with contextlib.aclosing(rest):
        clock.observe(first)
        yield first
        async for event in rest:
            clock.observe(event)
            yield event


def _serving(model: ServedModel) -> None:
    """The request in hand runs ``model``: its access-log line, its trace and its
    ``X-Model-Version`` header say so, whether it is answered or refused from here on."""
    record = current_record()
    if record is not None:
        record.model, record.version = model.name, model.version
    tracing.annotate(model=model.name, model_version=model.version)


class TaskCalls:
    """The task calls routes make; the attributes below are the lifecycle's
    (``Runtime``) to set."""

    settings: Settings
    registry: ModelRegistry
    #: Where requests are computed: this process's engine, or the engine process.
    calls: EngineCalls
    _tokenize_pool: ThreadPoolExecutor

    def _check_accepting(self) -> None:
        """Raise ``UnavailableError`` unless new requests are taken (the lifecycle's)."""
        raise NotImplementedError

    def _deadline(self) -> float | None:
        timeout = self.settings.request_timeout
        return time.monotonic() + timeout if timeout > 0 else None

    def embed_model(self, name: str | None) -> ServedModel:
        return self.registry.get(name, Task.EMBED)

    async def _run(
        self, model: ServedModel, task: Task, request: Any, *, texts: Sequence[str]
    ) -> Any:
        """Prepare (tokenize), batch and compute, finish: one request of any task.

        Big requests are prepared and finished on the tokenizer pool, off the event
        loop (long contexts and windows cost milliseconds to post-process); a
        sentence or two inline, where a thread hop would cost more than the work."""
        self._check_accepting()
        self.registry.check(model, task)
        _serving(model)
        handler = model.tasks[task]
        size = sum(len(t) for t in texts)
        big = len(texts) > 8 or size > _INLINE_TOKENIZE_CHARS
        prepare, finish = handler.prepare, handler.finish
        if size > _TRIM_HEAP_CHARS:
            prepare, finish = trimmed(prepare), trimmed(finish)
        loop = asyncio.get_running_loop()
        began = time.time_ns()
        if big:
            items = await loop.run_in_executor(self._tokenize_pool, prepare, request)
        else:
            items = prepare(request)
        tracing.span("tokenize", began, time.time_ns(), inputs=len(texts), items=len(items))
        record = current_record()
        answer = await self.calls.run(
            EngineRequest(
                model=model.engine_key,
                items=list(items),
                deadline=self._deadline(),
                request_id=record.request_id if record is not None else "",
            )
        )
        results = answer.results
        if record is not None:
            record.add_work(model.name, sum(int(it.num_tokens) for it in items), answer.timing)
            tracing.work_spans(answer.timing)
        if big:
            return await loop.run_in_executor(self._tokenize_pool, finish, request, items, results)
        return finish(request, items, results)

    def _check_batch(self, count: int, param: str = "inputs") -> None:
        limit = self.settings.max_client_batch_size
        if count > limit:
            raise TooManyInputsError(
                f"batch size {count} > maximum allowed batch size {limit} "
                "(--max-client-batch-size)",
                param=param,
            )

    async def embed(self, model: ServedModel, request: EmbedRequest) -> EmbedResult:
        texts = [x for x in request.inputs if isinstance(x, str)]
        result: EmbedResult = await self._run(model, Task.EMBED, request, texts=texts)
        return result

    async def classify(
        self, model: ServedModel, request: ClassifyRequest
    ) -> list[list[LabelScore]]:
        self._check_batch(len(request.inputs))
        texts = [t for x in request.inputs for t in ((x,) if isinstance(x, str) else x)]
        result: list[list[LabelScore]] = await self._run(model, Task.CLASSIFY, request, texts=texts)
        return result

    async def rerank(self, model: ServedModel, request: RerankRequest) -> RerankResult:
        self._check_batch(len(request.texts), "texts")
        result: RerankResult = await self._run(
            model, Task.RERANK, request, texts=[request.query, *request.texts]
        )
        return result

    async def zero_shot(self, model: ServedModel, request: ZeroShotRequest) -> list[ZeroShotResult]:
        self._check_batch(len(request.inputs) * len(request.candidate_labels), "candidate_labels")
        result: list[ZeroShotResult] = await self._run(
            model, Task.ZERO_SHOT, request, texts=list(request.inputs)
        )
        return result

    async def token_classify(
        self, model: ServedModel, request: TokenClassifyRequest
    ) -> list[list[TokenEntity | EntityGroup]]:
        self._check_batch(len(request.inputs))
        result: list[list[TokenEntity | EntityGroup]] = await self._run(
            model, Task.TOKEN_CLASSIFY, request, texts=request.inputs
        )
        return result

    async def fill_mask(
        self, model: ServedModel, request: FillMaskRequest
    ) -> list[list[list[MaskFill]]]:
        self._check_batch(len(request.inputs))
        result: list[list[list[MaskFill]]] = await self._run(
            model, Task.FILL_MASK, request, texts=list(request.inputs)
        )
        return result

    async def generate(
        self, model: ServedModel, request: GenerateRequest, params: SamplingParams
    ) -> Generation:
        """Start generating; text events stream from the result as tokens are sampled.
        Limits and parameters are checked here, and the request's first event is
        awaited here too: whatever ends it before its first token (a deadline passed
        while it waited for a slot, a failed prefill) is a status of its own (504,
        424), not an error event inside a 200 stream."""
        self._check_accepting()
        self.registry.check(model, Task.GENERATE)
        _serving(model)
        task = model.generator
        assert task is not None, "generate models have a generator"
        began = time.time_ns()
        if request.text_size > _INLINE_TOKENIZE_CHARS:  # a long prompt or chat: off the loop
            loop = asyncio.get_running_loop()
            plan_it = trimmed(task.plan) if request.text_size > _TRIM_HEAP_CHARS else task.plan
            plan = await loop.run_in_executor(self._tokenize_pool, plan_it, request, params)
        else:
            plan = task.plan(request, params)
        tracing.span("tokenize", began, time.time_ns(), prompt_tokens=len(plan.prompt))
        clock = GenerationClock(current_record(), model.name)
        stream = await self.calls.open_stream(
            model.engine_key,
            GenerationRequest(
                plan.prompt,
                plan.max_new_tokens,
                plan.params,
                task.eos_ids,
                ignore_eos=request.ignore_eos,
                stop_ids=frozenset(request.stop_token_ids),
                deadline=self._deadline(),
            ),
        )
        events = task.text(stream, request, plan.prompt)
        clock.stream = stream
        try:
            first = await anext(events)
        except StopAsyncIteration:  # cannot happen (a TextDone always ends the text)
            raise UnavailableError("the generation ended before it started") from None
        return Generation(plan.prompt, plan.params, _resume(first, events, clock))

    async def question_answering(self, model: ServedModel, request: QARequest) -> list[QAAnswer]:
        result: list[QAAnswer] = await self._run(
            model,
            Task.QUESTION_ANSWERING,
            request,
            texts=[request.question, request.context],
        )
        return result

    async def similarity(
        self,
        model: ServedModel,
        source: str,
        sentences: list[str],
        *,
        truncate: bool = False,
        direction: TruncationDirection = TruncationDirection.RIGHT,
        prompt_name: str | None = None,
    ) -> npt.NDArray[np.float32]:
        """Cosine of ``source`` to each sentence (TEI ``/similarity``, HF
        sentence-similarity): normalized embeddings, one dot product each."""
        self._check_batch(len(sentences))
        request = EmbedRequest(
            inputs=[source, *sentences],
            truncate=truncate,
            truncation_direction=direction,
            prompt_name=prompt_name,
        )
        vectors = (await self.embed(model, request)).embeddings
        assert isinstance(vectors, np.ndarray), "pooled requests give one array"
        return vectors[1:] @ vectors[0]

    async def tokenize(
        self, model: ServedModel, texts: list[str], *, add_special_tokens: bool
    ) -> list[list[TokenInfo]]:
        self._check_accepting()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._tokenize_pool,
            lambda: model.tokenizer.tokenize(texts, add_special_tokens=add_special_tokens),
        )

    async def decode(
        self, model: ServedModel, ids: list[list[int]], *, skip_special_tokens: bool
    ) -> list[str]:
        self._check_accepting()
        return model.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
