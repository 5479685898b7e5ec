"""OpenVINO on CPU: an IR (``openvino_model.xml``/``.bin``) in fp32 or int8.

The model is compiled once, at load, with dynamic batch and length, as many inference
threads as squeezer computes with, one stream and the latency hint: the engine runs
one batch at a time on one compute thread, so more streams would only split the cores.
The precision hint is f32 unless the artifact says otherwise (``inference_precision``):
OpenVINO would run fp32 graphs in bf16 on CPUs that have it by default, and an fp32
artifact must match the fp32 reference; a bf16 artifact asks for bf16 because the
optimizer measured it within the budget. Int8 graphs keep their int8 kernels whatever
the hint; the hint decides what their float parts run in.
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

MODEL_XML = "openvino_model.xml"
MODEL_BIN = "openvino_model.bin"


#: ``inference_precision`` values an artifact may name.
PRECISIONS = ("f32", "bf16", "f16")


def compile_config(threads: int, precision: str = "f32") -> dict[str, Any]:
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    return {
        props.inference_num_threads: threads,
        props.streams.num: 1,
        hints.performance_mode: hints.PerformanceMode.LATENCY,
        hints.inference_precision: getattr(ov.Type, precision),
    }


class OpenVinoBackend:
    """Runs an OpenVINO IR from an artifact folder; its outputs are the IR's outputs.

    Inputs the IR has are fed as int64 (``token_type_ids`` as zeros when the batch has
    none); other keys in the batch are ignored. A graph with per-token ``logits`` returns
    only the rows named by ``logit_positions``, as the torch backend does.
    """

    name = "openvino"

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        inference_precision: str = "f32",
    ) -> None:
        if inference_precision not in PRECISIONS:
            raise ModelLoadError(
                f"openvino inference_precision {inference_precision!r}: expected one of "
                f"{', '.join(PRECISIONS)}"
            )
        check_cpu_artifact("openvino", device, dtype)
        xml, weights = path / MODEL_XML, path / MODEL_BIN
        if not xml.is_file() or not weights.is_file():
            raise ModelLoadError(
                f"{path} has no {MODEL_XML} and {MODEL_BIN}: build them with "
                f"`squeezer optimize {path}`"
            )
        import openvino as ov

        self.device = device
        self.dtype = dtype
        try:
            core = ov.Core()
            model = core.read_model(xml, weights)
            fixed = {
                p.get_any_name(): ov.PartialShape([-1, -1])
                for p in model.inputs
                if any(d.is_static for d in p.get_partial_shape())
            }
            if fixed:  # an IR saved with fixed shapes: open batch and length up
                model.reshape(fixed)
            self._compiled = core.compile_model(
                model, "CPU", compile_config(compute_threads(), inference_precision)
            )
        except Exception as e:  # OpenVINO raises plain RuntimeErrors for bad IRs
            raise ModelLoadError(f"openvino could not load {xml}: {e}") from e
        self._request = self._compiled.create_infer_request()
        self._inputs = tuple(
            (p.get_any_name(), p.get_element_type().to_dtype()) for p in self._compiled.inputs
        )
        self._ports = {p.get_any_name(): p for p in self._compiled.outputs}
        self._outputs = tuple(self._ports)

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    def forward(self, inputs: NamedArrays, outputs: Sequence[str] | None = None) -> NamedArrays:
        wanted = requested(outputs, self._outputs)
        # Inputs are read in place (the call is synchronous); outputs are copied out of
        # the request, which the next batch reuses.
        result = self._request.infer(
            feed(inputs, self._inputs), share_inputs=True, share_outputs=False
        )
        results = {name: np.asarray(result[self._ports[name]], dtype=np.float32) for name in wanted}
        return gather_positions(results, inputs)

    def close(self) -> None:
        del self._request, self._compiled
