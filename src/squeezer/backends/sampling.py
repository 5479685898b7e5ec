"""One vectorized sampler for every sequence of a decode step, run inside the backend.

Each row of a batch has its own settings (greedy or sampled, temperature, top-k,
top-p, min-p, typical-p, penalties, logit bias, seed); all rows are processed with the
same tensor ops, so a GPU step can include sampling in one graph and only token ids
cross to the host. The order is vLLM's for what it adds to ``generate`` and
``generate``'s for the rest, so seeded outputs can be checked against ``transformers``'
logits processors: a grammar's mask (structured outputs, ``constraints``), tokens
banned (``min_tokens``), ``logit_bias`` added, repetition penalty (prompt and
output), presence and frequency penalties (output only, as OpenAI defines them),
then temperature, top-k, top-p, min-p, typical-p.

Logprobs are the model's own distribution, before any of that (vLLM's default,
``raw_logprobs``): what a token's probability is, not what this request's settings
made of it, so they never come out as ``-inf`` for a token a filter removed.

Randomness is counter-based: a row's draw is a hash of (seed, position), not the state
of a shared generator, so a request's tokens are the same whatever else is in the
batch, in whatever order, and however often it was preempted and recomputed. One
uniform per row picks the token by inverse CDF over the filtered distribution, in
vocabulary order.

Nothing sorts the vocabulary unless it must: a full sort of 32 rows of a 49k
vocabulary takes ~80 ms on two CPU cores, as long as the model's whole decode step.
Top-k reads the k largest; top-p looks for its nucleus among the 512 most likely
tokens first and sorts only rows whose nucleus is wider.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from squeezer.backends.constraints import Constraint

#: splitmix64 constants, as signed int64 (torch has no uint64 arithmetic).
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)
_NEG_INF = float("-inf")
#: Most likely tokens searched for a top-p nucleus before falling back to a full sort.
_TOP_P_CANDIDATES = 512
#: Temperatures below this sample as greedy (as vLLM does): dividing logits by 1e-30
#: overflows to inf, and the distribution is the argmax anyway.
MIN_TEMPERATURE = 1e-5


def seed_bits(seed: int) -> int:
    """A seed of any size as the signed int64 with the same low 64 bits: TGI's contract
    allows u64 seeds (2**64 - 1 included), and the seed tensor is int64. The draw is
    the same function of those bits either way."""
    bits = seed & 0xFFFFFFFFFFFFFFFF
    return bits - (1 << 64) if bits >= 1 << 63 else bits


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """One request's sampling settings, as the dialects give them."""

    #: False (or a temperature below MIN_TEMPERATURE) means greedy: the most likely
    #: token, no randomness.
    do_sample: bool = False
    temperature: float = 1.0
    #: 0 = off.
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    #: Requests without a seed get one drawn by the caller (so it can be reported).
    seed: int = 0
    #: How many most likely alternatives to return per token (0 = only the chosen one's
    #: logprob, None = no logprobs).
    top_logprobs: int | None = None
    #: ``eos_ids`` cannot be chosen before this many new tokens (vLLM's ``min_tokens``).
    min_new_tokens: int = 0
    eos_ids: tuple[int, ...] = ()
    #: Keep tokens at least this share of the most likely one's probability (0 = off).
    min_p: float = 0.0
    #: OpenAI's: ``presence`` once for a token already generated, ``frequency`` times
    #: how often, subtracted from its logit (the prompt does not count).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    #: (token id, value added to its logit), OpenAI's ``logit_bias``.
    logit_bias: tuple[tuple[int, float], ...] = ()
    #: How many most likely alternatives to return per prompt token (vLLM's
    #: ``prompt_logprobs``; None = no prompt logprobs). The backend scores every prompt
    #: position, so such a sequence is never prefilled from the prefix cache.
    prompt_logprobs: int | None = None
    #: The grammar its text must match (structured outputs), enforced as a mask.
    constraint: Constraint | None = None

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature < MIN_TEMPERATURE

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if not 0 < self.typical_p <= 1:
            raise ValueError("typical_p must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.min_new_tokens < 0:
            raise ValueError("min_tokens must be >= 0")
        if not 0 <= self.min_p <= 1:
            raise ValueError("min_p must be in [0, 1]")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2]")
        for token, bias in self.logit_bias:
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias: the bias of token {token} must be in [-100, 100]")

    @property
    def counts_output(self) -> bool:
        """Whether this row's penalties read how often each token was generated."""
        return bool(self.presence_penalty or self.frequency_penalty)

    def check_vocabulary(self, vocab: int) -> None:
        """Token ids the settings name must be rows of the model's logits."""
        for token, _ in self.logit_bias:
            if not 0 <= token < vocab:
                raise ValueError(f"logit_bias: token id {token} is not in [0, {vocab})")


@dataclass(frozen=True, slots=True)
class SamplingBatch:
    """Per-row settings as tensors on the logits' device (built once per batch shape)."""

    greedy: torch.Tensor  # (B,) bool
    temperature: torch.Tensor  # (B, 1) float
    top_k: torch.Tensor  # (B,) int64, vocab size when off
    top_p: torch.Tensor  # (B, 1) float
    typical_p: torch.Tensor  # (B, 1) float
    penalty: torch.Tensor  # (B, 1) float
    presence: torch.Tensor  # (B, 1) float
    frequency: torch.Tensor  # (B, 1) float
    min_p: torch.Tensor  # (B, 1) float, log(min_p): -inf when off
    #: ``logit_bias`` as (rows, token ids, values), empty when no row has one.
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    seeds: torch.Tensor  # (B,) int64
    top_logprobs: int  # the batch's largest request, 0 when none asked
    #: What any row asks for, known on the host: deciding which steps to run must not
    #: wait for the device.
    all_greedy: bool
    top_k_max: int  # the largest top-k in use, 0 when no row filters by it
    any_temperature: bool
    any_top_p: bool
    any_typical: bool
    any_min_p: bool
    any_bias: bool
    #: Rows with a repetition penalty (reads ``seen``) and with presence or frequency
    #: penalties (reads ``counts``).
    any_repetition: bool
    any_counts: bool

    @staticmethod
    def of(
        params: Sequence[SamplingParams], vocab: int, device: torch.device | str
    ) -> SamplingBatch:
        def col(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)

        # Greedy rows get only the processors (bias, penalties), as in ``generate``: the
        # warpers would not change their argmax, except typical-p, which may drop it.
        bias = [(row, t, b) for row, p in enumerate(params) for t, b in p.logit_bias]
        rows, ids, values = zip(*bias, strict=True) if bias else ((), (), ())
        return SamplingBatch(
            greedy=torch.tensor([p.greedy for p in params], device=device),
            temperature=col([1.0 if p.greedy else p.temperature for p in params]),
            top_k=torch.tensor(
                [min(p.top_k, vocab) if p.top_k > 0 and not p.greedy else vocab for p in params],
                dtype=torch.int64,
                device=device,
            ),
            top_p=col([1.0 if p.greedy else p.top_p for p in params]),
            typical_p=col([1.0 if p.greedy else p.typical_p for p in params]),
            penalty=col([p.repetition_penalty for p in params]),
            presence=col([p.presence_penalty for p in params]),
            frequency=col([p.frequency_penalty for p in params]),
            min_p=col(
                [math.log(p.min_p) if p.min_p and not p.greedy else _NEG_INF for p in params]
            ),
            bias=(
                torch.tensor(rows, dtype=torch.int64, device=device),
                torch.tensor(ids, dtype=torch.int64, device=device),
                torch.tensor(values, dtype=torch.float32, device=device),
            ),
            seeds=torch.tensor(
                [seed_bits(p.seed) for p in params], dtype=torch.int64, device=device
            ),
            top_logprobs=max((p.top_logprobs or 0 for p in params), default=0),
            all_greedy=all(p.greedy for p in params),
            top_k_max=max(
                (min(p.top_k, vocab) for p in params if 0 < p.top_k < vocab and not p.greedy),
                default=0,
            ),
            any_temperature=any(not p.greedy and p.temperature != 1 for p in params),
            any_top_p=any(not p.greedy and p.top_p < 1 for p in params),
            any_typical=any(not p.greedy and p.typical_p < 1 for p in params),
            any_min_p=any(not p.greedy and p.min_p > 0 for p in params),
            any_bias=bool(bias),
            any_repetition=any(p.repetition_penalty != 1 for p in params),
            any_counts=any(p.counts_output for p in params),
        )


@dataclass(frozen=True, slots=True)
class Sampled:
    tokens: torch.Tensor  # (B,) int64
    #: log-probability of each chosen token under the model's distribution.
    logprobs: torch.Tensor  # (B,) float
    #: (B, N) the N most likely tokens and their logprobs (N = batch.top_logprobs).
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor


def _logical_shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def uniform(seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """A uniform in [0, 1) per row from (seed, position): splitmix64 of both."""
    z = seeds * _GOLDEN + positions + _GOLDEN
    for _ in range(2):  # two rounds: seeds that differ by one share no pattern
        z = (z ^ _logical_shift(z, 30)) * _MIX1
        z = (z ^ _logical_shift(z, 27)) * _MIX2
        z = z ^ _logical_shift(z, 31)
    return _logical_shift(z, 11).to(torch.float64) / float(1 << 53)


@dataclass(frozen=True, slots=True)
class History:
    """What a row's processors read of the sequence so far, (B, vocab) each; None when
    no row of the batch needs it."""

    #: Tokens of the prompt and the output (the repetition penalty).
    seen: torch.Tensor | None = None
    #: How often each token was generated (presence and frequency penalties).
    counts: torch.Tensor | None = None
    #: (rows, token ids) that may not be chosen now (EOS before ``min_tokens``).
    banned: tuple[torch.Tensor, torch.Tensor] | None = None


def process(
    logits: torch.Tensor, batch: SamplingBatch, history: History | None = None
) -> torch.Tensor:
    """Logits after bans, bias, penalties, temperature, top-k, top-p, min-p and
    typical-p (removed tokens at -inf), in float32. Never writes to ``logits``
    (grammar masks are ``sample``'s)."""
    h = history or History()
    scores = logits.float()
    if h.banned is not None:
        scores = scores.index_put(h.banned, torch.tensor(_NEG_INF, device=scores.device))
    if batch.any_bias:
        scores = scores.index_put(batch.bias[:2], batch.bias[2], accumulate=True)
    if h.seen is not None and batch.any_repetition:
        penalized = torch.where(scores < 0, scores * batch.penalty, scores / batch.penalty)
        scores = torch.where(h.seen, penalized, scores)
    if h.counts is not None and batch.any_counts:
        counts = h.counts.to(scores.dtype)
        scores = scores - counts * batch.frequency - (counts > 0) * batch.presence
    if batch.any_temperature:  # >= MIN_TEMPERATURE: finite for any finite logits
        scores = scores / batch.temperature
    vocab = scores.shape[-1]
    if batch.top_k_max:  # top-k: below the k-th largest score goes
        largest = torch.topk(scores, batch.top_k_max, dim=-1).values
        kth = largest.gather(1, (batch.top_k.clamp(max=batch.top_k_max) - 1).unsqueeze(1))
        kth = torch.where(batch.top_k.unsqueeze(1) < vocab, kth, _NEG_INF)  # rows without
        scores = scores.masked_fill(scores < kth, _NEG_INF)
    if batch.any_top_p:
        scores = _top_p(scores, batch.top_p)
    if batch.any_min_p:  # p < min_p * p_max, as log(p) < log(p_max) + log(min_p)
        threshold = scores.max(dim=-1, keepdim=True).values + batch.min_p
        scores = scores.masked_fill(scores < threshold, _NEG_INF)
    # typical-p: tokens whose surprise is closest to the entropy, up to mass p.
    if batch.any_typical:
        scores = _typical(scores, batch.typical_p)
    return scores


def _top_p(scores: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """The smallest set of most likely tokens whose probability exceeds ``mass`` (the
    most likely one always kept); rows at 1.0 keep everything.

    A token stays when the tokens more likely than it hold less than ``mass``, so the
    cut is found among the candidates when they hold ``mass`` between them."""
    vocab = scores.shape[-1]
    values = torch.topk(scores, min(vocab, _TOP_P_CANDIDATES), dim=-1).values
    probs = (values - scores.logsumexp(dim=-1, keepdim=True)).exp()
    cumulative = probs.cumsum(dim=-1)
    off = mass >= 1
    if values.shape[-1] < vocab and not bool((off | (cumulative[:, -1:] >= mass)).all()):
        return _top_p_sorted(scores, mass)
    kept = ((cumulative - probs) < mass).sum(dim=-1, keepdim=True).clamp(min=1)
    threshold = torch.where(off, _NEG_INF, values.gather(1, kept - 1))
    return scores.masked_fill(scores < threshold, _NEG_INF)


def _top_p_sorted(scores: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """``_top_p`` over the whole sorted vocabulary, as ``generate``'s warper does it."""
    sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - mass)
    remove[:, -1] = False
    return scores.masked_fill(remove.scatter(1, order, remove), _NEG_INF)


def _typical(scores: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    normalized = torch.log_softmax(scores, dim=-1)
    p = normalized.exp()
    entropy = -(normalized * p).nansum(-1, keepdim=True)
    shifted = torch.abs(-normalized - entropy)
    sorted_shift, order = torch.sort(shifted, descending=False)
    cumulative = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1).clamp(max=scores.shape[-1] - 1)
    remove = sorted_shift > sorted_shift.gather(1, last.view(-1, 1))
    remove[:, :1] = False
    remove = remove.scatter(1, order, remove) & (mass < 1)  # rows at 1.0 keep everything
    return scores.masked_fill(remove, _NEG_INF)


def sample(
    logits: torch.Tensor,
    batch: SamplingBatch,
    positions: torch.Tensor,
    history: History | None = None,
    allowed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Sampled:
    """The next token of every row. ``positions`` (B,) is each row's index of the token
    being chosen (its sequence length so far), which with its seed fixes its draw.
    Logprobs are of ``logits`` as they are (the model's distribution).

    ``allowed`` (rows, (len(rows), vocab) bool): the only tokens those rows' grammars
    allow. The masks are written into the constrained rows of ``logits`` (float32
    logits are not copied): only those rows are touched, and a chosen token is one its
    mask allows, so its logit, read for its logprob afterwards, is the model's."""
    raw = logits.float()
    # Log-probabilities as logit - normalizer, for the few tokens that need one: no
    # (B, vocab) log-softmax is written. Taken before any mask.
    normalizer = raw.logsumexp(dim=-1, keepdim=True)
    n = batch.top_logprobs
    top = torch.topk(raw, n, dim=-1) if n else None
    if allowed is not None:
        rows, mask = allowed
        raw.index_copy_(0, rows, raw.index_select(0, rows).masked_fill_(~mask, _NEG_INF))
    scores = process(raw, batch, history)
    best = scores.argmax(dim=-1)
    if batch.all_greedy:
        tokens = best
    else:
        # Inverse CDF in vocabulary order: one uniform per row.
        processed = scores.logsumexp(dim=-1, keepdim=True)
        cdf = (scores - processed).exp().double().cumsum(dim=-1)
        u = uniform(batch.seeds, positions).unsqueeze(1) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[-1] - 1)
        tokens = torch.where(batch.greedy, best, pick.squeeze(1))
    chosen = raw.gather(1, tokens.unsqueeze(1)).squeeze(1) - normalizer.squeeze(1)
    empty = raw.new_empty((raw.shape[0], 0))
    return Sampled(
        tokens=tokens,
        logprobs=chosen,
        top_ids=top.indices if top is not None else empty.long(),
        top_logprobs=top.values - normalizer if top is not None else empty,
    )


def prompt_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, top: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each prompt position's logprob of the token that follows it (``logits`` (N,
    vocab) at positions p, ``targets`` (N,) the tokens at p + 1), its rank there (1 +
    how many tokens are more likely), and the ``top`` most likely tokens with theirs:
    (N,), (N,), (N, top), (N, top)."""
    raw = logits.float()
    normalizer = raw.logsumexp(dim=-1, keepdim=True)
    target_logits = raw.gather(1, targets.unsqueeze(1))
    chosen = target_logits.squeeze(1) - normalizer.squeeze(1)
    ranks = (raw > target_logits).sum(dim=-1) + 1
    if not top:
        empty = raw.new_empty((raw.shape[0], 0))
        return chosen, ranks, empty.long(), empty
    best = torch.topk(raw, top, dim=-1)
    return chosen, ranks, best.indices, best.values - normalizer
