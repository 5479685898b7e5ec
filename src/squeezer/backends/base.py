"""The backend protocol: named arrays in, named arrays out, on one device.

A backend knows nothing of HTTP, batching or tasks. Optimized runtimes (ONNX Runtime,
OpenVINO, CTranslate2) implement the same protocol, so the engine and tasks never
change when a runtime is added.
"""

from __future__ import annotations

from collections.abc import Sequence
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

    def forward(self, inputs: NamedArrays, outputs: Sequence[str] | None = None) -> NamedArrays:
        """Compute ``outputs`` (all of ``output_names`` when None) for a batch.

        ``inputs`` may hold ``logit_positions`` ((N, 2) rows of ``[batch row, token]``):
        a model with a vocabulary head then returns ``logits`` of shape (N, vocab) for
        just those tokens instead of (batch, length, vocab).
        """
        ...

    def close(self) -> None: ...
