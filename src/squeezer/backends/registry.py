"""Backends by name: the one place that knows which runtimes exist.

Optimized runtimes are optional extras (``pip install squeezer[onnx]``, ``[openvino]``,
``[ctranslate2]``, ``[jax]``, ``[litert]``); each loader imports its runtime only when
asked for, and a missing package becomes a ``ModelLoadError`` that says which extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from squeezer.backends.base import Backend
from squeezer.errors import ModelLoadError

#: Runtime name -> (module, class, the import it needs, the extra that installs it).
_RUNTIMES: dict[str, tuple[str, str, str, str]] = {
    "torch": ("squeezer.backends.torch_backend", "TorchBackend", "torch", ""),
    "onnxruntime": ("squeezer.backends.onnx_backend", "OnnxBackend", "onnxruntime", "onnx"),
    "openvino": (
        "squeezer.backends.openvino_backend",
        "OpenVinoBackend",
        "openvino",
        "openvino",
    ),
    "ctranslate2": (
        "squeezer.backends.ctranslate2_backend",
        "CTranslate2Backend",
        "ctranslate2",
        "ctranslate2",
    ),
    # JAX/XLA: the HF PyTorch model run under XLA through torchax (optimize/build_jax.py).
    "jax": ("squeezer.backends.jax_backend", "JaxBackend", "torchax", "jax"),
    # LiteRT (TensorFlow Lite) with XNNPACK: a .tflite from litert-torch
    # (optimize/build_litert.py).
    "litert": ("squeezer.backends.litert_backend", "LiteRtBackend", "ai_edge_litert", "litert"),
}


def available_backends() -> tuple[str, ...]:
    """Runtimes whose packages are installed here."""
    return tuple(name for name, (*_, needs, _extra) in _RUNTIMES.items() if _installed(needs))


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def missing_reason(name: str) -> str | None:
    """Why ``name`` cannot load here (unknown or not installed), or None when it can."""
    if name not in _RUNTIMES:
        return f"unknown backend {name!r}; known: {', '.join(_RUNTIMES)}"
    needs, extra = _RUNTIMES[name][2:]
    if _installed(needs):
        return None
    return f"backend {name!r} needs the {needs!r} package: pip install 'squeezer[{extra}]'"


def load_backend(
    name: str, path: Path, *, device: str, dtype: str, options: dict[str, Any] | None = None
) -> Backend:
    """Load ``path`` with the named runtime; device and dtype are already resolved.

    ``options`` are the runtime's own keyword arguments (an artifact's manifest records
    them, e.g. ``compile`` for torch); a ``dtype`` there is the precision the artifact
    was measured at, and wins over ``dtype``."""
    reason = missing_reason(name)
    if reason is not None:
        raise ModelLoadError(reason)
    module, cls, _, _ = _RUNTIMES[name]
    loader: Callable[..., Backend] = getattr(importlib.import_module(module), cls)
    takes = inspect.signature(loader).parameters
    kwargs = dict(options or {})
    dtype = str(kwargs.pop("dtype", dtype))
    unknown = sorted(set(kwargs) - set(takes) - {"path", "device"})
    if unknown:
        raise ModelLoadError(f"backend {name!r} does not take options {unknown}")
    return loader(path, device=device, dtype=dtype, **kwargs)
