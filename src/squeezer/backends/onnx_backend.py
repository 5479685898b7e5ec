"""ONNX Runtime on CPU: an exported (and usually fused or quantized) ``model.onnx``.

One ``InferenceSession`` per model, created at load. Its thread pool is sized to the
cores squeezer computes on, with inter-op parallelism off and spinning disabled:
ORT's defaults (one thread per core, busy-waiting between runs) oversubscribe a small
box when the tokenizer pool and the HTTP loop share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from squeezer.backends.device import compute_threads
from squeezer.backends.graph_io import check_cpu_artifact, feed, gather_positions, requested
from squeezer.errors import ModelLoadError
from squeezer.types import NamedArrays

MODEL_FILE = "model.onnx"


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


class OnnxBackend:
    """Runs ``model.onnx`` from an artifact folder; its outputs are the graph's outputs.

    A graph exported with a vocabulary head returns logits for every token; when the
    batch names ``logit_positions`` only those rows are returned, as the torch backend
    does, so tasks see the same shapes whatever the runtime.
    """

    name = "onnxruntime"

    def __init__(self, path: Path, *, device: str = "cpu", dtype: str = "float32") -> None:
        import onnxruntime as ort

        check_cpu_artifact("onnxruntime", device, dtype)
        model = path / MODEL_FILE
        if not model.is_file():
            raise ModelLoadError(
                f"{path} has no {MODEL_FILE}: build one with `squeezer optimize {path}`"
            )
        self.device = device
        self.dtype = dtype
        try:
            self._session = ort.InferenceSession(
                str(model), session_options(compute_threads()), providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own untyped errors for bad graphs
            raise ModelLoadError(f"onnxruntime could not load {model}: {e}") from e
        self._inputs = tuple(i.name for i in self._session.get_inputs())
        self._outputs = tuple(o.name for o in self._session.get_outputs())

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    def forward(self, inputs: NamedArrays, outputs: Sequence[str] | None = None) -> NamedArrays:
        wanted = requested(outputs, self._outputs)
        arrays = feed(inputs, ((name, np.int64) for name in self._inputs))
        results = dict(zip(wanted, self._session.run(wanted, arrays), strict=True))
        return gather_positions(results, inputs)

    def close(self) -> None:
        del self._session
