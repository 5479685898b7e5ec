"""Resolve ``auto`` device and dtype choices, and set thread counts once per process.

Thread counts matter more than anything else on a small CPU box: torch, ONNX Runtime
and the tokenizers' Rayon pool each default to one thread per core and, under
concurrency, oversubscribe the cores. squeezer runs forward passes on one compute
thread per device, so torch gets all cores for intra-op work, inter-op parallelism is
off, and tokenization (which overlaps compute) runs single-threaded per call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda:0`` when a GPU is visible, else ``cpu``; ``cuda`` -> ``cuda:0``."""
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    index = device.removeprefix("cuda").removeprefix(":")
    if not device.startswith("cuda") or not (index == "" or index.isdigit()):
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise ValueError(
            f"device {device!r} asked for, but torch {torch.__version__} ({build}) sees no "
            "CUDA device; use --device cpu or auto"
        )
    n = torch.cuda.device_count()
    if index and int(index) >= n:
        raise ValueError(f"device {device!r}: torch sees {n} CUDA device(s), cuda:0..{n - 1}")
    return f"cuda:{index or 0}"


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> fp32 on CPU; bf16 on GPUs that support it, else fp16."""
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected auto, float32, float16 or bfloat16")
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def torch_dtype(dtype: str) -> torch.dtype:
    return _DTYPES[dtype]


def physical_cores() -> int:
    """Cores available to this process (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_configured_threads = 0


def compute_threads() -> int:
    """Intra-op threads every runtime should use: what ``configure_threads`` set, else
    one per core. ONNX Runtime, OpenVINO and CTranslate2 read this when a session is
    created, so all runtimes agree with torch and never oversubscribe the cores."""
    return _configured_threads or physical_cores()


def configure_threads(threads: int = 0) -> int:
    """Set process-wide compute thread counts once; returns the intra-op count used."""
    global _configured_threads
    n = threads or physical_cores()
    _configured_threads = n
    torch.set_num_threads(n)
    # Raises when already set or parallel work has started: keep what is there then.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    return n


def cuda_index(device: str) -> int | None:
    """``cuda:N`` -> N; None for any other device."""
    if not device.startswith("cuda"):
        return None
    return int(device.partition(":")[2] or 0)


def gpu_name(device: str) -> str | None:
    """The CUDA device's name (what an optimizer artifact was tuned on); None off CUDA."""
    index = cuda_index(device)
    return None if index is None else str(torch.cuda.get_device_name(index))


def cap_gpu_memory(device: str, fraction: float) -> None:
    """Let this process allocate at most ``fraction`` of a CUDA device's memory.

    Past the cap torch raises ``OutOfMemoryError`` instead of taking the rest of the
    card, and the batch queue splits the batch (``DeviceOutOfMemoryError``), so the
    cap is a budget, not a crash. No-op off CUDA."""
    index = cuda_index(device)
    if index is not None:
        torch.cuda.set_per_process_memory_fraction(fraction, index)


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """One CUDA device's memory as torch's caching allocator sees it, in bytes."""

    device: str
    allocated: int  # held by live tensors
    reserved: int  # held by the allocator's cache (allocated + free blocks it keeps)
    limit: int  # what this process may take: total x --gpu-memory-fraction


def gpu_memory(devices: Iterable[str], fraction: float) -> list[DeviceMemory]:
    """Memory of each distinct CUDA device among ``devices`` (CPU ones are skipped)."""
    seen: dict[int, str] = {}
    for device in devices:
        index = cuda_index(device)
        if index is not None:
            seen.setdefault(index, f"cuda:{index}")
    out = []
    for index, name in sorted(seen.items()):
        total = torch.cuda.get_device_properties(index).total_memory
        out.append(
            DeviceMemory(
                name,
                allocated=int(torch.cuda.memory_allocated(index)),
                reserved=int(torch.cuda.memory_reserved(index)),
                limit=int(total * fraction),
            )
        )
    return out
