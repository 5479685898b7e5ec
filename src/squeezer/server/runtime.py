"""Everything a running server holds: models, tasks, the engine, and its lifecycle.

Built from one ``Settings`` object with no process-global state, so several apps can
live in one process (tests do this) and a Ray Serve replica can build its own.
``start`` and ``stop`` are explicit lifecycle calls; the HTTP app only wires them to
its lifespan. The calls routes make per task are ``TaskCalls``' (``task_calls.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from enum import Enum

from squeezer.backends.device import (
    physical_cores,
    resolve_device,
)
from squeezer.config import Settings
from squeezer.engine import Engine, EngineLimits, EngineObserver
from squeezer.engine.generation import GenerationRequest
from squeezer.engine.remote import EngineCalls, RemoteEngine
from squeezer.errors import UnavailableError
from squeezer.server.loading import LoadedGenerator, ModelLoader, describe, prefill_tokens
from squeezer.server.registry import ModelRegistry, ServedModel
from squeezer.server.task_calls import TaskCalls
from squeezer.tasks import (
    EncoderItem,
    EncoderRunner,
    TokenVectorsHead,
)
from squeezer.tasks.generate import GenerateRequest
from squeezer.types import EngineRequest, ModelInfo
from squeezer.versions import library_versions, untested

log = logging.getLogger("squeezer")


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


class Runtime(TaskCalls):
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

    # requests (TaskCalls) ------------------------------------------------------

    def _check_accepting(self) -> None:
        if self.phase is not Phase.READY:
            raise UnavailableError(f"server is {self.phase.value}; not accepting new requests")
