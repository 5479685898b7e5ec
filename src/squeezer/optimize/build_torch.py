"""torch candidates: the fp32 reference, inductor, and half precision where it is fast.

Every torch candidate serves the source's own weights (copied as they are); the
precision is a cast at load, recorded in the manifest's runtime options, so serving
loads the artifact exactly as it was measured.

Half precision is what a GPU's tensor cores are for. On a CPU it pays only with the
instructions that multiply in it: bf16 with AVX512_BF16 or AMX, fp16 with
AVX512_FP16 or AMX-FP16. Elsewhere torch converts to fp32 around every multiply and the
recipe is slower than fp32, so a CPU search offers it only where the flags are.

Autocast (fp32 weights, bf16 matmuls) was measured on MiniLM on a Sapphire Rapids
host at 0.8x fp32: on CPU the weights are cast again on every call. A cast at load
is what the candidates use (6x fp32 there, min cosine 0.99994).
"""

from __future__ import annotations

import shutil

from squeezer.models import ModelFolder
from squeezer.models.manifest import BF16, FP16, KernelNeed
from squeezer.optimize.candidate import BuildContext, BuildInfo, Candidate, runtime_version
from squeezer.optimize.select import REFERENCE
from squeezer.types import Task


def supports(_folder: ModelFolder) -> str | None:
    return None  # torch runs whatever the search gates


def build_reference(ctx: BuildContext) -> BuildInfo:
    files = []
    for pattern in ("*.safetensors", "pytorch_model.bin"):
        for f in ctx.source.path.glob(pattern):
            shutil.copyfile(f, ctx.out / f.name)
            files.append(f.name)
    return BuildInfo(tuple(files), {"torch": runtime_version("torch")})


REFERENCE_CANDIDATE = Candidate("torch", "float32", build=build_reference)
assert REFERENCE_CANDIDATE.name == REFERENCE
#: torch.compile (inductor) of the encoder: same weights, fused kernels; embeddings only
#: (heads run eager so fill-mask's gather hook never forces a recompile).
COMPILED_CANDIDATE = Candidate(
    "torch",
    "float32",
    "compile",
    build=build_reference,
    tasks=frozenset({Task.EMBED}),
    options={"compile": True},
)


def half(precision: str, compile: bool = False, needs: tuple[KernelNeed, ...] = ()) -> Candidate:
    """torch in fp16 or bf16: same weights, cast at load (the manifest records the
    dtype); with ``compile``, inductor over the encoder too (embeddings only)."""
    if not compile:
        return Candidate(
            "torch", precision, build=build_reference, options={"dtype": precision}, needs=needs
        )
    return Candidate(
        "torch",
        precision,
        "compile",
        build=build_reference,
        tasks=frozenset({Task.EMBED}),
        options={"dtype": precision, "compile": True},
        needs=needs,
    )


#: A GPU search: every GPU squeezer runs on has native fp16, and bf16 where torch says
#: so (an fp16-only GPU runs bf16 candidates slowly; the search measures that).
GPU_CANDIDATES = (
    REFERENCE_CANDIDATE,
    COMPILED_CANDIDATE,
    *(half(p, c) for p in ("float16", "bfloat16") for c in (False, True)),
)
#: A CPU search: half precision only where its instructions are (``needs``).
CANDIDATES = (
    REFERENCE_CANDIDATE,
    COMPILED_CANDIDATE,
    half("bfloat16", needs=(BF16,)),
    half("bfloat16", compile=True, needs=(BF16,)),
    half("float16", needs=(FP16,)),
)
