"""Everything a running server holds: models, tasks, the engine, and its lifecycle.

Built from one ``Settings`` object with no process-global state, so several apps can
live in one process (tests do this) and a Ray Serve replica can build its own.
``start`` and ``stop`` are explicit lifecycle calls; the HTTP app only wires them to
its lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from squeezer.backends.device import (
    physical_cores,
    resolve_device,
)
from squeezer.backends.heap import trimmed
from squeezer.backends.sampling import SamplingParams
from squeezer.config import Settings
from squeezer.engine import Engine, EngineLimits, EngineObserver
from squeezer.engine.generation import GenerationRequest
from squeezer.engine.remote import EngineCalls, RemoteEngine
from squeezer.errors import TooManyInputsError, UnavailableError
from squeezer.server import tracing
from squeezer.server.loading import LoadedGenerator, ModelLoader, describe, prefill_tokens
from squeezer.server.observe import GenerationClock, current_record
from squeezer.server.registry import ModelRegistry, ServedModel
from squeezer.tasks import (
    ClassifyRequest,
    EmbedRequest,
    EmbedResult,
    EncoderItem,
    EncoderRunner,
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
    TokenVectorsHead,
    ZeroShotRequest,
    ZeroShotResult,
)
from squeezer.tasks.generate import GenerateRequest, Generation, TextDelta, TextDone
from squeezer.types import EngineRequest, ModelInfo, Task, TruncationDirection
from squeezer.versions import library_versions, untested

log = logging.getLogger("squeezer")


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


def _serving(model: str) -> None:
    """The request in hand runs ``model``: its access-log line and its trace say so,
    whether it is answered or refused from here on."""
    record = current_record()
    if record is not None:
        record.model = model
    tracing.annotate(model=model)


def log_versions() -> None:
    """One line with the versions that shape outputs, and a warning for each watched
    library outside the range squeezer is tested with (docs/compatibility.md)."""
    log.info("versions: %s", library_versions().line())
    for lib in untested():
        log.warning(
            "%s %s is outside the tested range %s: outputs and start-up may differ from "
            "what the suite checks; the locked set is requirements/lock.txt",
            lib.name,
            lib.version,
            lib.tested,
        )


#: Requests smaller than this (characters) are tokenized inline: a thread hop costs
#: more than tokenizing one sentence (~20 us in Rust).
_INLINE_TOKENIZE_CHARS = 2048
#: Requests larger than this (characters) give their freed heap back to the OS when
#: done (``backends/heap.py``): below it, what they free is reused by the next request.
_TRIM_HEAP_CHARS = 256_000
#: One CPU forward pass costs ~4.5 ms fixed + ~0.14 ms per padded token (MiniLM, 2
#: cores; benchmarks/batch_cost.py): the fixed part is worth ~32 tokens of padding.
_CPU_OVERHEAD_TOKENS = 32.0


def default_tokenizer_workers(settings: Settings) -> int:
    """One thread on CPU, where the cores belong to the forward pass; with a GPU the
    cores are free and tokenization is what keeps the card fed, so all but two (the
    event loop and the compute thread). The Rust batch tokenizer releases the GIL."""
    try:
        devices = {settings.device, *(m.device for m in settings.models if m.device)}
        on_gpu = any(resolve_device(d).startswith("cuda") for d in devices)
    except ValueError:  # reported when the model loads
        on_gpu = False
    return max(1, physical_cores() - 2) if on_gpu else 1


class Phase(str, Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class Runtime:
    """Loads the configured models, runs their requests through one engine."""

    def __init__(
        self,
        settings: Settings,
        *,
        observer: EngineObserver | None = None,
        remote: str | None = None,
    ) -> None:
        """``remote``: the engine process's socket. This runtime is then an API
        process's (``--api-workers``): it loads no weights, tokenizes and answers HTTP
        here, and sends the engine's calls there."""
        self.settings = settings
        self.registry = ModelRegistry(settings.default_models)
        self._loader = ModelLoader(settings)
        self.engine = Engine(
            EngineLimits(
                max_batch_tokens=settings.max_batch_tokens,
                max_batch_requests=settings.max_batch_requests,
                max_wait_ms=settings.max_wait_ms,
                max_concurrent_requests=settings.max_concurrent_requests,
            ),
            observer=observer,
        )
        self.remote = RemoteEngine(remote) if remote is not None else None
        #: Where requests are computed: this process's engine, or the engine process.
        self.calls: EngineCalls = self.remote or self.engine
        #: Threads tokenizing beside compute (``--tokenizer-workers``, else by device).
        self.tokenizer_workers = settings.tokenizer_workers or default_tokenizer_workers(settings)
        self._tokenize_pool = ThreadPoolExecutor(
            self.tokenizer_workers, thread_name_prefix="squeezer-tokenize"
        )
        self.phase = Phase.STARTING
        #: The event loop's time by which a drain must be over (set when one starts):
        #: ``stop`` gives the engine what is left of it.
        self.drain_deadline: float | None = None
        self.cold_start_s: float | None = None
        #: Wall-clock start time (``created`` in OpenAI's model list).
        self.started_at = time.time()

    # lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        t0 = time.perf_counter()
        if self.remote is not None:
            await self._start_remote(t0)
            return
        log_versions()  # the process that runs the models (API processes hold none)
        for spec in self.settings.models:
            info, backend = await asyncio.to_thread(self._loader.load, spec)
            served = describe(info, self.settings)
            self.registry.add(served)
            if isinstance(backend, LoadedGenerator):  # a causal LM: the generation scheduler
                generator = backend.backend
                self.engine.add_generator(
                    served.name,
                    generator,
                    device=served.info.device,
                    max_batch_total_tokens=min(
                        self.settings.max_batch_total_tokens or generator.token_budget,
                        generator.token_budget,
                    ),
                    max_concurrent_requests=self.settings.max_concurrent_requests,
                    max_prefill_tokens=prefill_tokens(self.settings, served.info.device),
                )
                self._log_loaded(served)
                continue
            self.engine.add_model(
                served.name,
                backend,
                EncoderRunner(
                    int(served.folder.config.get("pad_token_id") or 0),
                    token_type_ids=served.folder.token_type_ids,
                ),
                device=served.info.device,
                max_batch_tokens=spec.max_batch_tokens,
                max_batch_requests=spec.max_batch_requests,
                batch_overhead_tokens=self._overhead_tokens(served.info.device),
            )
            self._log_loaded(served)
        self.registry.check_defaults()
        await self.engine.start()
        if self.settings.warmup:
            await self._warm_up()
        self.cold_start_s = time.perf_counter() - t0
        self.phase = Phase.READY

    async def _start_remote(self, t0: float) -> None:
        """Connect to the engine process (already loaded and warm) and serve its models."""
        assert self.remote is not None
        await self.remote.connect(attempts=100)
        infos: list[ModelInfo] = await self.remote.call("models")
        for info in infos:
            self.registry.add(describe(info, self.settings))
        self.registry.check_defaults()
        self.cold_start_s = time.perf_counter() - t0
        self.phase = Phase.READY

    @staticmethod
    def _log_loaded(served: ServedModel) -> None:
        log.info(
            "loaded %s from %s: tasks=%s backend=%s device=%s dtype=%s max_input_length=%d",
            served.name,
            served.info.path,
            ",".join(t.value for t in served.info.tasks),
            served.info.backend,
            served.info.device,
            served.info.dtype,
            served.info.max_input_length,
        )

    def _overhead_tokens(self, device: str) -> float | None:
        if self.settings.batch_overhead_tokens is not None:
            return self.settings.batch_overhead_tokens
        return _CPU_OVERHEAD_TOKENS if device == "cpu" else None

    async def _warm_up(self) -> None:
        """One short and one full-length batch per model, so first requests are not slow.

        Warm-up runs the encoder (all but a head's last layer), whatever the tasks;
        a generation model prefills and decodes a few tokens."""
        head = TokenVectorsHead()
        for model in self.registry:
            if model.generator is not None:
                warm = GenerationRequest(model.generator.prompt_ids(GenerateRequest("warm up")), 4)
                async for _ in self.engine.generate(model.name, warm):
                    pass
                continue
            longest = " ".join(["warm"] * model.info.max_input_length)
            for texts in (["warm up"], [longest] * 4):
                tokens = model.tokenizer.encode(texts, truncate=True)
                items = [EncoderItem(t, head) for t in tokens]
                await self.engine.submit(EngineRequest(model=model.name, items=items))

    async def begin_drain(self) -> None:
        """Stop taking new work; what was accepted still completes."""
        if self.phase is Phase.READY:
            self.phase = Phase.DRAINING

    async def stop(self) -> None:
        self.phase = Phase.STOPPED if self.phase is Phase.STARTING else Phase.DRAINING
        if self.remote is not None:
            await self.remote.close()
        else:
            timeout = self.settings.shutdown_timeout
            if self.drain_deadline is not None:
                timeout = min(timeout, self.drain_deadline - asyncio.get_running_loop().time())
            await self.engine.stop(max(0.0, timeout))
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        self.phase = Phase.STOPPED

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def model_infos(self) -> list[ModelInfo]:
        return [m.info for m in self.registry]

    # requests ------------------------------------------------------------------

    def _check_accepting(self) -> None:
        if self.phase is not Phase.READY:
            raise UnavailableError(f"server is {self.phase.value}; not accepting new requests")

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
        _serving(model.name)
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
                model=model.name,
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
        _serving(model.name)
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
            model.name,
            GenerationRequest(
                plan.prompt,
                plan.max_new_tokens,
                plan.params,
                task.eos_ids,
                ignore_eos=request.ignore_eos,
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
