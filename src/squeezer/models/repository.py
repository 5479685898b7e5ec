"""A model repository laid out as Triton's: ``DIR/NAME/VERSION/``.

Each version folder holds a Hugging Face folder (``config.json``), an optimizer
artifact (also a folder with ``config.json``) or one GGUF file. ``DIR/NAME/
squeezer.toml`` may hold the model's settings (a ``[model]`` table: the per-model
settings of ``--config``) and its aliases (an ``[aliases]`` table, alias = version).
Anything else in the tree is skipped with a warning, never guessed at: the
repository is read again on every load, so a half-copied version folder shows up as
skipped, not as a broken model.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from squeezer.config import ModelSettings, check_label
from squeezer.errors import ModelLoadError
from squeezer.models.gguf import GGUF_SUFFIX

log = logging.getLogger("squeezer")

SETTINGS_FILE = "squeezer.toml"
#: Per-model settings a repository may set (the rest come from the folder's name).
_NOT_SETTABLE = {"name", "path", "version"}


@dataclass(frozen=True, slots=True)
class RepositoryModel:
    """One model of a repository: its versions' sources, settings and aliases."""

    name: str
    #: Version label -> what it loads from (a folder, or a GGUF file).
    versions: dict[str, str]
    #: ``ModelSettings`` fields from ``squeezer.toml``'s ``[model]`` table.
    settings: dict[str, Any] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


def _version_source(folder: Path) -> str | None:
    if (folder / "config.json").is_file():
        return str(folder)
    ggufs = sorted(folder.glob(f"*{GGUF_SUFFIX}"))
    if len(ggufs) == 1:
        return str(ggufs[0])
    return None


def _read_settings(path: Path, name: str) -> tuple[dict[str, Any], dict[str, str]]:
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ModelLoadError(f"{path}: {e}") from e
    unknown = set(raw) - {"model", "aliases"}
    if unknown:
        raise ModelLoadError(f"{path}: unknown tables {sorted(unknown)} (model, aliases)")
    settings = dict(raw.get("model", {}))
    if _NOT_SETTABLE & set(settings):
        raise ModelLoadError(
            f"{path}: [model] may not set {sorted(_NOT_SETTABLE & set(settings))}: the "
            "name and versions are the repository's folders"
        )
    try:
        ModelSettings(name=name, path=".", **settings)  # the same checks as --config
        aliases = {
            check_label(str(a), "alias"): check_label(str(v), "version")
            for a, v in raw.get("aliases", {}).items()
        }
    except ValueError as e:
        raise ModelLoadError(f"{path}: {e}") from e
    return settings, aliases


def read_model(root: Path, name: str) -> RepositoryModel | None:
    """``root/name`` as a repository model; None when there is no such folder."""
    folder = root / name
    if not folder.is_dir():
        return None
    versions: dict[str, str] = {}
    for child in sorted(folder.iterdir()):
        if child.name == SETTINGS_FILE or child.name.startswith("."):
            continue
        try:
            label = check_label(child.name, "version")
        except ValueError as e:
            log.warning("model repository: skipped %s: %s", child, e)
            continue
        source = _version_source(child) if child.is_dir() else None
        if source is None:
            log.warning(
                "model repository: skipped %s: a version is a folder holding config.json "
                "or one %s file",
                child,
                GGUF_SUFFIX,
            )
            continue
        versions[label] = source
    settings_file = folder / SETTINGS_FILE
    settings, aliases = _read_settings(settings_file, name) if settings_file.is_file() else ({}, {})
    missing = sorted(a for a, v in aliases.items() if v not in versions)
    if missing:
        raise ModelLoadError(
            f"{settings_file}: aliases {missing} name versions not in {folder} "
            f"(versions: {', '.join(versions) or 'none'})"
        )
    return RepositoryModel(name, versions, settings, aliases)


def scan(root: Path) -> list[RepositoryModel]:
    """Every model of the repository at ``root``, by name."""
    if not root.is_dir():
        raise ModelLoadError(f"model repository {root} is not a folder")
    models = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        try:
            ModelSettings(name=child.name, path=".")
        except ValueError as e:
            log.warning("model repository: skipped %s: %s", child, e)
            continue
        model = read_model(root, child.name)
        if model is not None:
            models.append(model)
    return models
