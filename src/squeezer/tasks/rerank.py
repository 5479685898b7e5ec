"""Reranking with a cross-encoder: how relevant is each text to a query.

A reranker is a sequence classifier with one output (TEI's definition): each
(query, text) pair is scored by that logit, through a sigmoid unless raw scores are
asked for. Bi-encoder "reranking" by embedding cosine is deliberately not offered
here: it answers a different question with different numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from squeezer.errors import EmptyInputError, InvalidRequestError
from squeezer.models import ModelFolder
from squeezer.tasks.classify import SequenceEncoder, sigmoid
from squeezer.tasks.encoder import EncoderItem
from squeezer.tasks.tokenizer import TextTokenizer
from squeezer.types import TruncationDirection


@dataclass(slots=True)
class RerankRequest:
    query: str
    texts: Sequence[str]
    raw_scores: bool = False
    return_text: bool = False
    #: Hits kept, best first; None keeps all.
    top_n: int | None = None
    truncate: bool = False
    truncation_direction: TruncationDirection = TruncationDirection.RIGHT


@dataclass(frozen=True, slots=True)
class RerankHit:
    #: Position of the text in the request.
    index: int
    score: float
    text: str | None = None


@dataclass(frozen=True, slots=True)
class RerankResult:
    #: Best first, at most ``top_n``.
    hits: list[RerankHit]
    #: Tokens of every (query, text) pair scored, for usage reports.
    prompt_tokens: int


class RerankTask:
    def __init__(self, folder: ModelFolder, tokenizer: TextTokenizer) -> None:
        self.encoder = SequenceEncoder(folder, tokenizer)
        if len(self.encoder.labels) != 1:
            raise ValueError("a reranker is a sequence classifier with exactly one label")

    def prepare(self, request: RerankRequest) -> list[EncoderItem]:
        if not request.texts:
            raise EmptyInputError("`texts` cannot be empty", param="texts")
        if request.top_n is not None and request.top_n < 1:
            raise InvalidRequestError("top_n must be at least 1", param="top_n")
        pairs = [(request.query, t) for t in request.texts]
        return self.encoder.encode(
            pairs, truncate=request.truncate, direction=request.truncation_direction
        )

    def finish(
        self, request: RerankRequest, items: Sequence[EncoderItem], results: list[Any]
    ) -> RerankResult:
        logits = np.stack(results).astype(np.float32, copy=False)[:, 0]
        scores = logits if request.raw_scores else sigmoid(logits)
        order = np.argsort(-scores, kind="stable")[: request.top_n]
        hits = [
            RerankHit(int(i), float(scores[i]), request.texts[i] if request.return_text else None)
            for i in order
        ]
        return RerankResult(hits, sum(it.num_tokens for it in items))
