"""Sequence classification: labels and scores for texts and text pairs.

Scores follow ``transformers``' text-classification pipeline: the activation is the
one the config implies (sigmoid for multi-label or single-logit heads, softmax for
single-label ones, none for regression) unless the request names one; label names
come from ``id2label``. Rerank and zero-shot read the same logits (``rerank``,
``zero_shot``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from squeezer.errors import InvalidRequestError
from squeezer.models import ModelFolder
from squeezer.tasks.encoder import EncoderItem, Row
from squeezer.tasks.tokenizer import TextTokenizer
from squeezer.types import NamedArrays, TokenizedInput, TruncationDirection

FloatArray = npt.NDArray[np.float32]


class Activation(str, Enum):
    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"
    NONE = "none"


def softmax(x: FloatArray, axis: int = -1) -> FloatArray:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    out: FloatArray = shifted / shifted.sum(axis=axis, keepdims=True)
    return out


def sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = (1.0 / (1.0 + np.exp(-x))).astype(np.float32, copy=False)
    return out


def activate(logits: FloatArray, activation: Activation) -> FloatArray:
    if activation is Activation.SOFTMAX:
        return softmax(logits)
    if activation is Activation.SIGMOID:
        return sigmoid(logits)
    return logits


def default_activation(config: dict[str, Any]) -> Activation:
    """The activation ``transformers``' pipeline applies when none is asked for."""
    problem = config.get("problem_type")
    labels = len(config.get("id2label") or {}) or int(config.get("num_labels") or 2)
    if problem == "regression":
        return Activation.NONE
    if problem == "multi_label_classification" or labels == 1:
        return Activation.SIGMOID
    return Activation.SOFTMAX


def label_names(config: dict[str, Any]) -> list[str]:
    """Output names in logit order (``id2label`` keys are strings in config.json)."""
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    count = len(id2label) or int(config.get("num_labels") or 2)
    return [id2label.get(i, f"LABEL_{i}") for i in range(count)]


def parse_activation(value: str | None, default: Activation) -> Activation:
    if value is None:
        return default
    try:
        return Activation(value.lower())
    except ValueError:
        raise InvalidRequestError(
            f"function_to_apply {value!r}: expected sigmoid, softmax or none",
            param="function_to_apply",
        ) from None


@dataclass(frozen=True, slots=True)
class LogitsHead:
    """One row of sequence logits per item (the classifier reads the first token)."""

    outputs = ("logits",)

    def take(self, outputs: NamedArrays, batch: Sequence[Row]) -> list[FloatArray]:
        logits = np.asarray(outputs["logits"], dtype=np.float32)
        return [logits[r.row].copy() for r in batch]


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    score: float


def scores_by_label(
    rows: Sequence[Sequence[LabelScore]], labels: Sequence[str]
) -> list[list[float]]:
    """Each row's scores in ``labels``' order (rows come best first)."""
    return [[{s.label: s.score for s in row}[label] for label in labels] for row in rows]


@dataclass(slots=True)
class ClassifyRequest:
    """Texts, or (text, text_pair) pairs, to classify."""

    inputs: Sequence[str | tuple[str, str]]
    #: Labels kept per input, best first; None keeps all.
    top_k: int | None = 1
    #: sigmoid, softmax or none; None means what the model's config implies.
    function_to_apply: str | None = None
    truncate: bool = False
    truncation_direction: TruncationDirection = TruncationDirection.RIGHT


class SequenceEncoder:
    """Tokenizes texts or pairs for a sequence head, pairs and singles alike."""

    def __init__(self, folder: ModelFolder, tokenizer: TextTokenizer) -> None:
        self.folder = folder
        self.tokenizer = tokenizer
        self.head = LogitsHead()
        self.labels = label_names(folder.config)

    def encode(
        self,
        inputs: Sequence[str | tuple[str, str]],
        *,
        truncate: bool = False,
        direction: TruncationDirection = TruncationDirection.RIGHT,
    ) -> list[EncoderItem]:
        """Texts and pairs, mixed as TEI's batches may mix them, in input order."""
        singles = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        pairs = [i for i, x in enumerate(inputs) if isinstance(x, tuple) and len(x) == 2]
        if len(singles) + len(pairs) != len(inputs):
            raise InvalidRequestError(
                "inputs must be texts or [text, text_pair] pairs", param="inputs"
            )
        tokens: list[TokenizedInput | None] = [None] * len(inputs)
        if singles:
            encoded = self.tokenizer.encode(
                [str(inputs[i]) for i in singles], truncate=truncate, direction=direction
            )
            for i, t in zip(singles, encoded, strict=True):
                tokens[i] = t
        if pairs:
            encoded = self.tokenizer.encode(
                [str(inputs[i][0]) for i in pairs],
                pairs=[str(inputs[i][1]) for i in pairs],
                truncate=truncate,
                direction=direction,
            )
            for i, t in zip(pairs, encoded, strict=True):
                tokens[i] = t
        if not inputs:
            self.tokenizer.encode([])  # raises EmptyInputError
        return [EncoderItem(t, self.head) for t in tokens if t is not None]


class ClassifyTask:
    """Text classification (single- and multi-label), for texts and text pairs."""

    def __init__(self, folder: ModelFolder, tokenizer: TextTokenizer) -> None:
        self.encoder = SequenceEncoder(folder, tokenizer)
        self.labels = self.encoder.labels
        self.activation = default_activation(folder.config)

    def prepare(self, request: ClassifyRequest) -> list[EncoderItem]:
        if request.top_k is not None and request.top_k < 1:
            raise InvalidRequestError("top_k must be at least 1", param="top_k")
        parse_activation(request.function_to_apply, self.activation)
        return self.encoder.encode(
            request.inputs, truncate=request.truncate, direction=request.truncation_direction
        )

    def finish(
        self, request: ClassifyRequest, items: Sequence[EncoderItem], results: list[Any]
    ) -> list[list[LabelScore]]:
        activation = parse_activation(request.function_to_apply, self.activation)
        scores = activate(np.stack(results).astype(np.float32, copy=False), activation)
        keep = len(self.labels) if request.top_k is None else request.top_k
        # Stable sort: equal scores keep label order, as Python's sort in the pipeline.
        order = np.argsort(-scores, axis=1, kind="stable")[:, :keep]
        return [
            [LabelScore(self.labels[j], float(row[j])) for j in idx]
            for row, idx in zip(scores, order, strict=True)
        ]
