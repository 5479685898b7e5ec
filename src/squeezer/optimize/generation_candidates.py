"""What the generation search tries on a causal LM, why the others are not tried, and
how a candidate (or a generation artifact) is loaded.

The candidates are decode paths of the two generation backends:

- ``torch-float32``: the reference, the weights as they are;
- ``torch-bfloat16`` / ``torch-float16``: weights and activations cast at load,
  offered only where the CPU multiplies in them (``KernelNeed`` BF16 / FP16);
- ``torch-int8-weights``: int8 weight-only linear layers (``--quantize int8``);
- ``torch-fp16-weights``: fbgemm fp16 weights, fp32 activations (``--quantize fp16``);
- ``llamacpp-<quant>``: llama.cpp on the model's GGUF file, its own quantized blocks
  (``--quantize gguf``).

Each candidate is a recipe over the source's files, not new weights: the artifact
holds the source folder (and the GGUF for llama.cpp), and its manifest's runtime
options (``dtype``, ``quantize``, ``gguf``) say how to load it. So ``serve``'s
``--quantize`` flags and a generation artifact are two ways to name the same fixed
candidates (``QUANTIZE_CANDIDATES``), and ``recipe_of`` reads one back from a manifest.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squeezer.errors import ModelLoadError
from squeezer.models import ModelFolder
from squeezer.models.gguf import GGUF_SUFFIX, gguf_precision, source_gguf
from squeezer.models.manifest import BF16, FP16, KernelNeed, Manifest, current_hardware
from squeezer.optimize.candidate import Candidate
from squeezer.optimize.generation_probe import SteppedBackend
from squeezer.types import Task

_GENERATE = frozenset({Task.GENERATE})
LLAMACPP = "llamacpp"


def _torch(
    precision: str, variant: str = "", needs: tuple[KernelNeed, ...] = (), **options: Any
) -> Candidate:
    return Candidate(
        "torch",
        precision,
        variant,
        tasks=_GENERATE,
        options={"dtype": "float32", **options},
        needs=needs,
    )


REFERENCE_CANDIDATE = _torch("float32")
TORCH_CANDIDATES: tuple[Candidate, ...] = (
    REFERENCE_CANDIDATE,
    _torch("bfloat16", needs=(BF16,), dtype="bfloat16"),
    _torch("float16", needs=(FP16,), dtype="float16"),
    _torch("int8", "weights", quantize="int8"),
    _torch("fp16", "weights", quantize="fp16"),
)
#: ``serve --quantize`` values and the candidate each is a shortcut for.
QUANTIZE_CANDIDATES = {
    "int8": "torch-int8-weights",
    "fp16": "torch-fp16-weights",
    "gguf": f"{LLAMACPP}-<the GGUF's quantization>",
}


def llamacpp_candidate(gguf: Path) -> Candidate:
    """llama.cpp on ``gguf``: named after the file's quantization (``llamacpp-q4_1``)."""
    return Candidate(
        LLAMACPP,
        gguf_precision(gguf),
        tasks=_GENERATE,
        options={"quantize": "gguf", "gguf": gguf.name},
    )


def find_model_gguf(folder: ModelFolder, explicit: Path | None = None) -> Path | None:
    """The GGUF a causal LM's llama.cpp candidate runs: ``explicit``, else the file the
    folder was converted from (``models.gguf``), else the one ``.gguf`` in the folder."""
    if explicit is not None:
        if not explicit.is_file():
            raise ModelLoadError(f"--gguf {explicit} is not a file")
        return explicit
    found = source_gguf(folder.path)
    if found is not None:
        return found
    files = sorted(folder.path.glob(f"*{GGUF_SUFFIX}"))
    return files[0] if len(files) == 1 else None


def _llamacpp_missing() -> str | None:
    try:
        importlib.import_module("llama_cpp")
    except (ImportError, OSError) as e:
        return f"llama-cpp-python does not import ({e}): pip install 'squeezer[llamacpp]'"
    return None


def _named(name: str, only: tuple[str, ...]) -> bool:
    return not only or name.startswith(only)


def generation_candidates(
    folder: ModelFolder,
    only: tuple[str, ...] = (),
    flags: tuple[str, ...] | None = None,
    gguf: Path | None = None,
) -> tuple[list[Candidate], dict[str, str]]:
    """The candidates that can run well here (the reference always; the others whose
    name starts with one of ``only``, when given), and why each other one cannot."""
    if flags is None:
        flags = current_hardware(1).flags
    found: list[Candidate] = []
    missing: dict[str, str] = {}
    for c in TORCH_CANDIDATES:
        if c is not REFERENCE_CANDIDATE and not _named(c.name, only):
            continue
        unmet = [n for n in c.needs if not n.met_by(flags)]
        if unmet:
            missing[c.name] = f"this CPU lacks {'; '.join(str(n) for n in unmet)}"
        else:
            found.append(c)
    if _named(LLAMACPP, only) or any(LLAMACPP.startswith(p) for p in only):
        reason = _llamacpp_missing()
        if reason is None and gguf is None:
            reason = (
                f"no GGUF file: {folder.path} was not converted from one and holds none "
                "(pass --gguf FILE)"
            )
        if reason is not None:
            missing[LLAMACPP] = reason
        else:
            assert gguf is not None
            found.append(llamacpp_candidate(gguf))
    return found, missing


def open_candidate(
    c: Candidate,
    folder: Path,
    *,
    gguf: Path | None,
    max_slots: int,
    max_len: int,
    device: str = "cpu",
) -> SteppedBackend:
    """Load ``c``'s backend on the source ``folder`` (llama.cpp: on ``gguf``)."""
    if c.runtime == LLAMACPP:
        from squeezer.backends.llamacpp_generation import LlamaCppGenerationBackend

        if gguf is None:
            raise ModelLoadError(f"{c.name} needs the model's GGUF file")
        return LlamaCppGenerationBackend(gguf, max_slots=max_slots, max_len=max_len)
    from squeezer.backends.torch_generation import TorchGenerationBackend

    return TorchGenerationBackend(
        folder,
        device=device,
        dtype=str(c.options.get("dtype", "float32")),
        quantize=c.options.get("quantize"),
        max_slots=max_slots,
        max_len=max_len,
    )


@dataclass(frozen=True, slots=True)
class GenerationRecipe:
    """How serving loads a generation artifact: what ``--dtype``/``--quantize`` would
    say for the same candidate, and the GGUF file of a llama.cpp one."""

    candidate: str
    dtype: str | None
    quantize: str | None
    gguf: Path | None


def recipe_of(manifest: Manifest, folder: Path) -> GenerationRecipe:
    """The recipe a generation artifact's manifest records (its GGUF is in ``folder``)."""
    options = manifest.runtime_options
    quantize = options.get("quantize")
    gguf = None
    if manifest.runtime == LLAMACPP:
        name = options.get("gguf")
        gguf = folder / str(name) if name else None
        if gguf is None or not gguf.is_file():
            raise ModelLoadError(
                f"{folder}: artifact {manifest.candidate} runs llama.cpp on "
                f"{name or 'a GGUF file'}, which is not in the folder"
            )
        quantize = "gguf"
    elif manifest.runtime != "torch":
        raise ModelLoadError(
            f"{folder}: a generation artifact runs on torch or {LLAMACPP}, not {manifest.runtime}"
        )
    dtype = options.get("dtype")
    return GenerationRecipe(
        manifest.candidate,
        str(dtype) if dtype else None,
        str(quantize) if quantize else None,
        gguf,
    )
