"""How many tokens to draft: what a verify step is expected to yield against what its
extra tokens cost, both measured as the server runs.

A drafted token costs what one more token of the step's forward pass costs, which
depends on the backend and the machine: on a 2-core Sapphire Rapids, one SmolLM2
sequence's step with 4 drafts took 2.0x a plain step in torch (fp32 weights are read
once for all five tokens) and 3.0x in llama.cpp (its Q4_1 kernels are bound by
arithmetic there, +0.5x per token). With each draft accepted with probability p
while the ones before it were, k drafts yield 1 + p + ... + p^k tokens for 1 + c k
plain steps of work; the k that maximizes that ratio is drafted, and none when no k
beats a plain step (speculation then pauses for the sequence).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The relative cost of a drafted token assumed until one is measured.
PRIOR_TOKEN_COST = 0.3
#: Weight of the newest observation in the moving averages.
_DECAY = 0.2


@dataclass(slots=True)
class StepCost:
    """Moving averages of decode steps' seconds: by batch size for steps without
    drafts, and the cost of one drafted token relative to such a step."""

    base: dict[int, float] = field(default_factory=dict)
    token: float = PRIOR_TOKEN_COST

    def observe(self, sequences: int, drafted: int, seconds: float) -> None:
        """A step of ``sequences`` decoding sequences carrying ``drafted`` drafts."""
        old = self.base.get(sequences)
        if not drafted:
            self.base[sequences] = seconds if old is None else old + _DECAY * (seconds - old)
        elif old:
            sample = max(0.0, (seconds - old) / old / drafted)
            self.token += _DECAY * (sample - self.token)


@dataclass(slots=True)
class Acceptance:
    """How often a sequence's drafts are accepted, as the chance that a draft is
    accepted when the ones before it were: accepted drafts against rejections, with a
    prior of 3 to 1, decaying."""

    accepted: float = 3.0
    rejected: float = 1.0

    @property
    def p(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def observe(self, drafted: int, accepted: int) -> None:
        keep = 1 - _DECAY
        self.accepted = keep * self.accepted + accepted
        self.rejected = keep * self.rejected + (accepted < drafted)


def best_length(p: float, token_cost: float, most: int) -> int:
    """The draft length in 0..``most`` with the most expected tokens per plain step of
    work (0: a plain step is better)."""
    best, value = 0, 1.0
    expected, power = 1.0, 1.0
    for k in range(1, most + 1):
        power *= p
        expected += power
        ratio = expected / (1 + token_cost * k)
        if ratio > value:
            best, value = k, ratio
    return best
