"""Lossless speculative decoding: guessed tokens checked by the target model in the
step that would have produced one token anyway.

A decode step on a CPU (or a small batch on a GPU) is bound by reading the weights,
not by arithmetic: a forward pass over 1 + k tokens of one sequence costs little more
than over one. So each speculating sequence feeds its last token and ``k`` drafted
ones; the target's logits at those positions are sampled in order, each with the
sequence's own (seed, position) draw, and a draft is accepted only while it equals
the token that draw picked. The first token that differs is the target's own, and is
kept too. Every token delivered is therefore the one plain decoding would have given
(greedy and seeded alike): speculation changes speed, never output. Rejected drafts'
keys and values are left past the sequence's length, where attention does not read
them and the next step overwrites them.

Drafts come from the sequence's own text (prompt lookup, ``NgramDrafter``: find the
last earlier occurrence of its trailing n-gram and propose what followed it), or from
a small causal LM with the same tokenizer (``draft_model``), run greedily.

Speculation pauses for a sequence whose drafts are mostly rejected (they cost a
longer forward for nothing), and for a whole step with more than ``max_batch``
decoding sequences: such a step is already bound by compute, where every extra token
costs its full share.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from squeezer.backends.base import SeqId, TokenOut
from squeezer.backends.speculation_cost import Acceptance, StepCost, best_length

if TYPE_CHECKING:
    from squeezer.backends.generation_state import SequenceTable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SpeculationConfig:
    """vLLM's ``--speculative-config`` for the methods squeezer has, with its names."""

    #: "ngram" (prompt lookup) or "draft_model" (``model`` drafts).
    method: Literal["ngram", "draft_model"] = "ngram"
    #: Tokens drafted per step at most (vLLM's ``num_speculative_tokens``).
    num_speculative_tokens: int = 4
    #: The longest and shortest trailing n-gram looked up in the sequence's text.
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 2
    #: A draft model's folder (method "draft_model").
    model: str | None = None
    #: Decoding sequences above which a step does not speculate (compute-bound).
    max_batch: int = 4
    #: What one drafted token adds to a step, relative to a step without drafts; None:
    #: measured as the server runs (``speculation_cost``).
    token_cost: float | None = None

    def __post_init__(self) -> None:
        if self.method not in ("ngram", "draft_model"):
            raise ValueError(f"speculative method {self.method!r}: expected ngram or draft_model")
        if self.num_speculative_tokens < 1:
            raise ValueError("num_speculative_tokens must be >= 1")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError("need 1 <= prompt_lookup_min <= prompt_lookup_max")
        if self.method == "draft_model" and not self.model:
            raise ValueError('a draft_model speculation needs "model": the draft\'s folder')
        if self.max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if self.token_cost is not None and self.token_cost < 0:
            raise ValueError("token_cost must be >= 0")

    @classmethod
    def parse(cls, text: str) -> SpeculationConfig:
        """From vLLM's JSON (``{"method": "ngram", "num_speculative_tokens": 4, ...}``);
        a ``model`` without a method means a draft model, as in vLLM."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--speculative-config is not JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ValueError("--speculative-config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(
                f"--speculative-config: unknown keys {unknown}; known: {sorted(known)}"
            )
        if "model" in raw and "method" not in raw:
            raw["method"] = "draft_model"
        return cls(**raw)

    @property
    def draft_path(self) -> Path | None:
        return Path(self.model) if self.model else None


class NgramIndex:
    """One sequence's text, and where each of its n-grams last occurred with a known
    next token: looking up the trailing n-gram is one dict read per n, and each new
    token adds one entry per n."""

    def __init__(self, tokens: Sequence[int], sizes: range) -> None:
        self.tokens: list[int] = []
        self._sizes = sizes
        self._next: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in sizes}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            i = len(self.tokens)
            for n in self._sizes:  # the n-gram ending just before token i is followed by it
                if i >= n:
                    self._next[n][tuple(self.tokens[i - n : i])] = i
            self.tokens.append(token)

    def propose(self, k: int) -> list[int]:
        """``k`` tokens that followed the latest earlier occurrence of the longest
        trailing n-gram found (none when no n-gram recurs)."""
        for n in reversed(self._sizes):
            if len(self.tokens) <= n:
                continue
            start = self._next[n].get(tuple(self.tokens[-n:]))
            if start is not None:
                # Copied as LZ77 copies an overlapping match: past the text's end the
                # draft repeats itself, so a loop of period p drafts k tokens, not p.
                draft = self.tokens[start : start + k]
                while len(draft) < k:
                    draft.append(draft[len(draft) - (len(self.tokens) - start)])
                return draft
        return []


@dataclass(slots=True)
class _SequenceState:
    """A sequence's acceptance, its draft limit, and how long it sits out after drafts
    stopped paying."""

    limit: int  # prompt + new tokens it may reach
    acceptance: Acceptance = field(default_factory=Acceptance)
    pause: int = 0  # steps left without drafts
    backoff: int = 4  # the next pause's length (doubles while drafts keep not paying)


@dataclass(slots=True)
class SpeculationCounts:
    """Since start: verify steps of sequences, tokens drafted, drafts accepted."""

    drafts: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0


class Drafter(Protocol):
    """Proposes tokens for speculating sequences, from their text as ``record``ed (which
    ends with their newest token, not yet in the target's cache)."""

    def propose(self, wanted: Mapping[SeqId, int]) -> dict[SeqId, list[int]]:
        """Up to ``wanted[seq]`` tokens to follow each sequence's text."""
        ...

    def admit(self, seq: SeqId, prompt: Sequence[int]) -> None: ...

    def record(self, seq: SeqId, token: int) -> None:
        """``token`` was sampled for ``seq`` (delivered, in order)."""
        ...

    def release(self, seq: SeqId) -> None: ...


class NgramDrafter:
    """Prompt lookup over each sequence's own prompt and output."""

    def __init__(self, config: SpeculationConfig) -> None:
        self._sizes = range(config.prompt_lookup_min, config.prompt_lookup_max + 1)
        self._index: dict[SeqId, NgramIndex] = {}

    def admit(self, seq: SeqId, prompt: Sequence[int]) -> None:
        self._index[seq] = NgramIndex(prompt, self._sizes)

    def record(self, seq: SeqId, token: int) -> None:
        self._index[seq].extend((token,))

    def release(self, seq: SeqId) -> None:
        self._index.pop(seq, None)

    def propose(self, wanted: Mapping[SeqId, int]) -> dict[SeqId, list[int]]:
        out = {}
        for seq, k in wanted.items():
            if draft := self._index[seq].propose(k):
                out[seq] = draft
        return out


@dataclass
class Speculator:
    """Which decoding sequences speculate this step, with what drafts, and how well
    each has done."""

    config: SpeculationConfig
    drafter: Drafter
    counts: SpeculationCounts = field(default_factory=SpeculationCounts)
    cost: StepCost = field(default_factory=StepCost)
    _states: dict[SeqId, _SequenceState] = field(default_factory=dict)
    #: The step under way: when it started (drafting is part of what drafts cost),
    #: its decoding sequences, its drafts.
    _step: tuple[float, int, int] | None = None

    def admit(self, seq: SeqId, prompt: Sequence[int], max_tokens: int | None) -> None:
        self._states[seq] = _SequenceState(max_tokens if max_tokens is not None else 1 << 62)
        self.drafter.admit(seq, prompt)

    def record(self, seq: SeqId, token: int) -> None:
        self.drafter.record(seq, token)

    def release(self, seq: SeqId) -> None:
        self._states.pop(seq, None)
        self.drafter.release(seq)

    def drafts(
        self, tokens: Mapping[SeqId, int], table: SequenceTable, max_len: int
    ) -> dict[SeqId, list[int]]:
        """Drafts for this step's decoding sequences (``tokens``: their last tokens),
        none when the step is too big, or for a sequence that is paused, constrained by
        a grammar, near its end (no draft past its ``max_new_tokens`` or the cache), or
        whose drafts are not expected to pay for what they cost (``best_length``)."""
        self._step = None
        if not tokens or len(tokens) > self.config.max_batch:
            return {}
        started = time.perf_counter()
        token_cost = self.config.token_cost
        if token_cost is None:
            token_cost = self.cost.token
        wanted = {}
        for seq in tokens:
            state = self._states[seq]
            if state.pause:
                state.pause -= 1
                continue
            if table.constrained(seq):
                continue
            length = table.length(seq)  # the last token goes at ``length``
            room = min(state.limit - length - 2, max_len - 2 - length)
            most = min(self.config.num_speculative_tokens, room)
            k = best_length(state.acceptance.p, token_cost, most)
            if k > 0:
                wanted[seq] = k
            elif most > 0:  # not worth it now: try again later, later each time
                state.pause, state.backoff = state.backoff, min(state.backoff * 2, 256)
                state.acceptance = Acceptance()  # a fresh chance after the pause
        drafts: dict[SeqId, list[int]] = {}
        if wanted:
            try:
                drafts = self.drafter.propose(wanted)
            except Exception:  # a draft model's failure must not fail the target's step
                log.exception("speculation: drafting failed; this step decodes without drafts")
                for seq in wanted:
                    self._states[seq].pause = 64
        self._step = (started, len(tokens), sum(map(len, drafts.values())))
        return drafts

    def finished(self, prompts: bool) -> None:
        """The step ended; it is timed for ``cost`` unless it carried prompt chunks."""
        if self._step is not None and not prompts:
            started, sequences, drafted = self._step
            self.cost.observe(sequences, drafted, time.perf_counter() - started)
        self._step = None

    def settle(self, seq: SeqId, drafted: int, accepted: int) -> None:
        """How a sequence's verify step went."""
        self.counts.drafts += 1
        self.counts.draft_tokens += drafted
        self.counts.accepted_tokens += accepted
        state = self._states.get(seq)
        if state is not None:
            state.acceptance.observe(drafted, accepted)
            if accepted:
                state.backoff = 4


def verify(
    table: SequenceTable,
    outs: list[TokenOut],
    drafts: Mapping[SeqId, Sequence[int]],
    logits: Mapping[SeqId, torch.Tensor],
) -> list[TokenOut]:
    """Accept drafts after the step's own tokens ``outs`` (each speculating sequence's
    first token is in them, sampled from the logits at its last token): while a
    sequence's newest token equals its next draft, that draft's keys and values are
    valid, so its length grows by one and the token after it is sampled from
    ``logits[seq]`` (the rows at its drafts), at the next position. Accepted tokens
    follow their sequence's first one in the list returned.

    A sampler error at a later depth stops that depth's acceptance (the token before
    it is delivered, the error recurs, and is isolated, in the next plain step)."""
    newest = {out.id: out for out in outs if out.id in drafts}
    extra: dict[SeqId, list[TokenOut]] = {seq: [] for seq in newest}
    accepted = dict.fromkeys(newest, 0)
    going = [s for s in newest if newest[s].token == drafts[s][0]]
    depth = 0
    while going:
        rows = table.rows(going)
        table.advance(rows)
        try:
            sampled = table.sample(going, torch.stack([logits[s][depth] for s in going]))
        except Exception:
            table.retreat(rows)
            break
        depth += 1
        for out in sampled:
            accepted[out.id] += 1
            extra[out.id].append(out)
            newest[out.id] = out
        going = [s for s in going if depth < len(drafts[s]) and newest[s].token == drafts[s][depth]]
    for seq in newest:
        table.speculated(seq, len(drafts[seq]), accepted[seq])
    return [x for out in outs for x in (out, *extra.get(out.id, ()))]


def speculator(
    config: SpeculationConfig | None, *, max_slots: int, max_len: int, vocab_size: int
) -> Speculator | None:
    """The speculator a generation backend's table uses (None: no speculation)."""
    if config is None:
        return None
    if config.method == "ngram":
        return Speculator(config, NgramDrafter(config))
    from squeezer.backends.draft_model import DraftModelDrafter

    drafter = DraftModelDrafter(config, max_slots=max_slots, max_len=max_len, vocab_size=vocab_size)
    return Speculator(config, drafter)
