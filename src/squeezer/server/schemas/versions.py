"""Bodies of the model-version admin API (``/admin/models``) and of Triton's
repository extension (``/v2/repository``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class LoadBody(BaseModel):
    """``POST /admin/models/{name}[/versions/{version}]/load``."""

    model_config = ConfigDict(extra="forbid")

    #: Only on ``/admin/models/{name}/load``: None loads the repository's default
    #: (its ``default`` alias, else its newest version).
    version: str | None = None
    source: str | None = Field(
        default=None,
        description="Where the version loads from: a folder, a GGUF file, package:MODULE, "
        "org/name@REVISION in the local HF cache, or models:/NAME/3 and models:/NAME@ALIAS "
        "in MLflow. Not needed for a version the server knows (repository, --model).",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Per-model settings of this version (the keys of --config's "
        "[models.NAME] tables: dtype, device, backend, tasks, pooling, ...)",
    )
    aliases: list[str] = Field(
        default_factory=list,
        description="Aliases that move to this version once it is loaded and verified "
        "('default' is what the name alone means)",
    )
    unload_replaced: bool = Field(
        default=False,
        description="A swap: once the aliases moved, unload the versions they named before "
        "(the name's default when no alias is given) that no alias names any more; "
        "each finishes the requests it accepted first",
    )


class UnloadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: bool = Field(
        default=False, description="Unload even a version that aliases name (they then fail)"
    )


class AliasBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str


class VersionOut(BaseModel):
    name: str
    version: str
    state: str = Field(
        description="available, loading, verifying, ready, failed, unloading, evicted"
    )
    reason: str | None
    source: str
    aliases: list[str]
    default: bool = Field(description="Whether the name alone means this version now")
    pinned: bool = Field(description="Never evicted to make room (its pin setting)")
    tasks: list[str] | None
    backend: str | None
    device: str | None
    dtype: str | None
    content_hash: str | None
    fingerprint: dict[str, str] | None
    golden: dict[str, Any] | None = Field(
        default=None, description="The golden-output gate's last check (squeezer pin)"
    )


class ModelOut(BaseModel):
    name: str
    aliases: dict[str, str]
    versions: list[VersionOut]


class ModelList(BaseModel):
    models: list[ModelOut]


class RepositoryIndexBody(BaseModel):
    """Triton's ``POST /v2/repository/index`` (an empty body is fine)."""

    ready: bool = False


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY, LOADING, UNLOADING or UNAVAILABLE (Triton's)")
    reason: str
