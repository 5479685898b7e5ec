"""What the search tries: one runtime x precision x variant, and how it is built.

A candidate's build writes runtime files into an artifact folder that already holds
the source model's tokenizer, config and sentence-transformers files (copied by the
search), so that ``load_backend(candidate.runtime, folder)`` can serve it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from squeezer.models import ModelFolder
from squeezer.models.manifest import KernelNeed
from squeezer.types import Task


@dataclass(frozen=True, slots=True)
class BuildContext:
    """Everything a build may read: the source model, where to write, calibration text."""

    source: ModelFolder
    #: The artifact folder to write runtime files into (support files are already there).
    out: Path
    #: The calibration split: quantization ranges and choosing nodes to keep in float.
    calibration: Sequence[str] = ()
    #: Scratch space shared by candidates of one search (e.g. one ONNX export for all).
    cache: Path | None = None
    #: Loss (the gate's measure) of a folder holding this runtime's files, on the
    #: calibration split: lets a build choose by measuring (e.g. nodes kept in float).
    calibration_loss: Callable[[Path], float] | None = None


Build = Callable[[BuildContext], "BuildInfo"]


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """What a build reports about itself (written to the manifest and the report)."""

    #: Runtime files written, relative to the artifact folder.
    files: tuple[str, ...]
    #: Facts worth reading later: fused node counts, nodes kept in float, settings.
    details: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Candidate:
    runtime: str
    precision: str
    variant: str = ""
    build: Build | None = None
    #: Tasks this candidate can serve; a search for another task skips it, saying so.
    tasks: frozenset[Task] = frozenset(Task) - {Task.GENERATE}
    #: Keyword arguments for the backend when it loads this candidate (recorded in the
    #: manifest, so that serving loads it the same way).
    options: dict[str, Any] = field(default_factory=dict)
    #: CPU instructions its kernels need to be fast: a CPU search offers it only where
    #: they are, and serving refuses the artifact where they are not.
    needs: tuple[KernelNeed, ...] = ()

    @property
    def name(self) -> str:
        return "-".join(p for p in (self.runtime, self.precision, self.variant) if p)


def encoder_only(folder: ModelFolder, runtime: str) -> str | None:
    """Why a runtime that squeezer builds for encoders only cannot take ``folder``, or
    None when it can."""
    tasks = folder.detect_tasks()
    if Task.GENERATE in tasks:
        return f"decoder models are not built for {runtime} by squeezer yet"
    if not tasks:
        return f"model type {folder.model_type!r} is not an encoder squeezer knows"
    return None


def runtime_version(runtime: str) -> str:
    """The version a manifest and a report record for a runtime's package."""
    from squeezer.versions import RUNTIMES, distribution_version

    _, dist = RUNTIMES.get(runtime, (runtime, runtime))
    return distribution_version(dist) or "not installed"


def input_names(folder: ModelFolder, model: Any) -> list[str]:
    """The inputs an exported graph takes: ``token_type_ids`` only when the model's
    forward accepts them and the tokenizer produces them (DistilBERT, RoBERTa do not)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if folder.token_type_ids and "token_type_ids" in params:
        names.append("token_type_ids")
    return names
