"""Feeding and reading exported graphs (ONNX Runtime, OpenVINO, LiteRT) the same way.

They take named arrays of fixed dtypes and return every output the caller names; they
need the same two conveniences the torch backend has natively: missing type ids
become zeros, and vocabulary logits are cut down to ``logit_positions``. They also
refuse the same serve settings: a device other than the CPU, and a dtype, since the
artifact's precision was chosen when it was built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from squeezer.errors import ModelLoadError
from squeezer.types import NamedArrays

Array = np.ndarray[Any, Any]


def require_cpu(runtime: str, device: str) -> None:
    if device != "cpu":
        raise ModelLoadError(
            f"the {runtime} backend runs on the CPU here; device {device!r} asked for"
        )


def check_cpu_artifact(runtime: str, device: str, dtype: str) -> None:
    """Refuse what an exported CPU artifact cannot honour: another device, or a dtype
    (its precision is the one the optimizer built and measured)."""
    require_cpu(runtime, device)
    if dtype != "float32":
        raise ModelLoadError(
            f"{runtime} artifacts carry their own precision; dtype {dtype!r} asked for "
            "(serve with --dtype float32 or auto)"
        )


def requested(outputs: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The outputs to compute (all when None); an unknown name is a caller's bug."""
    wanted = list(outputs) if outputs is not None else list(available)
    unknown = set(wanted) - set(available)
    if unknown:
        raise ValueError(
            f"outputs {sorted(unknown)} not produced; this model gives {list(available)}"
        )
    return wanted


def feed(inputs: NamedArrays, graph_inputs: Iterable[tuple[str, Any]]) -> dict[str, Array]:
    """The graph's inputs by name and dtype; one it needs but the batch lacks (type
    ids a tokenizer does not produce) is all zeros."""
    ids = inputs["input_ids"]
    out: dict[str, Array] = {}
    for name, dtype in graph_inputs:
        value = inputs.get(name)
        if value is None:
            value = np.zeros_like(ids)
        out[name] = np.ascontiguousarray(value, dtype=dtype)
    return out


def gather_positions(results: dict[str, Array], inputs: NamedArrays) -> dict[str, Array]:
    """Per-token vocabulary logits cut to the batch's ``logit_positions``, if it names any."""
    positions = inputs.get("logit_positions")
    logits = results.get("logits")
    if positions is not None and logits is not None and logits.ndim == 3:
        results["logits"] = logits[positions[:, 0], positions[:, 1]]
    return results
