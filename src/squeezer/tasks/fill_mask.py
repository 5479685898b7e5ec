"""Fill-mask: the likeliest tokens for each mask token in a text.

Results follow ``transformers``' fill-mask pipeline: a softmax over the vocabulary
at each mask (restricted to ``targets`` when given), the ``top_k`` best, each with the
text it makes. Only the mask positions are projected onto the vocabulary (the
backend's ``logit_positions``): a full (tokens x vocabulary) logits tensor per batch
would cost more memory than the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from squeezer.errors import InvalidRequestError
from squeezer.models import ModelFolder
from squeezer.tasks.classify import FloatArray, softmax
from squeezer.tasks.encoder import EncoderItem, Row
from squeezer.tasks.tokenizer import TextTokenizer
from squeezer.types import NamedArrays, TruncationDirection


@dataclass(slots=True)
class FillMaskRequest:
    inputs: Sequence[str]
    top_k: int = 5
    #: Only these tokens are candidates (each must be one token of the vocabulary).
    targets: Sequence[str] | None = None
    truncate: bool = False
    truncation_direction: TruncationDirection = TruncationDirection.RIGHT


@dataclass(frozen=True, slots=True)
class MaskFill:
    score: float
    token: int
    token_str: str
    #: The input with this token in the mask's place.
    sequence: str


@dataclass(frozen=True, slots=True)
class MaskLogitsHead:
    """Vocabulary logits at an item's mask positions only."""

    outputs = ("logits",)

    def take(self, outputs: NamedArrays, batch: Sequence[Row]) -> list[FloatArray]:
        logits = np.asarray(outputs["logits"], dtype=np.float32)
        return [logits[r.gathered].copy() for r in batch]


def _top(row: FloatArray, k: int) -> list[int]:
    """Indices of the ``k`` largest values, largest first, without sorting them all."""
    part = np.argpartition(-row, k - 1)[:k] if k < row.shape[0] else np.arange(row.shape[0])
    return [int(i) for i in part[np.argsort(-row[part], kind="stable")]]


class FillMaskTask:
    def __init__(self, folder: ModelFolder, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer
        self.mask_token = folder.special_tokens.get("mask_token")
        mask_id = tokenizer.token_id(self.mask_token) if self.mask_token else None
        if mask_id is None:
            raise ValueError("the tokenizer defines no mask token")
        self.mask_id = mask_id
        self.head = MaskLogitsHead()

    def _target_ids(self, targets: Sequence[str]) -> list[int]:
        ids: dict[int, None] = {}
        for target in targets:
            tid = self.tokenizer.token_id(target)
            if tid is None:
                pieces = self.tokenizer.pieces(target) if target else []
                if len(pieces) != 1:
                    raise InvalidRequestError(
                        f"targets: {target!r} is {len(pieces)} tokens for this model; "
                        "fill-mask fills exactly one token per mask",
                        param="targets",
                    )
                tid = pieces[0]  # "Paris" -> "paris" in an uncased vocabulary
            ids[tid] = None
        if not ids:
            raise InvalidRequestError("targets, when given, cannot be empty", param="targets")
        return list(ids)

    def prepare(self, request: FillMaskRequest) -> list[EncoderItem]:
        if request.top_k < 1:
            raise InvalidRequestError("top_k must be at least 1", param="top_k")
        if request.targets is not None:
            self._target_ids(request.targets)
        tokens = self.tokenizer.encode(
            request.inputs, truncate=request.truncate, direction=request.truncation_direction
        )
        items = []
        for i, t in enumerate(tokens):
            positions = tuple(int(p) for p in np.flatnonzero(t.ids == self.mask_id))
            if not positions:
                raise InvalidRequestError(
                    f"input {i} holds no mask token {self.mask_token}"
                    + (" after truncation" if t.truncated else ""),
                    param="inputs",
                )
            items.append(EncoderItem(t, self.head, positions))
        return items

    def finish(
        self, request: FillMaskRequest, items: Sequence[EncoderItem], results: list[Any]
    ) -> list[list[list[MaskFill]]]:
        """Per input, per mask, the ``top_k`` fills, best first."""
        targets = None if request.targets is None else np.asarray(self._target_ids(request.targets))
        out = []
        for item, logits in zip(items, results, strict=True):
            probs = softmax(np.asarray(logits, dtype=np.float32))
            if targets is not None:
                probs = probs[:, targets]
            k = min(request.top_k, probs.shape[1])
            single = len(item.positions) == 1
            masks = []
            for position, row in zip(item.positions, probs, strict=True):
                fills = []
                for j in _top(row, k):
                    token = int(targets[j]) if targets is not None else int(j)
                    ids = item.tokens.ids.copy()
                    ids[position] = token
                    # One mask: readable text. Several: keep the other masks visible.
                    sequence = self.tokenizer.decode([ids.tolist()], skip_special_tokens=single)
                    token_str = self.tokenizer.decode([[token]], skip_special_tokens=False)
                    fills.append(MaskFill(float(row[j]), token, token_str[0], sequence[0]))
                masks.append(fills)
            out.append(masks)
        return out
