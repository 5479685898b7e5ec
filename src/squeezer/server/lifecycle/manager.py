"""Model versions' lifecycle: load, verify, flip aliases, drain and free.

A load brings a version up beside whatever serves (weights in a thread, then the
engine's queue or generator, a warm-up and a check of its outputs) and only then
flips the version and its aliases in one step: no await sits between the flip of a
version and the flip of its aliases, so a request sees the old set or the new one.
A version replaced or unloaded stops being resolved to at once, finishes every
request it accepted (streams included: each request holds a lease until its response
is sent, ``registry.ServedModel.lease``), and only then leaves the engine and frees
its memory. If any step of a load fails, what served before keeps serving and the
version shows ``failed`` with the reason.

With ``--api-workers`` this runs in the engine process; ``Peers`` reaches the API
processes, which build each new load's tokenizer and tasks before they flip to it
(``publish``) and report when no request of theirs holds a retired load (``retire``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from squeezer.backends.heap import trim_heap
from squeezer.config import ModelSettings, Settings, check_label
from squeezer.engine import Engine
from squeezer.engine.executor import in_fresh_thread
from squeezer.errors import (
    ConflictError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    SqueezerError,
)
from squeezer.models import read_folder, repository
from squeezer.models.mlflow_registry import is_mlflow_uri, resolve_mlflow
from squeezer.server.lifecycle.peers import NoPeers, Peers
from squeezer.server.lifecycle.placing import add_to_engine, verify
from squeezer.server.lifecycle.status import ModelStatus, statuses
from squeezer.server.loading import ModelLoader, describe
from squeezer.server.registry import (
    DEFAULT_ALIAS,
    ModelRegistry,
    ModelVersion,
    NamedModel,
    ServedModel,
    VersionState,
)

log = logging.getLogger("squeezer")


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """What the admin API asks a load for."""

    name: str
    #: None: the repository's default (its ``default`` alias, else its newest).
    version: str | None = None
    #: Where it loads from; None: the version is known (repository, configuration).
    source: str | None = None
    #: Per-model settings for this version (``--config``'s ``[models.NAME]`` keys).
    settings: dict[str, Any] = field(default_factory=dict)
    #: Aliases that move to it once it is ready.
    aliases: Sequence[str] = ()
    #: Unload what the moved aliases (or the default, when none are named) named
    #: before, once nothing else names it: a swap.
    unload_replaced: bool = False
    #: Load again even if it serves (a new load beside the old, then the flip).
    reload: bool = False


#: What ``Runtime.admin`` may ask of a ``ModelManager`` (by name, across the socket).
ADMIN_OPS = frozenset(
    {"status", "load", "unload", "set_alias", "repository_load", "repository_unload"}
)


class ModelManager:
    """Loads, swaps and unloads model versions; the only writer of the registry in
    the process that runs the models."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        engine: Engine,
        *,
        peers: Peers | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.engine = engine
        self.peers: Peers = peers or NoPeers()
        self._loader = ModelLoader(settings)
        #: One operation at a time, whatever the model: making room for one model
        #: unloads another, and two loads would only share the same cores.
        self._busy = asyncio.Lock()
        #: Lazy loads under way, by ``name:version``.
        self._coming_back: dict[str, asyncio.Task[None]] = {}
        self._loads = 0

    # -- start-up ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load the configured models, then the repository's defaults; any failure
        stops the start (a supervisor sees it), as a wrong model path always has."""
        s = self.settings
        for spec in s.models:
            spec = await asyncio.to_thread(self._labelled, spec)
            entry = self.registry.register(spec.name, spec.version or "1", spec.path)
            entry.settings = spec.model_dump(exclude={"name", "path", "version"})
            await self._bring_up(entry, raise_errors=True)
        for name, aliases in s.aliases.items():
            for alias, version in aliases.items():
                self._move_alias(name, alias, version)
        if s.model_repository is not None:
            for model in await asyncio.to_thread(repository.scan, s.model_repository):
                self._learn(model)
                if s.repository_load_all:
                    for version in self._repository_targets(model):
                        await self._bring_up(self.registry.version(model.name, version), True)
                    self._set_repository_aliases(model)
        self.registry.check_defaults()

    def _labelled(self, spec: ModelSettings) -> ModelSettings:
        """A configured model's version label: the operator's, else the MLflow version
        number, else ``1`` (a pinned revision is already the label)."""
        if spec.version is not None:
            return spec
        if is_mlflow_uri(spec.path):
            found = resolve_mlflow(spec.path, tracking_uri=self.settings.mlflow_tracking_uri)
            return spec.model_copy(update={"version": found.version, "path": _pinned(found)})
        return spec.model_copy(update={"version": "1"})

    def _learn(self, model: repository.RepositoryModel) -> None:
        """Register a repository model's versions as they are on disk now; versions
        gone from disk are forgotten unless loaded."""
        for version, source in model.versions.items():
            entry = self.registry.register(model.name, version, source)
            entry.settings = dict(model.settings)
            if entry.served is None:
                entry.source = source
        with contextlib.suppress(ModelNotFoundError):
            named = self.registry.named(model.name)
            for version, entry in list(named.versions.items()):
                if version not in model.versions and entry.served is None:
                    self.registry.forget(model.name, version)

    @staticmethod
    def _repository_default(model: repository.RepositoryModel) -> str | None:
        """The version a repository model's name alone means: its ``default`` alias,
        else its newest (Triton's ``latest 1`` policy)."""
        if DEFAULT_ALIAS in model.aliases:
            return model.aliases[DEFAULT_ALIAS]
        newest = NamedModel(model.name)
        for i, (label, source) in enumerate(model.versions.items()):
            newest.versions[label] = ModelVersion(model.name, label, source, seq=i)
        found = newest.newest()
        return found.version if found is not None else None

    def _repository_targets(self, model: repository.RepositoryModel) -> list[str]:
        """What a repository model serves: its default and what its aliases name."""
        default = self._repository_default(model)
        targets = [default] if default is not None else []
        return list(dict.fromkeys([*targets, *model.aliases.values()]))

    def _set_repository_aliases(self, model: repository.RepositoryModel) -> None:
        for alias, version in model.aliases.items():
            if self.registry.version(model.name, version).serving:
                self._move_alias(model.name, alias, version)

    # -- bringing a version up ----------------------------------------------------------

    async def _bring_up(
        self, entry: ModelVersion, raise_errors: bool = False, *, displaces: bool = False
    ) -> ServedModel | None:
        """Load ``entry`` beside whatever serves, verify it, and flip it in; returns
        the load it replaced (a reload's), for the caller to retire. Aliases are the
        caller's to move, right after: a returning coroutine does not yield to the
        loop, so no request runs between the two flips."""
        spec = ModelSettings(
            name=entry.name, path=entry.source, version=entry.version, **entry.settings
        )
        await self._make_room(entry, may_exceed=displaces)
        self._loads += 1
        load = self._loads if entry.served is not None else 0
        serving_before = entry.served is not None and entry.serving
        entry.state, entry.reason = VersionState.LOADING, None
        added: str | None = None
        t0 = time.perf_counter()
        try:
            info, backend = await in_fresh_thread(self._loader.load, spec, load)
            served = await asyncio.to_thread(describe, info, self.settings)
            add_to_engine(self.engine, self.settings, served, backend, spec)
            added = served.engine_key
            entry.state = VersionState.VERIFYING
            await verify(self.engine, self.settings, served, spec.lockfile)
        except Exception as e:
            if added is not None:
                with contextlib.suppress(Exception):
                    await self.engine.remove(added, 0)
            entry.state = VersionState.FAILED
            entry.reason = _reason(e)
            if serving_before:
                entry.reason += " (the earlier load still serves)"
            log.error("model %s failed to load: %s", entry.key, entry.reason)
            if raise_errors:  # start-up: the error as it is, as before versions
                raise
            raise ModelLoadError(f"model {entry.key} failed to load: {entry.reason}") from e
        log.info(
            "loaded %s from %s in %.1f s: tasks=%s backend=%s device=%s dtype=%s",
            entry.key,
            entry.source,
            time.perf_counter() - t0,
            ",".join(t.value for t in served.info.tasks),
            served.info.backend,
            served.info.device,
            served.info.dtype,
        )
        old = entry.served
        entry.served, entry.state, entry.reason = served, VersionState.READY, None
        return old

    # -- residency --------------------------------------------------------------------

    def _pinned(self, entry: ModelVersion) -> bool:
        """Never evicted: pinned in its settings, or named by an alias (the name's
        default included: it is what the name alone means)."""
        named = self.registry.named(entry.name)
        return bool(entry.settings.get("pin")) or bool(
            named.aliases_of(entry.version) or named.default() is entry
        )

    async def _make_room(self, incoming: ModelVersion | None, *, may_exceed: bool = False) -> None:
        """Evict least recently used versions until ``incoming`` fits the limits (None:
        until what is loaded fits). When nothing may go: ``ModelLoadError``, unless
        ``may_exceed`` (a swap: the version ``incoming`` displaces as the default may
        go once it has, and ``load`` makes room again then)."""
        s = self.settings
        if s.max_loaded_models is None and s.max_loaded_memory_mib is None:
            return
        budget = None if s.max_loaded_memory_mib is None else s.max_loaded_memory_mib * 2**20
        extra = 0 if incoming is None else 1
        while True:
            loaded = [
                v
                for named in self.registry.names()
                for v in named.versions.values()
                if v is not incoming and v.served is not None
            ]
            count = len(loaded) + extra
            size = sum(v.served.info.weight_bytes for v in loaded if v.served is not None)
            if incoming is not None:
                size += _expected_bytes(incoming)
            if (s.max_loaded_models is None or count <= s.max_loaded_models) and (
                budget is None or size <= budget
            ):
                return
            victims = [v for v in loaded if v.serving and not self._pinned(v)]
            if not victims:
                if may_exceed or incoming is None:
                    log.warning(
                        "%d versions loaded (%.0f MiB), over the residency limits, and "
                        "none may be evicted (pinned, or named by an alias)",
                        count,
                        size / 2**20,
                    )
                    return
                raise ModelLoadError(
                    f"no room for {incoming.key}: {len(loaded)} versions loaded "
                    f"({size / 2**20:.0f} MiB with it) and every one is pinned or named by "
                    "an alias (--max-loaded-models, --max-loaded-memory-mib)"
                )
            victim = min(
                victims,
                key=lambda v: self.engine.last_used(v.served.engine_key) if v.served else 0.0,
            )
            log.info("evicting %s (least recently used) to make room", victim.key)
            await self._unload(victim)
            victim.state = VersionState.EVICTED
            victim.reason = (
                "evicted to make room"
                + (f" for {incoming.key}" if incoming is not None else "")
                + "; a request for it loads it again"
            )
            await self.peers.publish(self.status())

    def _displaces_default(self, entry: ModelVersion, aliases: Sequence[str]) -> bool:
        """Whether loading ``entry`` makes it its name's default in place of a version
        that may then be evicted (neither pinned nor named by an alias that stays)."""
        named = self.registry.named(entry.name)
        current = named.default()
        if current is None or current is entry or not current.serving:
            return False
        if current.settings.get("pin") or set(named.aliases_of(current.version)) - set(aliases):
            return False
        if DEFAULT_ALIAS in aliases:
            return True
        return DEFAULT_ALIAS not in named.aliases and named.newer(entry, current)

    def load_soon(self, name: str, version: str) -> None:
        """Bring an evicted version back (a request named it): in the background, once."""
        key = f"{name}:{version}"
        if key in self._coming_back:
            return

        async def come_back() -> None:
            try:
                await self.load(LoadRequest(name, version))
            except Exception as e:  # the request that asked has its 503 already
                with contextlib.suppress(ModelNotFoundError):
                    entry = self.registry.version(name, version)
                    entry.state, entry.reason = VersionState.EVICTED, f"could not come back: {e}"
                log.error("model %s could not be loaded again: %s", key, e)
            finally:
                self._coming_back.pop(key, None)

        self._coming_back[key] = asyncio.get_running_loop().create_task(come_back())

    # -- what the admin API asks ---------------------------------------------------------

    def status(self) -> list[ModelStatus]:
        return statuses(self.registry)

    def status_of(self, name: str) -> ModelStatus:
        for model in statuses(self.registry):
            if model.name == name:
                return model
        raise ModelNotFoundError(f"model {name!r} is not known here", param="model")

    async def load(self, request: LoadRequest) -> ModelStatus:
        """Load (or reload) a version, move the named aliases to it, and with
        ``unload_replaced`` unload what they named before: a swap."""
        name = request.name
        try:
            ModelSettings(name=name, path=".", **request.settings)
        except ValueError as e:
            raise InvalidRequestError(f"settings of {name!r}: {e}", param="settings") from e
        for alias in request.aliases:
            _label(alias, "alias")
        async with self._busy:
            entry = await self._entry_to_load(request)
            before = self._named_by(name, request.aliases)
            if entry.serving and not request.reload:
                if request.source is not None and request.source != entry.source:
                    raise ConflictError(
                        f"model {entry.key} already serves, from {entry.source}; unload it "
                        "first, or load the new files as another version"
                    )
                old = None
            else:
                displaces = self._displaces_default(entry, request.aliases)
                old = await self._bring_up(entry, displaces=displaces)
            for alias in request.aliases:  # in the same step as the version's flip
                self._move_alias(name, alias, entry.version)
            await self.peers.publish(self.status())
            if old is not None:
                await self._retire(old)
            if request.unload_replaced:
                named = self.registry.named(name)
                for replaced in before - self._named_by(name, request.aliases):
                    still = named.aliases_of(replaced)
                    found = named.versions.get(replaced)
                    if not still and found is not None and found.serving:
                        await self._unload(found)
            await self._make_room(None)  # what a swap displaced may go now
        return self.status_of(name)

    async def _entry_to_load(self, request: LoadRequest) -> ModelVersion:
        name, version, source = request.name, request.version, request.source
        if source is not None and is_mlflow_uri(source) and version is None:
            found = await asyncio.to_thread(
                resolve_mlflow, source, tracking_uri=self.settings.mlflow_tracking_uri
            )
            version, source = found.version, _pinned(found)
        if source is None and self.settings.model_repository is not None:
            model = await asyncio.to_thread(
                repository.read_model, self.settings.model_repository, name
            )
            if model is not None:
                self._learn(model)
                if version is None:
                    version = self._repository_default(model)
        if version is None:
            try:
                newest = self.registry.named(name).newest()
            except ModelNotFoundError:
                newest = None
            if newest is None:
                raise ModelNotFoundError(
                    f"model {name!r} is in no repository and no source was given "
                    "(give a source, or add it to --model-repository)",
                    param="model",
                )
            version = newest.version
        _label(version, "version")
        try:
            entry = self.registry.version(name, version)
        except ModelNotFoundError:
            if source is None:
                raise
            ModelSettings(name=name, path=source)  # the naming rule, as for --model
            entry = self.registry.register(name, version, source)
        if source is not None and not entry.serving:
            entry.source = source
        if request.settings:
            entry.settings = {**entry.settings, **request.settings}
        return entry

    def _named_by(self, name: str, aliases: Sequence[str]) -> set[str]:
        """The versions ``aliases`` name now (the default's when none are given)."""
        named = self.registry.named(name)
        found: set[str] = set()
        for alias in aliases or [DEFAULT_ALIAS]:
            if alias in named.aliases:
                found.add(named.aliases[alias])
            elif alias == DEFAULT_ALIAS and (default := named.default()) is not None:
                found.add(default.version)  # the implicit default: the newest serving
        return found

    async def unload(
        self, name: str, version: str | None = None, force: bool = False
    ) -> ModelStatus:
        """Unload one version (every version when None). One an alias names is
        refused unless ``force`` (Triton's unload is forced: it unloads the model)."""
        async with self._busy:
            named = self.registry.named(name)
            if version is None:
                targets = [v for v in named.versions.values() if v.serving]
            else:
                targets = [self.registry.version(name, version)]
            for entry in targets:
                aliases = named.aliases_of(entry.version)
                if aliases and not force:
                    raise ConflictError(
                        f"model {entry.key} is what {', '.join(f'{name}@{a}' for a in aliases)} "
                        "name; move those aliases first (or force)"
                    )
                if entry.serving:
                    await self._unload(entry)
        return self.status_of(name)

    async def set_alias(self, name: str, alias: str, version: str | None) -> ModelStatus:
        """Point ``alias`` at ``version`` (which must serve), or remove it (None)."""
        _label(alias, "alias")
        async with self._busy:
            named = self.registry.named(name)
            if version is None:
                if named.aliases.pop(alias, None) is None:
                    raise ModelNotFoundError(f"model {name!r} has no alias {alias!r}")
            else:
                self._move_alias(name, alias, version)
            await self.peers.publish(self.status())
        return self.status_of(name)

    def _move_alias(self, name: str, alias: str, version: str) -> None:
        entry = self.registry.version(name, version)
        if not entry.serving:
            raise ConflictError(
                f"alias {name}@{alias} cannot name {entry.key}: it is {entry.state.value}, "
                "not serving; load it first"
            )
        self.registry.named(name).aliases[alias] = version

    # -- Triton's repository extension -------------------------------------------------

    async def repository_load(self, name: str) -> ModelStatus:
        """Triton's load: the repository model's default version and the versions its
        aliases name (as on disk now), in place of the versions served before that
        no alias names; a no-op when those already serve. A model outside the
        repository: its newest known version."""
        root = self.settings.model_repository
        model = await asyncio.to_thread(repository.read_model, root, name) if root else None
        if model is None:
            return await self.load(LoadRequest(name, unload_replaced=True))
        default = self._repository_default(model)
        for version in self._repository_targets(model):
            aliases = [a for a, v in model.aliases.items() if v == version]
            if version == default and DEFAULT_ALIAS not in aliases:
                aliases.append(DEFAULT_ALIAS)
            await self.load(LoadRequest(name, version, aliases=aliases, unload_replaced=True))
        return self.status_of(name)

    async def repository_unload(self, name: str) -> ModelStatus:
        return await self.unload(name, None, force=True)

    # -- taking versions down -----------------------------------------------------------

    async def _unload(self, entry: ModelVersion) -> None:
        served = entry.served
        entry.state = VersionState.UNLOADING  # resolved to no more, from this step on
        await self.peers.publish(self.status())
        if served is not None:
            await self._retire(served)
        # Still known, with its source: a load by name brings it back.
        entry.served, entry.state, entry.reason = None, VersionState.AVAILABLE, None
        await self.peers.publish(self.status())
        log.info("unloaded %s", entry.key)

    async def _retire(self, served: ServedModel) -> None:
        """Wait for every request holding ``served`` (here and in API processes),
        then take it out of the engine and give its memory back."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.settings.unload_timeout
        await self.peers.retire(served.engine_key, self.settings.unload_timeout)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(served.drained(), max(0.0, end - loop.time()))
        await self.engine.remove(served.engine_key, max(0.0, end - loop.time()))
        gc.collect(1)  # young cycles only: a full collection held the loop ~160 ms
        trim_heap()


def _expected_bytes(entry: ModelVersion) -> int:
    """What loading ``entry`` will take: its last load's weights, else its files'."""
    if entry.served is not None:
        return entry.served.info.weight_bytes
    path = Path(entry.source)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        with contextlib.suppress(ModelLoadError, OSError, ValueError):
            return read_folder(path).weight_bytes()
    return 0


def _pinned(found: Any) -> str:
    """An MLflow source pinned to the version its alias named when it was loaded."""
    return f"models:/{found.registered_name}/{found.version}"


def _label(value: str, what: str) -> str:
    try:
        return check_label(value, what)
    except ValueError as e:
        raise InvalidRequestError(str(e), param=what) from e


def _reason(error: BaseException) -> str:
    message = error.message if isinstance(error, SqueezerError) else str(error)
    return f"{type(error).__name__}: {message}"
