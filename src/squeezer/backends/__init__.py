"""Runtimes that compute forward passes: named arrays in, named arrays out."""

from squeezer.backends.base import Backend
from squeezer.backends.registry import available_backends, load_backend

__all__ = ["Backend", "available_backends", "load_backend"]
