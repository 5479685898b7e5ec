"""OpenVINO candidates: one torch -> IR conversion (``openvino_ir``), then fp32, bf16
and NNCF's int8 recipes (``openvino_int8``).

On CPUs with AVX512_BF16 or AMX, the ``bf16`` candidates run what stays in float in
bf16 (OpenVINO's inference precision hint): the fp32 IR as a whole, or the float
layers of an int8 IR. The ``vnni`` int8 candidates keep 8-bit weights, which only CPUs
that accumulate in 32 bits (VNNI, AMX) multiply without saturating; the ``static`` ones
keep 7-bit weights and run anywhere.
"""

from __future__ import annotations

from functools import partial

from squeezer.models import ModelFolder
from squeezer.models.manifest import BF16, VNNI, KernelNeed
from squeezer.optimize.candidate import BuildContext, BuildInfo, Candidate, encoder_only
from squeezer.optimize.openvino_int8 import (
    build_int8_mixed,
    build_int8_static,
    build_int8_weights,
)
from squeezer.optimize.openvino_ir import FILES, fp32_model, io_names, save, versions
from squeezer.types import Task

__all__ = [
    "CANDIDATES",
    "FILES",
    "build_fp32",
    "build_int8_mixed",
    "build_int8_static",
    "build_int8_weights",
    "supports",
]


def supports(folder: ModelFolder) -> str | None:
    return encoder_only(folder, "OpenVINO")


def build_fp32(ctx: BuildContext) -> BuildInfo:
    model = fp32_model(ctx)
    files = save(model, ctx.out)
    details: dict[str, object] = {"mode": "fp32", **io_names(model), **versions()}
    return BuildInfo(files, details)


#: Tasks the IR serves: hidden states for embeddings always; a sequence classifier's
#: logits for the tasks that read them.
_TASKS = frozenset({Task.EMBED, Task.CLASSIFY, Task.RERANK, Task.ZERO_SHOT})
_BF16 = {"inference_precision": "bf16"}
_VNNI = partial(build_int8_static, overflow_fix="disable")


def _mixed(overflow_fix: str, keep_kinds: int, needs: tuple[KernelNeed, ...]) -> Candidate:
    base = "vnni" if overflow_fix == "disable" else "static"
    return Candidate(
        "openvino",
        "int8",
        f"{base}-float{keep_kinds}kind",
        build=partial(build_int8_mixed, overflow_fix=overflow_fix, keep_kinds=keep_kinds),
        tasks=_TASKS,
        needs=needs,
    )


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("openvino", "float32", build=build_fp32, tasks=_TASKS),
    Candidate("openvino", "bfloat16", build=build_fp32, tasks=_TASKS, options=_BF16, needs=(BF16,)),
    Candidate("openvino", "int8", "weights", build=build_int8_weights, tasks=_TASKS),
    Candidate("openvino", "int8", "static", build=build_int8_static, tasks=_TASKS),
    Candidate("openvino", "int8", "vnni", build=_VNNI, tasks=_TASKS, needs=(VNNI,)),
    Candidate(
        "openvino",
        "int8",
        "vnni-bf16",
        build=_VNNI,
        tasks=_TASKS,
        options=_BF16,
        needs=(VNNI, BF16),
    ),
    _mixed("enable", 1, ()),
    _mixed("enable", 2, ()),
    _mixed("disable", 1, (VNNI,)),
)
