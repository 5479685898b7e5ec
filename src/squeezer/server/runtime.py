"""Everything a running server holds: models, tasks, the engine, and its lifecycle.

Built from one ``Settings`` object with no process-global state, so several apps can
live in one process (tests do this) and a Ray Serve replica can build its own.
``start`` and ``stop`` are explicit lifecycle calls; the HTTP app only wires them to
its lifespan. The calls routes make per task are ``TaskCalls``' (``task_calls.py``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Any

from squeezer.backends.device import (
    physical_cores,
    resolve_device,
)
from squeezer.config import Settings
from squeezer.engine import Engine, EngineLimits, EngineObserver
from squeezer.engine.remote import EngineCalls, EngineLink, RemoteEngine
from squeezer.errors import UnavailableError
from squeezer.server.lifecycle import ADMIN_OPS, Mirror, ModelManager
from squeezer.server.registry import ModelRegistry
from squeezer.server.task_calls import TaskCalls
from squeezer.types import ModelInfo
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
        remote: str | EngineLink | None = None,
    ) -> None:
        """``remote``: the engine process's socket, or another link to an engine held
        elsewhere (Ray Serve engine deployments). This runtime is then an API
        process's (``--api-workers``, a Ray Serve ingress): it loads no weights,
        tokenizes and answers HTTP here, and sends the engine's calls there."""
        self.settings = settings
        self.registry = ModelRegistry(settings.default_models)
        self.engine = Engine(
            EngineLimits(
                max_batch_tokens=settings.max_batch_tokens,
                max_batch_requests=settings.max_batch_requests,
                max_wait_ms=settings.max_wait_ms,
                max_concurrent_requests=settings.max_concurrent_requests,
            ),
            observer=observer,
        )
        self.remote: EngineLink | None = RemoteEngine(remote) if isinstance(remote, str) else remote
        #: Loads, swaps and unloads versions (the process that runs the models); an
        #: API process mirrors the engine process's versions instead.
        self.models = ModelManager(settings, self.registry, self.engine)
        self.mirror = Mirror(self.registry, settings) if remote is not None else None
        # A request for an evicted version brings it back (residency limits).
        if self.remote is not None:
            remote_engine = self.remote
            self.registry.on_evicted = lambda name, version: remote_engine.note(
                "load_soon", name, version
            )
        else:
            self.registry.on_evicted = self.models.load_soon
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
        await self.engine.start()
        await self.models.start()
        self.cold_start_s = time.perf_counter() - t0
        self.phase = Phase.READY

    async def _start_remote(self, t0: float) -> None:
        """Connect to the engine process (already loaded and warm) and serve its models."""
        assert self.remote is not None and self.mirror is not None
        self.remote.on_push = self._pushed
        await self.remote.connect(attempts=100)
        await self.mirror.apply(await self.remote.call("catalog"))
        self.registry.check_defaults()
        self.cold_start_s = time.perf_counter() - t0
        self.phase = Phase.READY

    async def _pushed(self, name: str, *args: Any) -> None:
        """What the engine process tells every API process (``lifecycle.Peers``)."""
        assert self.mirror is not None
        if name == "catalog":
            await self.mirror.apply(*args)
        elif name == "retire":
            await self.mirror.retire(*args)
        else:
            raise ValueError(f"unknown push {name!r}")

    async def admin(self, op: str, *args: Any) -> Any:
        """An operation of the model lifecycle (``ModelManager``'s ``ADMIN_OPS``), run
        where the models are: here, or in the engine process."""
        if op not in ADMIN_OPS:
            raise ValueError(f"unknown admin operation {op!r}")
        if self.remote is not None:
            return await self.remote.call("admin", op, *args)
        result = getattr(self.models, op)(*args)
        return await result if inspect.isawaitable(result) else result

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
        """Each model name's default version."""
        return [m.info for m in self.registry]

    # requests (TaskCalls) ------------------------------------------------------

    def _check_accepting(self) -> None:
        if self.phase is not Phase.READY:
            raise UnavailableError(f"server is {self.phase.value}; not accepting new requests")
