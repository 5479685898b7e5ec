"""Zero-shot classification with an NLI model: does the text entail "This is {label}"?

Each (text, hypothesis) pair is one NLI input; the entailment logits of a text's
labels become its label scores, as ``transformers``' zero-shot pipeline computes
them: softmax across labels when exactly one label is true, or entailment against
contradiction per label (``multi_label``, or a single candidate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from squeezer.errors import EmptyInputError, InvalidRequestError
from squeezer.models import ModelFolder
from squeezer.tasks.classify import SequenceEncoder, softmax
from squeezer.tasks.encoder import EncoderItem
from squeezer.tasks.tokenizer import TextTokenizer
from squeezer.types import TruncationDirection

DEFAULT_TEMPLATE = "This example is {}."


def entailment_index(labels: Sequence[str]) -> int | None:
    """The NLI label meaning entailment, by name (None: not an NLI model)."""
    for i, label in enumerate(labels):
        if label.lower().startswith("entail"):
            return i
    return None


@dataclass(slots=True)
class ZeroShotRequest:
    inputs: Sequence[str]
    candidate_labels: Sequence[str]
    hypothesis_template: str = DEFAULT_TEMPLATE
    multi_label: bool = False
    truncate: bool = False
    truncation_direction: TruncationDirection = TruncationDirection.RIGHT


@dataclass(frozen=True, slots=True)
class ZeroShotResult:
    sequence: str
    #: Candidate labels, best first, with their scores in the same order.
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


class ZeroShotTask:
    def __init__(self, folder: ModelFolder, tokenizer: TextTokenizer) -> None:
        self.encoder = SequenceEncoder(folder, tokenizer)
        entail = entailment_index(self.encoder.labels)
        if entail is None:
            raise ValueError("zero-shot classification needs an NLI model with an entailment label")
        self.entail = entail
        self.contradiction = -1 if entail == 0 else 0

    def prepare(self, request: ZeroShotRequest) -> list[EncoderItem]:
        labels = list(request.candidate_labels)
        if not labels or any(not isinstance(x, str) or not x.strip() for x in labels):
            raise EmptyInputError(
                "candidate_labels must hold at least one non-empty label",
                param="candidate_labels",
            )
        if len(set(labels)) != len(labels):
            raise InvalidRequestError("candidate_labels has duplicates", param="candidate_labels")
        template = request.hypothesis_template
        try:
            if template.format(labels[0]) == template:
                raise ValueError
        except (ValueError, IndexError, KeyError):
            raise InvalidRequestError(
                f"hypothesis_template {template!r} must hold one '{{}}' for the label",
                param="hypothesis_template",
            ) from None
        pairs = [(text, template.format(label)) for text in request.inputs for label in labels]
        return self.encoder.encode(
            pairs, truncate=request.truncate, direction=request.truncation_direction
        )

    def finish(
        self, request: ZeroShotRequest, items: Sequence[EncoderItem], results: list[Any]
    ) -> list[ZeroShotResult]:
        n = len(request.candidate_labels)
        logits = (
            np.stack(results).astype(np.float32, copy=False).reshape(len(request.inputs), n, -1)
        )
        if request.multi_label or n == 1:
            scores = softmax(logits[..., [self.contradiction, self.entail]])[..., 1]
        else:
            scores = softmax(logits[..., self.entail])
        out = []
        for text, row in zip(request.inputs, scores, strict=True):
            order = np.argsort(-row, kind="stable")
            out.append(
                ZeroShotResult(
                    text,
                    [request.candidate_labels[i] for i in order],
                    [float(row[i]) for i in order],
                )
            )
        return out
