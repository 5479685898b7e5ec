"""How far a generation candidate is from fp32: the gate's numbers, from logits and tokens.

Three measures, on prompts of one split (``GenerationAccuracy``):

- **mean KL(fp32 || candidate)** of the next-token distributions, teacher-forced along
  fp32's own greedy continuation: every position compares the two models on the same
  context, so one early difference does not make every later position incomparable (as
  it would on the candidate's own path). The gate's loss. KL with fp32 first weighs the
  tokens fp32 finds likely: a candidate that moves mass off them pays, one that only
  reshuffles the far tail barely does.
- **top-1 agreement**: on the same positions, the fraction where both argmaxes match.
- **greedy-prefix agreement**: free-running, the fraction of fp32's greedy tokens the
  candidate reproduces before its first different token, averaged over prompts. What
  a greedy client sees; a single flip early costs the rest of the prompt.

Pure functions of tensors and token lists: the backends that produce them are
``generation_probe``'s question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class GenerationAccuracy:
    """A candidate against fp32 on one split's prompts."""

    #: The gate's loss: mean KL(fp32 || candidate) in nats over all scored positions.
    loss: float
    #: The worst prompt's mean KL.
    max_prompt_kl: float
    #: Teacher-forced top-1 agreement over all scored positions.
    top1: float
    #: Mean fraction of fp32's greedy tokens reproduced before the first difference.
    prefix_agreement: float
    #: Fraction of prompts whose whole greedy continuation equals fp32's.
    exact_match: float
    prompts: int
    positions: int

    def as_dict(self) -> dict[str, float]:
        return {
            "loss": self.loss,
            "mean_kl": self.loss,
            "max_prompt_kl": self.max_prompt_kl,
            "top1": self.top1,
            "prefix_agreement": self.prefix_agreement,
            "exact_match": self.exact_match,
            "prompts": float(self.prompts),
            "positions": float(self.positions),
        }


def kl_per_position(reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p_cand) of each row of two (positions, vocab) logit tensors, in fp64
    (float32 log-softmax differences of near-equal distributions cancel to noise), never
    negative. Logits, not probabilities: the softmax is taken here."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logits of shape {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    ref = torch.log_softmax(reference.to(torch.float64), dim=-1)
    cand = torch.log_softmax(candidate.to(torch.float64), dim=-1)
    return (ref.exp() * (ref - cand)).sum(dim=-1).clamp_min(0.0)


def top1_matches(reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """Per row, whether both logit rows pick the same most likely token."""
    return reference.argmax(dim=-1) == candidate.argmax(dim=-1)


def prefix_agreement(reference: Sequence[int], candidate: Sequence[int]) -> float:
    """Fraction of ``reference`` tokens ``candidate`` reproduces before its first
    different token (1.0 when it reproduces all of them; a shorter candidate counts as
    different where it stops)."""
    if not reference:
        return 1.0
    same = 0
    for ref, got in zip(reference, candidate, strict=False):
        if ref != got:
            break
        same += 1
    return same / len(reference)


def compare_generation(
    reference_logits: Sequence[torch.Tensor],
    candidate_logits: Sequence[torch.Tensor],
    reference_tokens: Sequence[Sequence[int]],
    candidate_tokens: Sequence[Sequence[int]],
) -> GenerationAccuracy:
    """Score a candidate on one split: per prompt, its teacher-forced logits (positions,
    vocab) beside fp32's, and its free-running greedy tokens beside fp32's."""
    if not len(reference_logits) == len(candidate_logits) == len(reference_tokens):
        raise ValueError("one logits tensor and one continuation per prompt, for both")
    if len(candidate_tokens) != len(reference_tokens) or not reference_tokens:
        raise ValueError("one continuation per prompt, and at least one prompt")
    kls = [kl_per_position(r, c) for r, c in zip(reference_logits, candidate_logits, strict=True)]
    tops = [top1_matches(r, c) for r, c in zip(reference_logits, candidate_logits, strict=True)]
    all_kl = torch.cat(kls)
    prefixes = [
        prefix_agreement(r, c) for r, c in zip(reference_tokens, candidate_tokens, strict=True)
    ]
    return GenerationAccuracy(
        loss=float(all_kl.mean()) if len(all_kl) else 0.0,
        max_prompt_kl=max((float(k.mean()) for k in kls if len(k)), default=0.0),
        top1=float(torch.cat(tops).double().mean()) if len(all_kl) else 1.0,
        prefix_agreement=sum(prefixes) / len(prefixes),
        exact_match=sum(p == 1.0 for p in prefixes) / len(prefixes),
        prompts=len(prefixes),
        positions=len(all_kl),
    )
