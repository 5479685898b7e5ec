"""Which candidates a search tries here, and why the others are not tried.

A candidate is left out, with its reason in the report, when its runtime is not
installed (each is an optional extra), when the search is for a GPU and its runtime
runs on CPU cores only, or when this CPU lacks the instructions its kernels need
(``Candidate.needs``: a bf16 recipe without AVX512_BF16 or AMX would be measured at
emulation speed only to lose).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from squeezer.backends.registry import missing_reason
from squeezer.models.manifest import current_hardware
from squeezer.optimize.candidate import Candidate

#: Build modules by runtime: each has CANDIDATES and supports(folder).
BUILD_MODULES = {
    "torch": "squeezer.optimize.build_torch",
    "onnxruntime": "squeezer.optimize.build_onnx",
    "openvino": "squeezer.optimize.build_openvino",
    "ctranslate2": "squeezer.optimize.build_ctranslate2",
    "jax": "squeezer.optimize.build_jax",
    "litert": "squeezer.optimize.build_litert",
}


#: Runtimes that change torch for the whole process when they load: importing torchax
#: renames torch's privateuse1 device to "jax", after which torch.compile (dynamo)
#: fails for every model of the process. A standalone ``squeezer optimize`` tries it
#: last but one (after every torch candidate); a search inside a server does not.
PROCESS_WIDE = {"jax": "importing torchax breaks torch.compile for the rest of the process"}


def build_module(runtime: str) -> ModuleType:
    return importlib.import_module(BUILD_MODULES[runtime])


def _named(runtime: str, only: tuple[str, ...]) -> bool:
    return not only or any(p.startswith(runtime) or runtime.startswith(p) for p in only)


def all_candidates(
    only: tuple[str, ...] = (),
    device: str = "cpu",
    flags: tuple[str, ...] | None = None,
    *,
    in_server: bool = False,
) -> tuple[list[Candidate], dict[str, str]]:
    """Every candidate that can run well here (and whose name starts with one of
    ``only``, when given), and why the others are not tried, by runtime or candidate.

    ``flags``: the CPU's (this machine's when None); ``in_server``: the search runs in a
    process that goes on serving, so ``PROCESS_WIDE`` runtimes are left out."""
    from squeezer.optimize.build_torch import GPU_CANDIDATES

    if device != "cpu":
        missing = {
            runtime: f"runs on CPU only; this search is for {device}"
            for runtime in BUILD_MODULES
            if runtime != "torch" and _named(runtime, only)
        }
        return _only(list(GPU_CANDIDATES), only), missing
    if flags is None:
        flags = current_hardware(1).flags
    found: list[Candidate] = []
    missing = {}
    for runtime in BUILD_MODULES:
        if runtime != "torch" and not _named(runtime, only):
            continue  # torch always: its fp32 is the reference
        reason = missing_reason(runtime)
        if reason is None and in_server and runtime in PROCESS_WIDE:
            reason = f"{PROCESS_WIDE[runtime]}: run `squeezer optimize` for it"
        if reason is not None:
            missing[runtime] = reason
            continue
        for c in _only(list(build_module(runtime).CANDIDATES), only):
            unmet = [n for n in c.needs if not n.met_by(flags)]
            if unmet:
                missing[c.name] = f"this CPU lacks {'; '.join(str(n) for n in unmet)}"
            else:
                found.append(c)
    return found, missing


def _only(candidates: list[Candidate], only: tuple[str, ...]) -> list[Candidate]:
    from squeezer.optimize.select import REFERENCE

    if not only:
        return candidates
    return [c for c in candidates if c.name == REFERENCE or c.name.startswith(only)]
