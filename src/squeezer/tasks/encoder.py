"""One batch, many meanings: items of every encoder task share a model's forward passes.

A model that serves several tasks (an MLM serves embeddings and fill-mask; an NLI
classifier serves classification and zero-shot) has one queue in the engine, so its
requests batch together whatever they mean. Each item carries the ``Head`` that reads
its result from the backend's outputs; the runner pads all items alike, asks the
backend only for the outputs the batch's heads need, and hands every head its rows.

Vocabulary logits are large (a 30k-word row per token), so a head that needs them
only at a few positions (fill-mask's masks) names those positions and the backend
projects just them (``logit_positions``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from squeezer.types import NamedArrays, TokenizedInput


class Head(Protocol):
    """How one kind of item reads its result from a batch's outputs.

    ``take`` runs on the compute thread for all of a batch's items that share the
    head, so vectorized post-processing (pooling) costs one call per batch. Heads
    compare by value (frozen dataclasses): "share" means equal, not the same object.
    """

    @property
    def outputs(self) -> tuple[str, ...]:
        """Backend outputs this head reads (``last_hidden_state``, ``logits``, ...)."""
        ...

    def take(self, outputs: NamedArrays, batch: Sequence[Row]) -> list[Any]: ...


@dataclass(slots=True)
class EncoderItem:
    """One tokenized input (a text, a pair, a window of a long text) and its head."""

    tokens: TokenizedInput
    head: Head
    #: Token positions whose vocabulary logits the head needs (fill-mask's masks).
    positions: tuple[int, ...] = ()

    @property
    def num_tokens(self) -> int:
        return self.tokens.num_tokens


@dataclass(frozen=True, slots=True)
class Row:
    """Where an item sits in a batch: its row, its real length, its gathered logits."""

    item: EncoderItem
    row: int
    length: int
    #: Rows of the gathered ``logits`` that belong to this item's ``positions``.
    gathered: slice


class EncoderRunner:
    """The engine's ``BatchRunner`` for encoder models: pad, mask, split by head."""

    def __init__(self, pad_id: int = 0, *, token_type_ids: bool = True) -> None:
        self.pad_id = pad_id
        #: False for models whose tokenizer gives no type ids (all zero then).
        self.token_type_ids = token_type_ids

    def outputs(self, items: Sequence[EncoderItem]) -> tuple[str, ...]:
        wanted: dict[str, None] = {}
        for head in {id(it.head): it.head for it in items}.values():
            wanted.update(dict.fromkeys(head.outputs))
        return tuple(wanted)

    def collate(self, items: Sequence[EncoderItem]) -> NamedArrays:
        lengths = [it.tokens.num_tokens for it in items]
        width = max(lengths)
        ids = np.full((len(items), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(items), width), dtype=np.int64)
        type_ids = np.zeros((len(items), width), dtype=np.int64)
        for row, (it, n) in enumerate(zip(items, lengths, strict=True)):
            ids[row, :n] = it.tokens.ids
            mask[row, :n] = 1
            if self.token_type_ids and it.tokens.type_ids is not None:
                type_ids[row, :n] = it.tokens.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}
        positions = [(row, p) for row, it in enumerate(items) for p in it.positions]
        if positions:
            arrays["logit_positions"] = np.asarray(positions, dtype=np.int64)
        return arrays

    def split(self, outputs: NamedArrays, items: Sequence[EncoderItem]) -> list[Any]:
        """Each head's rows in one ``take``. Heads are grouped by value (they are frozen
        dataclasses): items that crossed a process boundary (``--api-workers``) carry
        equal copies, and grouping by identity pooled once per request, not per batch."""
        groups: dict[Head, list[Row]] = {}
        start = 0
        for row, it in enumerate(items):
            stop = start + len(it.positions)
            groups.setdefault(it.head, []).append(
                Row(it, row, it.tokens.num_tokens, slice(start, stop))
            )
            start = stop
        results: list[Any] = [None] * len(items)
        for rows in groups.values():
            taken = rows[0].item.head.take(outputs, rows)
            for r, result in zip(rows, taken, strict=True):
                results[r.row] = result
        return results


class EncoderTask(Protocol):
    """A task's two steps around the engine: ``prepare`` validates and tokenizes a
    request into items (in a worker thread for big requests), ``finish`` turns the
    items' results back into the task's answer (on the event loop)."""

    def prepare(self, request: Any) -> list[EncoderItem]: ...

    def finish(self, request: Any, items: Sequence[EncoderItem], results: list[Any]) -> Any: ...
