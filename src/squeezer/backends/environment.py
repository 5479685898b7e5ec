"""What a bug report needs to know about this process: the libraries that shape
outputs (and whether each lies in squeezer's tested range), the CPU flags and the GPU
the optimizer records. ``squeezer env`` prints it; the server logs its versions line
at start-up."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from typing import Any

import torch

from squeezer import __version__
from squeezer.backends.device import compute_threads, gpu_name
from squeezer.models.manifest import Hardware, current_hardware
from squeezer.versions import LibraryVersions, WatchedVersion, library_versions, watched_versions


@dataclass(frozen=True, slots=True)
class Environment:
    squeezer: str
    platform: str
    versions: LibraryVersions
    libraries: tuple[WatchedVersion, ...]
    #: torch's CUDA build (None: a CPU build) and the GPUs it sees.
    torch_cuda: str | None
    gpus: tuple[str, ...]
    #: The CPU and GPU as an optimizer artifact records them (``squeezer.json``).
    hardware: Hardware

    def to_json(self) -> dict[str, Any]:
        return {
            "squeezer": self.squeezer,
            "platform": self.platform,
            "versions": self.versions.as_dict(),
            "libraries": [asdict(w) for w in self.libraries],
            "torch_cuda": self.torch_cuda,
            "gpus": list(self.gpus),
            "hardware": self.hardware.model_dump(),
        }


def environment() -> Environment:
    gpus = tuple(
        str(torch.cuda.get_device_name(i))
        for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    )
    return Environment(
        squeezer=__version__,
        platform=platform.platform(),
        versions=library_versions(),
        libraries=tuple(watched_versions()),
        torch_cuda=torch.version.cuda,
        gpus=gpus,
        hardware=current_hardware(compute_threads(), gpu_name("cuda:0") if gpus else None),
    )
