"""The API processes (``--api-workers``) as the lifecycle sees them: ``Peers`` on the
engine process's side, ``Mirror`` on each API process's. An API process resolves
requests by its own copy of the versions and aliases; the engine process publishes
every change and waits until each API process has built what the change needs (a
new load's tokenizer and tasks) and flipped, and asks each to report when no request
of its holds a load being retired.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from squeezer.config import Settings
from squeezer.server.lifecycle.status import ModelStatus
from squeezer.server.loading import describe
from squeezer.server.registry import ModelRegistry, ServedModel, VersionState


class Peers(Protocol):
    """The API processes in front of this engine (none without ``--api-workers``)."""

    async def publish(self, snapshot: list[ModelStatus]) -> None:
        """Returns once every API process resolves by ``snapshot``."""

    async def retire(self, engine_key: str, timeout: float) -> None:
        """Returns once no API process's request holds load ``engine_key``."""


class NoPeers:
    async def publish(self, snapshot: list[ModelStatus]) -> None:
        return None

    async def retire(self, engine_key: str, timeout: float) -> None:
        return None


class Mirror:
    """An API process's copy of the engine process's versions and aliases."""

    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self._retiring: dict[str, ServedModel] = {}
        #: Snapshots apply one at a time, in the order they came (the lock is FIFO):
        #: two loads of different models publish concurrently, and the later
        #: snapshot must not be overwritten by the earlier one's slower build.
        self._applying = asyncio.Lock()

    async def apply(self, snapshot: list[ModelStatus]) -> None:
        """Build every new load's tokenizer and tasks first, then flip to the
        snapshot in one step (no await in between)."""
        async with self._applying:
            await self._apply(snapshot)

    async def _apply(self, snapshot: list[ModelStatus]) -> None:
        current = {m.engine_key: m for m in self.registry.loaded()}
        wanted = {
            v.info.engine_key: v.info for m in snapshot for v in m.versions if v.info is not None
        }
        built = {
            key: await asyncio.to_thread(describe, info, self.settings)
            for key, info in wanted.items()
            if key not in current
        }
        known = {(m.name, v.version) for m in snapshot for v in m.versions}
        for named in self.registry.names():
            for v in list(named.versions.values()):
                if (named.name, v.version) not in known:
                    if v.served is not None:
                        self._retiring[v.served.engine_key] = v.served
                    self.registry.forget(named.name, v.version)
        for model in snapshot:
            for status in model.versions:
                entry = self.registry.register(status.name, status.version, status.source)
                entry.state, entry.reason = VersionState(status.state), status.reason
                old = entry.served
                key = status.info.engine_key if status.info is not None else None
                entry.served = built.get(key) or current.get(key) if key else None
                if old is not None and old is not entry.served:
                    self._retiring[old.engine_key] = old
            self.registry.named(model.name).aliases = dict(model.aliases)

    async def retire(self, engine_key: str, timeout: float) -> None:
        served = self._retiring.pop(engine_key, None)
        if served is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(served.drained(), timeout)
