"""Which library versions are running, which ranges squeezer is tested with, and where
the two differ.

The libraries that shape outputs (torch, transformers, tokenizers and the runtime that
serves a model) are reported as one ``versions`` object in ``/info``, every model of
``/v1/models``, the start-up log and ``squeezer env``: an operator whose embeddings
moved after an upgrade can see what changed. The tested ranges are the ones
``pyproject.toml`` states (read back from squeezer's installed metadata, so they have
one source), and ``docs/compatibility.md`` records the run that proved them.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import cache
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

#: Backend name -> (the key ``versions`` shows it under, its PyPI distribution). torch
#: serves through torch itself, which ``versions`` always shows.
RUNTIMES: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime"),
    "openvino": ("openvino", "openvino"),
    "ctranslate2": ("ctranslate2", "ctranslate2"),
    "llamacpp": ("llama_cpp", "llama-cpp-python"),
    "jax": ("jax", "jax"),
    "litert": ("litert", "ai-edge-litert"),
}
#: The distributions whose releases move under squeezer fastest: the compatibility run
#: (benchmarks/compat.py) and ``squeezer env`` cover these.
WATCHED = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "onnxruntime",
    "openvino",
    "ctranslate2",
    "llama-cpp-python",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
)


def distribution_version(name: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@cache
def _requirements() -> dict[str, Requirement]:
    """squeezer's own requirements (extras included), by normalized name."""
    try:
        lines = metadata.requires("squeezer") or []
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        return {}
    out: dict[str, Requirement] = {}
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        name = _normalize(req.name)
        if name != "squeezer" and (name not in out or not str(out[name].specifier)):
            out[name] = req
    return out


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def tested_range(name: str) -> str:
    """The range ``pyproject.toml`` states for ``name`` ("any" when it states none)."""
    req = _requirements().get(_normalize(name))
    return str(req.specifier) if req is not None and str(req.specifier) else "any"


def outside_tested_range(version: str | None, name: str) -> bool:
    """Whether an installed ``version`` of ``name`` lies outside its tested range."""
    req = _requirements().get(_normalize(name))
    if version is None or req is None:
        return False
    try:
        return not req.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return True


@dataclass(frozen=True, slots=True)
class LibraryVersions:
    """The versions that shape one model's outputs: shown as ``versions`` wherever a
    model is described. ``runtime`` is the serving runtime's key when it is not torch
    (``onnxruntime``, ``openvino``, ``ctranslate2``, ``llama_cpp``, ``jax``, ``litert``)."""

    python: str
    torch: str | None
    transformers: str | None
    tokenizers: str | None
    runtime: str | None = None
    runtime_version: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        out = {
            "python": self.python,
            "torch": self.torch,
            "transformers": self.transformers,
            "tokenizers": self.tokenizers,
        }
        if self.runtime is not None:
            out[self.runtime] = self.runtime_version
        return out

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.as_dict().items())


def library_versions(backend: str | None = None) -> LibraryVersions:
    """What is running now, with ``backend``'s runtime when it is not torch."""
    runtime, version = None, None
    if backend in RUNTIMES:
        runtime, dist = RUNTIMES[backend]
        version = distribution_version(dist)
    return LibraryVersions(
        python=platform.python_version(),
        torch=distribution_version("torch"),
        transformers=distribution_version("transformers"),
        tokenizers=distribution_version("tokenizers"),
        runtime=runtime,
        runtime_version=version,
    )


@dataclass(frozen=True, slots=True)
class WatchedVersion:
    """One watched library: installed version and whether it is in the tested range."""

    name: str
    version: str | None
    tested: str
    outside: bool


def watched_versions() -> list[WatchedVersion]:
    """Every watched library, installed or not, against its tested range."""
    out = []
    for name in WATCHED:
        version = distribution_version(name)
        out.append(
            WatchedVersion(name, version, tested_range(name), outside_tested_range(version, name))
        )
    return out


def untested() -> list[WatchedVersion]:
    """Installed watched libraries outside their tested range (start-up warns)."""
    return [w for w in watched_versions() if w.outside]
