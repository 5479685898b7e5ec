"""JAX/XLA candidates: the source's PyTorch weights, run under XLA through torchax.

Nothing is converted ahead of time: the backend traces the model when it loads and
XLA compiles one executable per shape bucket (``backends/jax_backend.py``). A build
therefore copies the weights and records what serving will run with: the library
versions and the bucket settings. The candidates' ``warmup`` compiles batches of 1
and 32 for every length bucket at load, the two shapes the speed measure times, so
that no compile lands inside a timing.

There is no bfloat16 candidate: the backend runs bf16 (``dtype="bfloat16"``), but on
a 2-core Intel Xeon with AVX512_BF16 and AMX-BF16, XLA's CPU bf16 was slower than its
fp32 in the same rounds (all-MiniLM-L6-v2, batches of 32: 0.90x the fp32 throughput;
one sentence 31 ms vs 9.6 ms; ``--xla_cpu_use_onednn`` changed neither), for a pooled
cosine of 0.99985: nothing a search should spend its time on.
"""

from __future__ import annotations

import importlib.metadata
import shutil

from squeezer.backends.jax_backend import BATCHES, length_buckets
from squeezer.models import ModelFolder
from squeezer.optimize.candidate import BuildContext, BuildInfo, Candidate, encoder_only
from squeezer.types import Task

#: Weight files the backend loads with transformers; the rest of the folder is there.
_WEIGHTS = ("*.safetensors", "pytorch_model.bin")
#: Batch sizes compiled at load: one sentence alone and the speed measure's batch.
_WARMUP = (1, 32)


def supports(folder: ModelFolder) -> str | None:
    return encoder_only(folder, "JAX")


def _versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "torchax")}


def build(ctx: BuildContext) -> BuildInfo:
    """Copy the source weights; record versions and the shape buckets serving uses."""
    files = []
    for pattern in _WEIGHTS:
        for f in sorted(ctx.source.path.glob(pattern)):
            shutil.copyfile(f, ctx.out / f.name)
            files.append(f.name)
    details: dict[str, object] = {
        "trace": "torchax.extract_jax + jax.jit, sdpa attention",
        "length_buckets": list(length_buckets(ctx.source.max_input_length)),
        "batch_buckets": list(BATCHES),
        "warmup_batches": list(_WARMUP),
        **_versions(),
    }
    return BuildInfo(tuple(files), details)


#: Tasks the backend serves: hidden states for embeddings always; a sequence
#: classifier's logits for the tasks that read them.
_TASKS = frozenset({Task.EMBED, Task.CLASSIFY, Task.RERANK, Task.ZERO_SHOT})

CANDIDATES: tuple[Candidate, ...] = (
    Candidate("jax", "float32", "xla", build=build, tasks=_TASKS, options={"warmup": _WARMUP}),
)
