"""How far a candidate's outputs are from fp32 torch, measured the way serving computes.

Outputs go through the same tokenizer, padding (``EncoderRunner``) and heads (pooling)
as served requests, so the figure is the one a client would see. The gate's ``loss``
is one number per task: 1 - min cosine of pooled embeddings for ``embed``, 1 - top-1
agreement for ``classify``; the other figures are reported next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from squeezer.backends import Backend
from squeezer.models import ModelFolder
from squeezer.tasks import EncoderItem, EncoderRunner, Head, PooledHead, TextTokenizer
from squeezer.tasks.classify import LogitsHead
from squeezer.types import Task

FloatArray = npt.NDArray[np.float32]
#: Tasks the gate has a measure for.
GATED_TASKS = (Task.EMBED, Task.CLASSIFY)


class Probe:
    """Fixed, tokenized texts run through any backend in length-sorted batches."""

    def __init__(
        self, folder: ModelFolder, task: Task, texts: Sequence[str], batch_size: int = 32
    ) -> None:
        if task not in GATED_TASKS:
            raise ValueError(
                f"the accuracy gate measures {', '.join(t.value for t in GATED_TASKS)}, "
                f"not {task.value}"
            )
        self.task = task
        self.tokenizer = TextTokenizer(folder.tokenizer_file, folder.max_input_length)
        self.head: Head = PooledHead(folder.pooling) if task is Task.EMBED else LogitsHead()
        self.runner = EncoderRunner(
            int(folder.config.get("pad_token_id") or 0), token_type_ids=folder.token_type_ids
        )
        self.texts = list(texts)
        self.batch_size = batch_size
        self.items = self.tokenize(self.texts)
        self.order = sorted(range(len(self.items)), key=lambda i: self.items[i].num_tokens)

    def tokenize(self, texts: Sequence[str]) -> list[EncoderItem]:
        return [EncoderItem(t, self.head) for t in self.tokenizer.encode(texts, truncate=True)]

    def forward(self, backend: Backend, items: Sequence[EncoderItem]) -> list[FloatArray]:
        outputs = backend.forward(self.runner.collate(items), self.runner.outputs(items))
        return self.runner.split(outputs, items)

    def run(self, backend: Backend) -> FloatArray:
        """One output row per text, in the texts' order."""
        rows: list[FloatArray | None] = [None] * len(self.items)
        for start in range(0, len(self.order), self.batch_size):
            idx = self.order[start : start + self.batch_size]
            for i, out in zip(
                idx, self.forward(backend, [self.items[i] for i in idx]), strict=True
            ):
                rows[i] = out
        return np.stack([np.asarray(r, dtype=np.float32) for r in rows])


@dataclass(frozen=True, slots=True)
class Accuracy:
    """A candidate against the fp32 reference on one split."""

    loss: float
    min_cosine: float
    mean_cosine: float
    #: Embeddings: fraction of texts whose nearest neighbour (among the split) is
    #: unchanged. Classifiers: fraction whose top-1 label is unchanged.
    agreement: float
    #: Classifiers only: largest change of any softmax probability.
    max_prob_diff: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "loss": self.loss,
            "min_cosine": self.min_cosine,
            "mean_cosine": self.mean_cosine,
            "agreement": self.agreement,
            "max_prob_diff": self.max_prob_diff,
        }


def _normalize(x: FloatArray) -> FloatArray:
    out: FloatArray = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return out


def _nearest(vectors: FloatArray) -> npt.NDArray[np.int64]:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argmax(sims, axis=1)


def _softmax(x: FloatArray) -> FloatArray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


def compare(task: Task, reference: FloatArray, candidate: FloatArray) -> Accuracy:
    """Score ``candidate`` rows against ``reference`` rows (same texts, same order)."""
    ref, cand = _normalize(reference), _normalize(candidate)
    cosines = np.sum(ref * cand, axis=1).clip(-1.0, 1.0)
    min_cos, mean_cos = float(cosines.min()), float(cosines.mean())
    if task is Task.CLASSIFY:
        agreement = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
        prob_diff = float(np.abs(_softmax(reference) - _softmax(candidate)).max())
        return Accuracy(1.0 - agreement, min_cos, mean_cos, agreement, prob_diff)
    agreement = float(np.mean(_nearest(ref) == _nearest(cand))) if len(ref) > 1 else 1.0
    return Accuracy(max(0.0, 1.0 - min_cos), min_cos, mean_cos, agreement)
