"""fp16 and bf16 serving against fp32, measured when a model loads.

Half precision is what a GPU serves by default (``--dtype auto``), and it is lossy:
MiniLM in fp16 keeps a min cosine of 0.9996 to fp32, other models may not. So the
server measures it at load, on held-out sentences of the built-in corpus (the
optimizer's *report* split, never used to choose anything), with the same tokenizer,
padding and heads as served requests (``Probe``), and says the figure in the start-up
log, ``/info`` and ``/v1/models``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from squeezer.backends import Backend
from squeezer.models import ModelFolder
from squeezer.optimize.accuracy import Probe, compare
from squeezer.optimize.corpus import load_texts, split_texts
from squeezer.types import PrecisionReport, Task

#: Held-out sentences compared at load: enough for a stable min (the corpus' report
#: split holds 256), few enough to cost well under a second on a GPU.
DEFAULT_TEXTS = 64
#: Below this min cosine the start-up log warns (issue target for fp16/bf16 encoders).
WARN_BELOW = 0.999


def probe_task(tasks: tuple[Task, ...]) -> Task | None:
    """The output compared: pooled embeddings, else a classifier's or reranker's logits
    (a reranker is a one-logit sequence classifier); None when no measure applies."""
    if Task.EMBED in tasks:
        return Task.EMBED
    if Task.CLASSIFY in tasks or Task.RERANK in tasks:
        return Task.CLASSIFY
    return None


def held_out_texts(count: int = DEFAULT_TEXTS) -> list[str]:
    return split_texts(load_texts(None)).report[:count]


def check_precision(
    folder: ModelFolder,
    task: Task,
    dtype: str,
    served: Backend,
    load_reference: Callable[[], Backend],
    texts: list[str] | None = None,
) -> PrecisionReport:
    """Run ``texts`` through the served backend and an fp32 one from the same weights.

    The reference is loaded, used and closed here, so it holds memory only while the
    comparison runs."""
    t0 = time.perf_counter()
    probe = Probe(folder, task, texts if texts is not None else held_out_texts())
    candidate = probe.run(served)
    reference_backend = load_reference()
    try:
        reference = probe.run(reference_backend)
    finally:
        reference_backend.close()
    acc = compare(task, reference, candidate)
    return PrecisionReport(
        dtype=dtype,
        task=task.value,
        texts=len(probe.texts),
        min_cosine=acc.min_cosine,
        mean_cosine=acc.mean_cosine,
        agreement=acc.agreement,
        max_prob_diff=acc.max_prob_diff,
        seconds=time.perf_counter() - t0,
    )
