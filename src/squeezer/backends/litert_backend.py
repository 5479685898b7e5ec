"""LiteRT (TensorFlow Lite) on CPU: a ``model.tflite`` run by XNNPACK.

The file holds one signature per static (batch, length) bucket, ``b{batch}_l{length}``
(see ``optimize/build_litert.py``). Static shapes are what XNNPACK runs fastest: on
all-MiniLM-L6-v2, a batch of 32 x 40 tokens took 200 ms in a static graph against
390 ms in one converted with dynamic batch and length (same run, 2 cores).

A batch is cut into buckets rather than padded to one: rows are sorted by their real
length (up to the last attended token), taken ``BATCHES[-1]`` at a time, and each
chunk runs in the shortest length bucket that holds its longest row. So one long row
does not make every row of the batch pay for its length. Outputs at positions no
bucket computed (past a row's chunk length) are zeros; every task reads hidden
states through the attention mask, or logits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from squeezer.backends.device import compute_threads
from squeezer.backends.graph_io import check_cpu_artifact, feed, gather_positions, requested
from squeezer.errors import ModelLoadError
from squeezer.types import NamedArrays

MODEL_FILE = "model.tflite"

#: Batch sizes a batch is split into. Per row, 8 rows cost what 32 do (XNNPACK's GEMMs
#: are already efficient at 8 x 40 tokens) and one row alone costs about two; see
#: ``_batch_for``.
BATCHES = (1, 8)
#: Length buckets (the model's own maximum is added as the last one): about 1.5x apart,
#: so a chunk is padded by at most about half its longest row.
LENGTHS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)

_SIGNATURE = re.compile(r"b(\d+)_l(\d+)")


def signature_name(batch: int, length: int) -> str:
    return f"b{batch}_l{length}"


def _batch_for(rows: int, sizes: Sequence[int]) -> int:
    """The bucket for the next ``rows`` rows: the largest size when they fill it;
    otherwise the smallest that holds them, unless that would be more than half
    padding, when the largest that fits is cheaper (run again for the rest)."""
    if rows >= sizes[-1]:
        return sizes[-1]
    holds = min(s for s in sizes if s >= rows)
    fits = [s for s in sizes if s <= rows]
    return max(fits) if holds > 2 * rows and fits else holds


class LiteRtBackend:
    """Runs a squeezer-built ``.tflite`` with the LiteRT interpreter and XNNPACK.

    Inputs the model has are fed as int32 (``token_type_ids`` as zeros when the batch
    has none); other keys in the batch are ignored.
    """

    name = "litert"

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
    ) -> None:
        check_cpu_artifact("litert", device, dtype)
        model = path / MODEL_FILE
        if not model.is_file():
            raise ModelLoadError(
                f"{path} has no {MODEL_FILE}: build it with `squeezer optimize {path}`"
            )
        from ai_edge_litert.interpreter import Interpreter

        self.device = device
        self.dtype = dtype
        try:
            # The default op resolver applies the XNNPACK delegate to every signature.
            self._interpreter = Interpreter(
                model_path=str(model), num_threads=threads or compute_threads()
            )
            signatures = self._interpreter.get_signature_list()
        except Exception as e:  # the interpreter raises ValueError/RuntimeError for bad files
            raise ModelLoadError(f"litert could not load {model}: {e}") from e
        shapes = {}
        for key, io in signatures.items():
            match = _SIGNATURE.fullmatch(key)
            if match is None:
                raise ModelLoadError(
                    f"{model} has a signature {key!r}; squeezer runs only the "
                    "b{batch}_l{length} signatures `squeezer optimize` writes"
                )
            shapes[int(match[1]), int(match[2])] = key
            self._inputs = tuple((name, np.int32) for name in io["inputs"])
            self._outputs = tuple(io["outputs"])
        if not shapes:
            raise ModelLoadError(f"{model} has no signatures")
        self._keys = shapes
        self._batches = tuple(sorted({b for b, _ in shapes}))
        self._lengths = {b: sorted(n for bb, n in shapes if bb == b) for b in self._batches}
        self._runners: dict[str, Any] = {}

    @property
    def output_names(self) -> tuple[str, ...]:
        return self._outputs

    def _runner(self, batch: int, length: int) -> Any:
        key = self._keys[batch, length]
        runner = self._runners.get(key)
        if runner is None:
            runner = self._runners[key] = self._interpreter.get_signature_runner(key)
        return runner

    def _length_for(self, batch: int, tokens: int) -> int:
        lengths = self._lengths[batch]
        if tokens > lengths[-1]:
            raise ValueError(
                f"input has {tokens} tokens; this LiteRT model was converted for at most "
                f"{lengths[-1]}"
            )
        return next(n for n in lengths if n >= tokens)

    def forward(self, inputs: NamedArrays, outputs: Sequence[str] | None = None) -> NamedArrays:
        wanted = requested(outputs, self._outputs)
        arrays = feed(inputs, self._inputs)
        ids = arrays["input_ids"]
        rows, width = ids.shape
        mask = inputs.get("attention_mask")
        if mask is None:
            real = np.full(rows, width)
        else:  # up to the last attended token, whatever side the padding is on
            attended = np.asarray(mask) != 0
            real = np.where(attended.any(axis=1), width - np.argmax(attended[:, ::-1], axis=1), 1)
        order = np.argsort(real, kind="stable")
        results: dict[str, np.ndarray[Any, Any]] = {}
        start = 0
        while start < rows:
            batch = _batch_for(rows - start, self._batches)
            chosen = order[start : start + batch]
            tokens = int(real[chosen].max())
            length = self._length_for(batch, tokens)
            chunk = {}
            for name, array in arrays.items():
                block = np.zeros((batch, length), np.int32)
                block[: len(chosen), :tokens] = array[chosen, :tokens]
                chunk[name] = block
            out = self._runner(batch, length)(**chunk)
            for name in wanted:
                value = out[name]
                if name not in results:
                    shape = (
                        (rows, width, *value.shape[2:])
                        if value.ndim >= 3
                        else (rows, *value.shape[1:])
                    )
                    results[name] = np.zeros(shape, np.float32)
                if value.ndim >= 3:
                    results[name][chosen, :tokens] = value[: len(chosen), :tokens]
                else:
                    results[name][chosen] = value[: len(chosen)]
            start += len(chosen)
        return gather_positions(results, inputs)

    def close(self) -> None:
        self._runners.clear()
        del self._interpreter
