"""What each slot's sequence has seen and generated: the state its penalties read.

The repetition penalty reads which tokens a sequence's prompt and output hold; the
presence and frequency penalties read how often it generated each; ``min_tokens``
bans its EOS ids until it has enough new tokens. Kept per slot as (slots, vocab)
tensors on the sampler's device, so a step gathers its rows in one indexing op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from squeezer.backends.sampling import History, SamplingBatch, SamplingParams


class TokenHistory:
    """Per slot: tokens seen (prompt and output) and output counts."""

    def __init__(self, max_slots: int, vocab_size: int, device: torch.device | str) -> None:
        self.max_slots, self.vocab_size, self.device = max_slots, vocab_size, device
        self._seen = torch.zeros(max_slots, vocab_size, dtype=torch.bool, device=device)
        #: How often each slot's sequence generated each token: made when the first
        #: sequence with a presence or frequency penalty arrives, kept up from then.
        self._counts: torch.Tensor | None = None

    def prepare(self, params: Sequence[SamplingParams]) -> None:
        if self._counts is None and any(p.counts_output for p in params):
            # Not an inference tensor (a step runs in inference mode): ``move``,
            # outside it, writes to it too.
            with torch.inference_mode(False):
                self._counts = torch.zeros(
                    self.max_slots, self.vocab_size, dtype=torch.int32, device=self.device
                )

    def reset(self, slot: int, prompt: Sequence[int]) -> None:
        self._seen[slot] = False
        ids = torch.tensor(list(prompt), dtype=torch.long, device=self.device)
        self._seen[slot, ids] = True
        if self._counts is not None:
            self._counts[slot] = 0

    def move(self, source: int, target: int) -> None:
        self._seen[target] = self._seen[source]
        if self._counts is not None:
            self._counts[target] = self._counts[source]

    def of(
        self, rows: torch.Tensor, batch: SamplingBatch, banned: Sequence[tuple[int, int]]
    ) -> History:
        """What ``rows``' processors read, ``banned``: (batch row, token) pairs that may
        not be chosen now. Penalties read (B, vocab) gathers, skipped when no row asks
        for them."""
        ban = None
        if banned:
            pairs = torch.tensor(banned, dtype=torch.long, device=self.device)
            ban = (pairs[:, 0], pairs[:, 1])
        return History(
            seen=self._seen[rows] if batch.any_repetition else None,
            counts=self._counts[rows] if batch.any_counts and self._counts is not None else None,
            banned=ban,
        )

    def mark(self, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """``rows`` generated ``tokens``."""
        self._seen[rows, tokens] = True
        if self._counts is not None:
            self._counts[rows, tokens] += 1
