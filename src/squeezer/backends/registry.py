"""Backends by name: the one place that knows which runtimes exist."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from squeezer.backends.base import Backend
from squeezer.errors import ModelLoadError


def _torch(path: Path, device: str, dtype: str) -> Backend:
    from squeezer.backends.torch_backend import TorchBackend

    return TorchBackend(path, device=device, dtype=dtype)


_LOADERS: dict[str, Callable[[Path, str, str], Backend]] = {"torch": _torch}


def available_backends() -> tuple[str, ...]:
    return tuple(_LOADERS)


def load_backend(name: str, path: Path, *, device: str, dtype: str) -> Backend:
    """Load ``path`` with the named runtime; device and dtype are already resolved."""
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ModelLoadError(
            f"unknown backend {name!r}; available: {', '.join(available_backends())}"
        ) from None
    return loader(path, device, dtype)
