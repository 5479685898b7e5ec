"""Which served model version a request means: by name, alias or version, or by the
task the route implies; and each version's state.

A model name has versions (labels: a repository folder, an MLflow version, a commit,
the operator's own) and aliases that point at them. A request names ``name`` (its
default: the ``default`` alias when set, else the newest ready version), ``name@alias``
or ``name:version``. Routes that name no model (TEI's, ``POST /``) and the
placeholders clients send when they only know a base URL (``huggingface_hub`` sends
``dummy`` or ``tgi``; others send nothing or an empty string) resolve to the default
model of the route's task: the one ``--default-model`` names for that task, else the
first model that can do it.

A request holds a **lease** on the loaded version it resolved to until its response
is sent (the HTTP layer releases it), so that a version being replaced finishes every
request it accepted, streams included, before it is freed (``lifecycle.py``).
What changes versions and aliases is the lifecycle's; this module only keeps them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from squeezer.errors import (
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    TaskNotSupportedError,
)
from squeezer.models import ModelFolder
from squeezer.server.observe import current_record
from squeezer.tasks import EmbedTask, EncoderTask, TextTokenizer
from squeezer.tasks.generate import GenerateTask
from squeezer.types import ModelInfo, Task

#: Model names that mean "whatever this server's default is".
PLACEHOLDER_NAMES = frozenset({"", "dummy", "tgi", "default", "tei"})
#: The alias ``name`` alone means, when set; else the newest ready version.
DEFAULT_ALIAS = "default"
_NUMERIC = re.compile(r"\d+")
#: Retry-After of a request that started a lazy load.
_LAZY_RETRY_S = 2.0


@dataclass(slots=True)
class ServedModel:
    """One load of one model version and the task objects that serve it."""

    info: ModelInfo
    folder: ModelFolder
    tokenizer: TextTokenizer
    tasks: dict[Task, EncoderTask]
    #: Causal LMs: prompts, chat templates and streamed text.
    generator: GenerateTask | None = None
    #: Requests that resolved to this load and are not answered yet.
    leases: int = 0
    _idle: asyncio.Event | None = None

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def version(self) -> str:
        return self.info.version

    @property
    def key(self) -> str:
        """``name:version``."""
        return self.info.key

    @property
    def engine_key(self) -> str:
        """The engine's name for this load: a reload of a version is a second load
        beside the first until the first has drained."""
        return self.info.engine_key

    @property
    def embed(self) -> EmbedTask | None:
        task = self.tasks.get(Task.EMBED)
        return task if isinstance(task, EmbedTask) else None

    @property
    def main_task(self) -> Task:
        return self.info.tasks[0]

    def lease(self) -> None:
        """Held by the request in hand until its response is sent (see module doc)."""
        record = current_record()
        if record is None:
            return
        self.leases += 1
        if self._idle is not None:
            self._idle.clear()
        record.leases.append(self.release)

    def release(self) -> None:
        self.leases -= 1
        if self.leases == 0 and self._idle is not None:
            self._idle.set()

    async def drained(self) -> None:
        """Returns once no request holds this load."""
        if self._idle is None:
            self._idle = asyncio.Event()
        if self.leases == 0:
            self._idle.set()
        await self._idle.wait()


class VersionState(str, Enum):
    #: Known (a repository folder, or unloaded), not loaded: a load brings it up.
    AVAILABLE = "available"
    LOADING = "loading"
    #: Loaded, being warmed up and checked before anything may resolve to it.
    VERIFYING = "verifying"
    READY = "ready"
    #: The last load failed (``reason`` says why); an earlier load may still serve.
    FAILED = "failed"
    #: No longer resolved to; finishing the requests it accepted before it is freed.
    UNLOADING = "unloading"
    #: Unloaded to make room (residency limits); a request for it loads it again.
    EVICTED = "evicted"


@dataclass(slots=True)
class ModelVersion:
    """A version of a name: where it comes from, and its state."""

    name: str
    version: str
    #: What it loads from (a folder, GGUF file, ``package:``, ``models:/`` URI).
    source: str
    state: VersionState = VersionState.AVAILABLE
    reason: str | None = None
    #: The load serving it (READY), or the one still serving while it reloads.
    served: ServedModel | None = None
    #: Registration order: ``newest`` among labels that are not all numbers.
    seq: int = 0
    #: The repository's or configuration's settings beyond the source, as a dict for
    #: ``ModelSettings`` (engine process only).
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def serving(self) -> bool:
        return self.served is not None and self.state is not VersionState.UNLOADING


@dataclass(slots=True)
class NamedModel:
    """A model name: its versions and aliases."""

    name: str
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def newest(self, *, serving: bool = False) -> ModelVersion | None:
        """Triton's order when every label is a number (highest newest), else the
        order versions became known."""
        candidates = [v for v in self.versions.values() if v.serving or not serving]
        if not candidates:
            return None
        if all(_NUMERIC.fullmatch(v.version) for v in candidates):
            return max(candidates, key=lambda v: int(v.version))
        return max(candidates, key=lambda v: v.seq)

    def newer(self, a: ModelVersion, b: ModelVersion) -> bool:
        """Whether ``a`` sorts after ``b`` in ``newest``'s order."""
        labels = [v.version for v in self.versions.values()] + [a.version, b.version]
        if all(_NUMERIC.fullmatch(label) for label in labels):
            return int(a.version) > int(b.version)
        return a.seq > b.seq

    def default(self) -> ModelVersion | None:
        """What ``name`` alone means: the default alias's version, else the newest
        version serving."""
        label = self.aliases.get(DEFAULT_ALIAS)
        if label is not None:
            return self.versions.get(label)
        return self.newest(serving=True)

    def aliases_of(self, version: str) -> list[str]:
        return sorted(a for a, v in self.aliases.items() if v == version)


@dataclass(frozen=True, slots=True)
class ModelRef:
    """What a request named: ``name``, ``name@alias`` or ``name:version``."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, ref: str) -> ModelRef:
        name, at, alias = ref.partition("@")
        if at:
            return cls(name, alias=alias)
        name, colon, version = ref.partition(":")
        return cls(name, version=version) if colon else cls(ref)

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return f"{self.name}:{self.version}" if self.version is not None else self.name


class ModelRegistry:
    """Model names in the order they became known, their versions and aliases, and
    per-task defaults."""

    def __init__(self, defaults: dict[str, str] | None = None) -> None:
        self._names: dict[str, NamedModel] = {}
        #: Asked to bring an evicted version back when a request names it (the
        #: lifecycle's, or the engine process's over the socket); None: no lazy loads.
        self.on_evicted: Callable[[str, str], None] | None = None
        self._defaults: dict[Task, str] = {}
        self._seq = 0
        for task, name in (defaults or {}).items():
            try:
                self._defaults[Task(task)] = name
            except ValueError:
                known = ", ".join(t.value for t in Task)
                raise ModelLoadError(
                    f"--default-model {task}={name}: unknown task {task!r} (tasks: {known})"
                ) from None

    # -- what is known (the lifecycle's to change) ------------------------------------

    def register(self, name: str, version: str, source: str) -> ModelVersion:
        """The version ``name:version``, known from now on (an existing one as it is)."""
        named = self._names.setdefault(name, NamedModel(name))
        found = named.versions.get(version)
        if found is None:
            self._seq += 1
            found = ModelVersion(name, version, source, seq=self._seq)
            named.versions[version] = found
        return found

    def named(self, name: str) -> NamedModel:
        named = self._names.get(name)
        if named is None:
            raise ModelNotFoundError(
                f"model {name!r} is not known here; known: {', '.join(self._names) or 'none'}",
                param="model",
            )
        return named

    def version(self, name: str, version: str) -> ModelVersion:
        found = self.named(name).versions.get(version)
        if found is None:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r}; versions: "
                f"{', '.join(self.named(name).versions)}",
                param="model",
            )
        return found

    def names(self) -> list[NamedModel]:
        return list(self._names.values())

    def forget(self, name: str, version: str) -> None:
        """Drop a version that is neither loaded nor in a repository any more."""
        named = self._names.get(name)
        if named is None:
            return
        named.versions.pop(version, None)
        if not named.versions:
            del self._names[name]

    # -- what requests see ---------------------------------------------------------------

    def __iter__(self) -> Iterator[ServedModel]:
        """Each model name's default version, where one serves."""
        for named in self._names.values():
            found = named.default()
            if found is not None and found.served is not None and found.serving:
                yield found.served

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def loaded(self) -> list[ServedModel]:
        """Every version serving now, defaults or not."""
        return [
            v.served
            for named in self._names.values()
            for v in named.versions.values()
            if v.served is not None and v.serving
        ]

    def check_defaults(self) -> None:
        """Fail at start-up, not per request, when a configured default is wrong."""
        for task, name in self._defaults.items():
            model = self._resolve(ModelRef.parse(name))
            if task not in model.info.tasks:
                raise TaskNotSupportedError(
                    f"--default-model {task.value}={name}: model serves "
                    f"{[t.value for t in model.info.tasks]}"
                )

    def serving(self, task: Task) -> list[str]:
        return [m.name for m in self if task in m.info.tasks]

    def default_for(self, task: Task) -> ServedModel:
        """The task's default model, leased to the request in hand."""
        name = self._defaults.get(task)
        model = self._resolve(ModelRef.parse(name)) if name is not None else self._first(task)
        model.lease()
        return model

    def _first(self, task: Task) -> ServedModel:
        for model in self:
            if task in model.info.tasks:
                return model
        raise TaskNotSupportedError(
            f"no served model can do {task.value!r}; served: "
            + ", ".join(f"{m.name} ({'/'.join(t.value for t in m.info.tasks)})" for m in self)
        )

    def get(self, name: str | None, task: Task | None = None) -> ServedModel:
        """The model ``name`` means (placeholders: the task's default), leased to the
        request in hand; checks the task."""
        if name is None or name in PLACEHOLDER_NAMES:
            if task is None:
                first = next(iter(self), None)
                if first is None:
                    raise ModelNotReadyError("no model is serving yet")
                first.lease()
                return first
            return self.default_for(task)
        model = self._resolve(ModelRef.parse(name))
        if task is not None:
            self.check(model, task)
        model.lease()
        return model

    def _resolve(self, ref: ModelRef) -> ServedModel:
        named = self._names.get(ref.name)
        if named is None:
            raise ModelNotFoundError(
                f"model {ref.name!r} is not served here; served: "
                + ", ".join(m.name for m in self),
                param="model",
            )
        if ref.alias is not None:
            label = named.aliases.get(ref.alias)
            if label is None and ref.alias != DEFAULT_ALIAS:
                raise ModelNotFoundError(
                    f"model {ref.name!r} has no alias {ref.alias!r}; aliases: "
                    + (", ".join(sorted(named.aliases)) or "none"),
                    param="model",
                )
            found = named.versions.get(label) if label is not None else named.default()
        elif ref.version is not None:
            found = named.versions.get(ref.version)
            if found is None:
                raise ModelNotFoundError(
                    f"model {ref.name!r} has no version {ref.version!r}; versions: "
                    + ", ".join(named.versions),
                    param="model",
                )
        else:
            found = named.default()
        if found is not None and found.state is VersionState.EVICTED and self.on_evicted:
            self.on_evicted(found.name, found.version)
            raise ModelNotReadyError(
                f"model {found.key} was evicted to make room and is loading again; "
                "retry after Retry-After",
                param="model",
                retry_after_s=_LAZY_RETRY_S,
            )
        if found is None or found.served is None or not found.serving:
            state = found.state.value if found is not None else "not loaded"
            reason = f" ({found.reason})" if found is not None and found.reason else ""
            raise ModelNotReadyError(
                f"model {ref} is {state}{reason}; GET /admin/models lists every version",
                param="model",
            )
        return found.served

    def check(self, model: ServedModel, task: Task) -> None:
        """Refuse a task the model cannot do, naming what it can and who can."""
        if task in model.info.tasks:
            return
        others = self.serving(task)
        raise TaskNotSupportedError(
            f"model {model.name!r} does not serve {task.value!r}; it serves "
            f"{', '.join(t.value for t in model.info.tasks)}. "
            + (
                f"Models serving {task.value!r}: {', '.join(others)}"
                if others
                else f"No served model can do {task.value!r}"
            ),
            param="model",
        )
