"""The backend protocol: named arrays in, named arrays out, on one device.

A backend knows nothing of HTTP, batching or tasks. Optimized runtimes (ONNX Runtime,
OpenVINO, CTranslate2) implement the same protocol, so the engine and tasks never
change when a runtime is added.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from squeezer.types import NamedArrays


@runtime_checkable
class Backend(Protocol):
    """A loaded model ready to run forward passes.

    ``forward`` is called from exactly one thread at a time (the device's compute
    thread), so implementations need no locking of their own.
    """

    #: Runtime name as users pick it ("torch", "onnxruntime", ...).
    name: str
    #: Resolved device ("cpu", "cuda:0") and dtype ("float32", ...), never "auto".
    device: str
    dtype: str

    @property
    def output_names(self) -> tuple[str, ...]: ...

    def forward(self, inputs: NamedArrays) -> NamedArrays: ...

    def close(self) -> None: ...
