"""The per-sequence state every generation backend keeps, apart from its KV cache.

A backend's cache and forward pass are its own (torch tensors, llama.cpp's memory),
but what a sequence's next token depends on besides the logits is not: its sampling
settings, the tokens it has seen (repetition penalty) and generated how often
(presence and frequency penalties), how many new tokens it has (``min_new_tokens``
bans EOS until then), its position (which, with its seed, fixes its random draw) and,
when it asked for them, its prompt's logprobs as chunks are prefilled. Keeping that
here, and sampling here, makes every backend's tokens the same function of its
logits: a seeded request samples the same text on torch and on llama.cpp when their
logits agree.

It also keeps which tokens each slot's cache holds (``held_tokens``), after its
sequence has left too, and matches new prompts against them: prefix caching.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from squeezer.backends.base import NewSequence, PromptChunk, SeqId, TokenOut
from squeezer.backends.constraints import ConstrainedSequences
from squeezer.backends.held_tokens import HeldTokens
from squeezer.backends.prompt_scores import PromptScores
from squeezer.backends.sampling import (
    SamplingBatch,
    SamplingParams,
    sample,
)
from squeezer.backends.speculation import Speculator, verify
from squeezer.backends.token_history import TokenHistory
from squeezer.errors import InputTooLongError, OverloadedError


@dataclass(frozen=True, slots=True)
class Move:
    """A sequence moved from slot ``source`` to ``target``: its first ``length``
    positions of cache must follow it."""

    source: int
    target: int
    length: int


@dataclass(frozen=True, slots=True)
class Feed:
    """Prompt tokens ``start:chunk.end`` of a chunk, computed in ``slot``'s cache (the
    ones before ``start`` are there already)."""

    chunk: PromptChunk
    slot: int
    start: int

    @property
    def tokens(self) -> Sequence[int]:
        return self.chunk.seq.prompt[self.start : self.chunk.end]


class SequenceTable:
    """Which sequence holds which slot, and the sampler state of each.

    Slots are handed out lowest first. With ``compact``, a freed slot is filled by the
    highest occupied one (``release`` returns that ``Move``), so the active sequences
    always hold slots 0..n-1 and a backend can step over a prefix of its buffers; a
    backend whose cache addresses sequences by id (llama.cpp) leaves holes instead.
    """

    def __init__(
        self, max_slots: int, vocab_size: int, device: torch.device | str, *, compact: bool
    ) -> None:
        self.max_slots = max_slots
        self.vocab_size = vocab_size
        self.device = device
        self.compact = compact
        self._slots: dict[SeqId, int] = {}
        self._owners: list[SeqId | None] = [None] * max_slots
        self._free = list(range(max_slots))  # a heap
        self._lengths = torch.zeros(max_slots, dtype=torch.long)
        self._history = TokenHistory(max_slots, vocab_size, device)
        #: Prompt logprobs of sequences that asked, until their first token is sampled.
        self._prompt_scores = PromptScores()
        #: Grammar matchers of constrained sequences; the loader gives it the model's
        #: ``GrammarBook``.
        self.grammars = ConstrainedSequences()
        self._params: dict[SeqId, SamplingParams] = {}
        self._prompt_of: dict[SeqId, Sequence[int]] = {}
        #: Tokens whose keys and values each slot's cache holds (prefix caching).
        self.held = HeldTokens(max_slots)
        #: Prompt tokens of each sequence found in its slot's cache at admission.
        self._reused: dict[SeqId, int] = {}
        #: Prompt tokens admitted, and of those found cached, since start.
        self.prompt_tokens = 0
        self.cached_tokens = 0
        #: Recent steps' sequences and their settings as tensors; dropped whenever a
        #: sequence joins or leaves (an id may come back with other settings).
        self._batches: dict[tuple[SeqId, ...], SamplingBatch] = {}
        #: Drafts and their acceptance, when the backend speculates.
        self.speculator: Speculator | None = None

    @property
    def active(self) -> int:
        return len(self._slots)

    def __contains__(self, seq: object) -> bool:
        return seq in self._slots

    def slot(self, seq: SeqId) -> int:
        return self._slots[seq]

    def length(self, seq: SeqId) -> int:
        """Tokens of ``seq`` in the cache: its prompt and every token decoded since."""
        return int(self._lengths[self._slots[seq]])

    def rows(self, seqs: Sequence[SeqId]) -> torch.Tensor:
        return torch.tensor([self._slots[s] for s in seqs], dtype=torch.long)

    def lengths(self, rows: torch.Tensor) -> torch.Tensor:
        return self._lengths[rows]

    def admit(
        self, seqs: Sequence[NewSequence], max_len: int, slots: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Give new sequences slots (returned in order; ``slots`` picks free ones) after
        checking all of them, so a refused batch leaves nothing behind. Their lengths
        are their prompts' from now: a backend whose forward pass then fails must
        ``release`` them."""
        if not seqs:
            return torch.zeros(0, dtype=torch.long)
        self._batches.clear()
        if self.active + len(seqs) > self.max_slots:
            raise OverloadedError(f"all {self.max_slots} generation slots are in use")
        for seq in seqs:
            if not 0 < len(seq.prompt) < max_len:
                raise InputTooLongError(
                    f"prompt of {len(seq.prompt)} tokens; this model holds 1 to {max_len - 1}"
                )
        self._history.prepare([seq.params for seq in seqs])
        if slots is not None:
            self._free = [s for s in self._free if s not in slots]
            heapq.heapify(self._free)
        taken = []
        for i, seq in enumerate(seqs):
            slot = slots[i] if slots is not None else heapq.heappop(self._free)
            taken.append(slot)
            self._slots[seq.id] = slot
            self._owners[slot] = seq.id
            self._params[seq.id] = seq.params
            self._prompt_of[seq.id] = seq.prompt
            self._lengths[slot] = len(seq.prompt)
            self._history.reset(slot, seq.prompt)
            if seq.params.prompt_logprobs is not None:
                self._prompt_scores.start(seq.id, seq.params.prompt_logprobs)
            self._reused[seq.id] = 0
            if self.speculator is not None:
                self.speculator.admit(seq.id, seq.prompt, seq.max_tokens)
        return torch.tensor(taken, dtype=torch.long)

    # -- prefix caching -------------------------------------------------------------

    def common_prefix(self, slot: int, prompt: Sequence[int]) -> int:
        return self.held.common_prefix(slot, prompt)

    def reusable_prefix(self, slot: int, seq: NewSequence) -> int:
        """``common_prefix``, or 0 for a sequence that wants its prompt's logprobs:
        they are computed by running every prompt position."""
        if seq.params.prompt_logprobs is not None:
            return 0
        return self.common_prefix(slot, seq.prompt)

    def scores_prompt(self, seq: SeqId) -> bool:
        return seq in self._prompt_scores

    def score_prompt(self, seq: SeqId, start: int, logits: torch.Tensor) -> None:
        """Record the logprobs of prompt tokens ``start + 1 ...`` from ``logits`` at
        positions ``start ...`` (``PromptScores.score``)."""
        self._prompt_scores.score(seq, self._prompt_of[seq], start, logits)

    def free_slots(self) -> list[int]:
        return sorted(self._free)

    def pick_slots(self, new: Sequence[NewSequence]) -> list[int] | None:
        """A free slot for each new sequence: the one whose cache holds the longest
        prefix of its prompt (prefix caching), else the lowest. None when too few are
        free (``admit`` refuses)."""
        free, picked = self.free_slots(), []
        if len(new) > len(free):
            return None
        for seq in new:
            best = max(free, key=lambda slot: (self.common_prefix(slot, seq.prompt), -slot))
            free.remove(best)
            picked.append(best)
        return picked

    def forget(self, slot: int) -> None:
        """``slot``'s cache no longer holds what it did (a backend reclaimed it)."""
        self.held.forget(slot)

    def reuse(self, seq: SeqId, tokens: int) -> None:
        """``seq``'s first ``tokens`` prompt tokens are in its slot's cache already."""
        slot = self._slots[seq]
        self.held.keep(slot, tokens)
        self._reused[seq] = tokens
        self.prompt_tokens += len(self._prompt_of[seq])
        self.cached_tokens += tokens

    def copied(self, source: int, target: int, tokens: int) -> None:
        """The first ``tokens`` positions of ``source``'s cache were copied to ``target``."""
        self.held.copy(source, target, tokens)

    def feeds(self, chunks: Sequence[PromptChunk]) -> list[Feed]:
        """What of each chunk a forward pass must compute: its tokens not already in
        its slot's cache (chunks wholly cached are left out; a prompt's last token never
        is)."""
        out = []
        for chunk in chunks:
            start = max(chunk.start, self._reused[chunk.seq.id])
            if start < chunk.end:
                out.append(Feed(chunk, self._slots[chunk.seq.id], start))
        return out

    def wrote(
        self,
        feeds: Sequence[Feed],
        tokens: Mapping[SeqId, int],
        rows: torch.Tensor,
        positions: torch.Tensor,
        drafts: Mapping[SeqId, Sequence[int]],
    ) -> None:
        """A step's forward pass stored its feeds and decode ``tokens`` (at ``rows``,
        ``positions``, each followed by its ``drafts``) in the cache."""
        for feed in feeds:
            self.held.write(feed.slot, feed.start, feed.tokens)
        for (seq, token), slot, position in zip(
            tokens.items(), rows.tolist(), positions.tolist(), strict=True
        ):
            self.held.write(slot, position, (token, *drafts.get(seq, ())))

    def advance(self, rows: torch.Tensor) -> None:
        """One more token in the cache of each row."""
        self._lengths[rows] += 1

    def retreat(self, rows: torch.Tensor) -> None:
        self._lengths[rows] -= 1

    def rewind(self, seq: SeqId, kept: int, length: int) -> None:
        """``seq``'s cache keeps its first ``kept`` tokens, and holds ``length`` once a
        chunk of the rest is fed (a draft model catching up with its text)."""
        slot = self._slots[seq]
        self.held.keep(slot, kept)
        self._lengths[slot] = length

    def constrained(self, seq: SeqId) -> bool:
        return self._params[seq].constraint is not None

    def drafts(self, tokens: Mapping[SeqId, int], max_len: int) -> dict[SeqId, list[int]]:
        """What each decoding sequence speculates this step (none without a
        speculator)."""
        if self.speculator is None:
            return {}
        return self.speculator.drafts(tokens, self, max_len)

    def speculated(self, seq: SeqId, drafted: int, accepted: int) -> None:
        """``seq`` kept ``accepted`` of its ``drafted`` tokens: its cache holds no more
        than its length of them."""
        self.held.keep(self._slots[seq], self.length(seq))
        if self.speculator is not None:
            self.speculator.settle(seq, drafted, accepted)

    def finish_step(
        self,
        feeds: Sequence[Feed],
        tokens: Mapping[SeqId, int],
        rows: torch.Tensor,
        start: torch.Tensor,
        sampled: Sequence[SeqId],
        logits: torch.Tensor | None,
        drafts: Mapping[SeqId, Sequence[int]] | None = None,
        draft_logits: Mapping[SeqId, torch.Tensor] | None = None,
    ) -> list[TokenOut]:
        """After a forward pass wrote its feeds and decode ``tokens`` (with their
        ``drafts``, whose logits are ``draft_logits``): record them, sample
        ``sampled``'s next tokens, then accept what drafts they match
        (``speculation.verify``). A sampler that raises (one request's settings gave a
        NaN, say) takes the decoding rows back to their lengths before the step, as
        ``GenerationBackend.step`` promises, so the scheduler can rerun the step
        without the sequence that caused it."""
        drafts = drafts or {}
        self.wrote(feeds, tokens, rows, start, drafts)
        self.advance(rows)
        if not sampled or logits is None:
            return []
        try:
            outs = self.sample(sampled, logits)
        except BaseException:
            self._lengths[rows] -= 1
            for slot, position in zip(rows.tolist(), start.tolist(), strict=True):
                self.held.keep(slot, position)  # a backend may drop what it wrote
            for feed in feeds:
                self.held.keep(feed.slot, feed.start)
            raise
        if drafts:
            outs = verify(self, outs, drafts, draft_logits or {})
        if self.speculator is not None:
            self.speculator.finished(prompts=bool(feeds))
        return outs

    def release(self, seq: SeqId) -> Move | None:
        """Forget ``seq``; with ``compact``, the highest occupied slot moves into its
        slot, and the backend must move that sequence's cache as the ``Move`` says."""
        self._batches.clear()
        slot = self._slots.pop(seq)
        self._params.pop(seq)
        self._prompt_of.pop(seq)
        self._prompt_scores.pop(seq)
        self.grammars.release(seq)
        self._reused.pop(seq)
        if self.speculator is not None:
            self.speculator.release(seq)
        self._owners[slot] = None
        vacated, move = slot, None
        last = len(self._slots)  # compact: the others hold 0..last, all but ``slot``
        if self.compact and last > slot:
            moved = self._owners[last]
            assert moved is not None
            move = Move(last, slot, int(self._lengths[last]))
            self.held.copy(last, slot, move.length)
            self._lengths[slot] = self._lengths[last]
            self._history.move(last, slot)
            self._owners[slot], self._owners[last] = moved, None
            self._slots[moved] = slot
            vacated = last
        self._lengths[vacated] = 0
        heapq.heappush(self._free, vacated)
        return move

    def sample(self, seqs: Sequence[SeqId], logits: torch.Tensor) -> list[TokenOut]:
        """Each sequence's next token from its row of ``logits`` (EOS banned for rows
        still short of ``min_new_tokens``), chosen at position ``length``, marked as seen
        and counted. A sequence's first token carries its prompt logprobs, if it asked."""
        rows = self.rows(seqs)
        lengths = self._lengths[rows].tolist()
        banned: list[tuple[int, int]] = []
        for i, seq in enumerate(seqs):  # min_tokens: no EOS yet for these rows
            p = self._params[seq]
            # A constrained row's grammar says where its text may end: banning EOS
            # after a complete grammar would leave no token it allows.
            early = lengths[i] - len(self._prompt_of[seq]) < p.min_new_tokens
            if early and p.constraint is None:
                banned += [(i, eos) for eos in p.eos_ids]
        batch = self._batch(seqs)
        device_rows = rows.to(self.device)
        constraints = [self._params[seq].constraint for seq in seqs]
        allowed = self.grammars.mask(seqs, constraints, self.device)
        history = self._history.of(device_rows, batch, banned)
        # The position of the token being chosen: the sequence's length so far.
        picked = sample(logits, batch, self._lengths[rows].to(self.device), history, allowed)
        self._history.mark(device_rows, picked.tokens)
        tokens = picked.tokens.tolist()
        if allowed is not None:
            self.grammars.advance(allowed[0].tolist(), seqs, tokens)
        if self.speculator is not None:
            for seq, token in zip(seqs, tokens, strict=True):
                self.speculator.record(seq, token)
        logprobs = picked.logprobs.tolist()
        out = []
        for i, seq in enumerate(seqs):
            n = self._params[seq].top_logprobs or 0
            top: tuple[tuple[int, float], ...] = ()
            if n:
                top = tuple(
                    zip(
                        picked.top_ids[i, :n].tolist(),
                        picked.top_logprobs[i, :n].tolist(),
                        strict=True,
                    )
                )
            out.append(TokenOut(seq, tokens[i], logprobs[i], top, self._prompt_scores.pop(seq)))
        return out

    def _batch(self, seqs: Sequence[SeqId]) -> SamplingBatch:
        """The step's per-row settings as tensors, rebuilt only when the running set
        changes (a decode step usually has the same sequences as the one before)."""
        key = tuple(seqs)
        if key not in self._batches:
            if len(self._batches) >= 8:  # speculation samples subsets: keep a few
                self._batches.clear()
            params = [self._params[s] for s in seqs]
            self._batches[key] = SamplingBatch.of(params, self.vocab_size, self.device)
        return self._batches[key]
