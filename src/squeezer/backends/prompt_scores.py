"""Prompt logprobs (vLLM's ``prompt_logprobs``), kept per sequence as its prompt's
chunks are prefilled, until its first token carries them out."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from squeezer.backends.base import PromptLogprob, SeqId
from squeezer.backends.sampling import prompt_logprobs


class PromptScores:
    """By sequence, the logprob of each prompt position scored so far (position 0:
    None, nothing precedes it), with its ``top`` most likely alternatives."""

    def __init__(self) -> None:
        self._scores: dict[SeqId, list[PromptLogprob | None]] = {}
        self._top: dict[SeqId, int] = {}

    def start(self, seq: SeqId, top: int) -> None:
        self._scores[seq], self._top[seq] = [None], top

    def __contains__(self, seq: object) -> bool:
        return seq in self._scores

    def score(self, seq: SeqId, prompt: Sequence[int], start: int, logits: torch.Tensor) -> None:
        """Record the logprobs of prompt tokens ``start + 1 ...`` from ``logits`` (N,
        vocab) at positions ``start ...`` (a rerun step overwrites what it scored)."""
        scores = self._scores[seq]
        del scores[start + 1 :]
        targets = torch.tensor(
            prompt[start + 1 : start + 1 + len(logits)], dtype=torch.long, device=logits.device
        )
        chosen, ranks, ids, values = prompt_logprobs(
            logits[: len(targets)], targets, self._top[seq]
        )
        for token, logprob, rank, alt_ids, alt_values in zip(
            targets.tolist(),
            chosen.tolist(),
            ranks.tolist(),
            ids.tolist(),
            values.tolist(),
            strict=True,
        ):
            alternatives = tuple(zip(alt_ids, alt_values, strict=True))
            scores.append(PromptLogprob(token, logprob, alternatives, rank))

    def pop(self, seq: SeqId) -> tuple[PromptLogprob | None, ...] | None:
        """The sequence's scores, handed out once (with its first token)."""
        self._top.pop(seq, None)
        scores = self._scores.pop(seq, None)
        return None if scores is None else tuple(scores)
