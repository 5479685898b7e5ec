"""``squeezer.json``: what an optimized artifact is, where it came from, how it measured.

``squeezer optimize`` writes it; ``squeezer serve`` reads it to pick the runtime and to
warn when the machine differs from the one the artifact was tuned on (an int8 choice
made on a CPU with VNNI may be the wrong one without it). It lives with the model
files so that an artifact copied elsewhere still explains itself.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from squeezer.errors import ModelLoadError

MANIFEST_FILE = "squeezer.json"
SCHEMA_VERSION = 1
#: CPU flags that change which kernels (and so which candidate) win.
_RELEVANT_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
)


class KernelNeed(BaseModel):
    """CPU instructions a recipe's fast kernels rely on: any one of ``any_of``.

    Without them the runtimes still compute the right numbers, by emulation (bf16 and
    fp16 converted to fp32 around each multiply) or with 16-bit intermediates (int8
    without VNNI), and a recipe chosen for its speed becomes slower than fp32. So
    serving refuses such an artifact unless told otherwise."""

    model_config = ConfigDict(frozen=True)

    name: str
    any_of: tuple[str, ...]

    def met_by(self, flags: tuple[str, ...]) -> bool:
        return any(f in flags for f in self.any_of)

    def __str__(self) -> str:
        return f"{self.name} (needs {' or '.join(self.any_of)})"


#: bf16 matrix multiplies: AVX512_BF16 (Cooper Lake, Zen 4 and later) or AMX.
BF16 = KernelNeed(name="bf16", any_of=("avx512_bf16", "amx_bf16"))
#: fp16 arithmetic: AVX512_FP16 (Sapphire Rapids and later) or AMX-FP16.
FP16 = KernelNeed(name="fp16", any_of=("avx512_fp16", "amx_fp16"))
#: int8 dot products with 32-bit accumulation: full 8-bit weights without saturation.
VNNI = KernelNeed(name="int8-vnni", any_of=("avx512_vnni", "avx_vnni", "amx_int8"))


class Hardware(BaseModel):
    """The machine an artifact was tuned on, reduced to what decides kernel choice."""

    model_config = ConfigDict(frozen=True)

    machine: str
    cpu: str
    flags: tuple[str, ...]
    cores: int
    #: The GPU it was tuned on (torch's device name); None for a CPU search.
    gpu: str | None = None

    @property
    def fingerprint(self) -> str:
        key = f"{self.machine}|{self.cpu}|{','.join(self.flags)}|{self.cores}"
        if self.gpu:
            key += f"|{self.gpu}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def unmet(self, needs: tuple[KernelNeed, ...]) -> list[KernelNeed]:
        """The needs this machine's CPU does not meet."""
        return [n for n in needs if not n.met_by(self.flags)]

    def differences(self, other: Hardware) -> list[str]:
        """What about ``other`` differs in ways that may change the best candidate."""
        out = []
        if self.machine != other.machine:
            out.append(f"architecture {self.machine} -> {other.machine}")
        missing = sorted(set(self.flags) - set(other.flags))
        added = sorted(set(other.flags) - set(self.flags))
        if missing:
            out.append(f"CPU flags missing here: {', '.join(missing)}")
        if added:
            out.append(f"CPU flags new here: {', '.join(added)}")
        if self.cores != other.cores:
            out.append(f"cores {self.cores} -> {other.cores}")
        if self.gpu != other.gpu:
            out.append(f"GPU {self.gpu or 'none'} -> {other.gpu or 'none'}")
        return out


def current_hardware(cores: int, gpu: str | None = None) -> Hardware:
    cpu, flags = "", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not cpu:
                cpu = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return Hardware(
        machine=platform.machine(),
        cpu=cpu or platform.processor() or "unknown",
        flags=tuple(f for f in _RELEVANT_FLAGS if f in flags),
        cores=cores,
        gpu=gpu,
    )


class SourceModel(BaseModel):
    path: str
    content_hash: str
    model_type: str
    architectures: tuple[str, ...] = ()


class Manifest(BaseModel):
    """The artifact's record. Figures are the report split's unless a field says not."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    squeezer_version: str
    created: str
    task: str
    source: SourceModel
    runtime: str
    runtime_version: str
    precision: str
    variant: str = ""
    candidate: str
    #: The backend's keyword arguments for this artifact (e.g. ``{"compile": true}``).
    runtime_options: dict[str, Any] = Field(default_factory=dict)
    #: Accuracy on the report split (loss, min/mean cosine, agreement ...).
    accuracy: dict[str, float]
    #: Speed figures (sentences/s at batch shapes, single-request latency ms).
    speed: dict[str, float]
    max_loss: float
    #: What the winner was fastest at: "throughput" (batches) or "latency" (one input).
    objective: str = "throughput"
    #: False when no candidate met the budget and the artifact fell back to fp32.
    within_budget: bool = True
    hardware: Hardware
    #: CPU instructions the recipe's kernels rely on (empty: runs well anywhere).
    requires: tuple[KernelNeed, ...] = ()
    build: dict[str, Any] = Field(default_factory=dict)

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest, None when it has none; a broken one is a load error."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as e:
        raise ModelLoadError(f"{path}: not a valid squeezer manifest ({e})") from e
