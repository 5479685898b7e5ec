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

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda:0`` when a GPU is visible, else ``cpu``; ``cuda`` -> ``cuda:0``."""
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return "cuda:0"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda:"):
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
    return device


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
