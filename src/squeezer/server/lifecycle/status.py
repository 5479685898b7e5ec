"""What the lifecycle reports of each model version: the admin API's list, Triton's
index, and the snapshot API processes mirror (picklable: it crosses the engine
socket)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from squeezer.server.registry import ModelRegistry
from squeezer.types import ModelInfo


@dataclass(frozen=True, slots=True)
class VersionStatus:
    name: str
    version: str
    state: str
    reason: str | None
    source: str
    aliases: list[str]
    #: What ``name`` alone means now.
    default: bool
    #: Never evicted to make room (its ``pin`` setting).
    pinned: bool
    #: The load serving it (None when nothing is loaded).
    info: ModelInfo | None = None

    def as_dict(self) -> dict[str, Any]:
        info = self.info
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
            "source": self.source,
            "aliases": self.aliases,
            "default": self.default,
            "pinned": self.pinned,
            "tasks": [t.value for t in info.tasks] if info else None,
            "backend": info.backend if info else None,
            "device": info.device if info else None,
            "dtype": info.dtype if info else None,
            "content_hash": info.content_hash if info else None,
            "fingerprint": info.fingerprint if info else None,
            "golden": info.golden.as_dict() if info and info.golden else None,
        }


@dataclass(frozen=True, slots=True)
class ModelStatus:
    name: str
    aliases: dict[str, str]
    versions: list[VersionStatus]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "aliases": self.aliases,
            "versions": [v.as_dict() for v in self.versions],
        }


def statuses(registry: ModelRegistry) -> list[ModelStatus]:
    """Every known version with its state and aliases: the admin list, and the
    snapshot API processes mirror."""
    out = []
    for named in registry.names():
        default = named.default()
        out.append(
            ModelStatus(
                named.name,
                dict(named.aliases),
                [
                    VersionStatus(
                        v.name,
                        v.version,
                        v.state.value,
                        v.reason,
                        v.source,
                        named.aliases_of(v.version),
                        v is default and v.serving,
                        bool(v.settings.get("pin")),
                        v.served.info if v.served is not None and v.serving else None,
                    )
                    for v in named.versions.values()
                ],
            )
        )
    return out
