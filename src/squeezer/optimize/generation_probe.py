"""Running a generation backend for the gate: greedy continuations and teacher-forced
logits, through the backend's own step API.

Both go through ``step`` as serving does, so a candidate is measured with the kernels,
batch shapes and quantized layers it would serve with, on torch and llama.cpp alike:

- **greedy**: the prompts are prefilled together and decoded one token per step, the
  sampler greedy (argmax), for exactly ``new`` tokens (the backend never stops a
  sequence; the scheduler does, so EOS does not end one early and every candidate
  scores the same number of tokens).
- **teacher-forced**: each prompt followed by fp32's greedy continuation is prefilled
  as one prompt that asked for prompt logprobs. Both backends hand every prompt
  position's logits (N, vocab) to their sequence table's ``score_prompt`` before it
  reduces them to logprobs, and that call is tapped for the full rows. One batched
  prefill per group of prompts replaces ``new`` decode steps, and a sequence asking for
  prompt logprobs is never served from the prefix cache, so every position is computed.
  The alternative, ``prompt_logprobs`` of the whole vocabulary, would build a Python
  tuple per vocabulary entry per position; a forward of the backend's model outside
  its step would bypass llama.cpp entirely, and torch's slot attention too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch

from squeezer.backends.base import NewSequence, PromptChunk, SeqId, TokenOut
from squeezer.backends.generation_state import SequenceTable
from squeezer.backends.sampling import SamplingParams


class SteppedBackend(Protocol):
    """What the gate needs of a generation backend (both squeezer's have it)."""

    max_slots: int
    max_len: int
    table: SequenceTable

    def step(self, chunks: Sequence[PromptChunk], tokens: Mapping[Any, int]) -> list[TokenOut]: ...

    def free(self, seq: SeqId) -> None: ...


def _groups(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


def greedy(backend: SteppedBackend, prompts: Sequence[Sequence[int]], new: int) -> list[list[int]]:
    """Each prompt's ``new`` greedy tokens, up to ``max_slots`` prompts decoding together."""
    out: list[list[int]] = [[] for _ in prompts]
    for group in _groups(len(prompts), backend.max_slots):
        ids = [("greedy", i) for i in group]
        index: dict[SeqId, int] = {s: s[1] for s in ids}
        try:
            chunks = [PromptChunk.whole(NewSequence(s, prompts[s[1]])) for s in ids]
            last = {t.id: t.token for t in backend.step(chunks, {})}
            for _ in range(new - 1):
                for seq, token in last.items():
                    out[index[seq]].append(token)
                last = {t.id: t.token for t in backend.step([], last)}
            for seq, token in last.items():
                out[index[seq]].append(token)
        finally:
            for seq in ids:
                if seq in backend.table:
                    backend.free(seq)
    return out


@contextmanager
def _tapped(
    table: SequenceTable, wanted: Mapping[SeqId, range]
) -> Iterator[dict[SeqId, dict[int, torch.Tensor]]]:
    """Record, by sequence and first position, the rows of the logits every
    ``score_prompt`` call is given that fall in the sequence's ``wanted`` positions
    (the prompt's own positions are dropped at once: at 49k-token vocabularies they
    would be most of the memory)."""
    seen: dict[SeqId, dict[int, torch.Tensor]] = {}
    original = table.score_prompt

    def record(seq: SeqId, start: int, logits: torch.Tensor) -> None:
        positions = wanted.get(seq)
        if positions is not None:
            lo, hi = max(start, positions.start), min(start + len(logits), positions.stop)
            if lo < hi:
                rows = logits[lo - start : hi - start].detach()
                seen.setdefault(seq, {})[lo] = rows.to("cpu", torch.float32).clone()
        original(seq, start, logits)

    table.score_prompt = record  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del table.score_prompt  # the class's method again


def teacher_forced(
    backend: SteppedBackend,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
) -> list[torch.Tensor]:
    """Per prompt, the logits (len(continuation), vocab) that predict each token of
    ``continuation`` when the prompt and the continuation's earlier tokens precede it."""
    scored = SamplingParams(prompt_logprobs=0)
    out: list[torch.Tensor] = []
    for group in _groups(len(prompts), backend.max_slots):
        # Position p's logits predict token p + 1: the continuation's are at
        # len(prompt) - 1 ... len(prompt) + len(continuation) - 2.
        wanted: dict[SeqId, range] = {
            ("forced", i): range(len(prompts[i]) - 1, len(prompts[i]) - 1 + len(continuations[i]))
            for i in group
        }
        try:
            with _tapped(backend.table, wanted) as seen:
                chunks = [
                    PromptChunk.whole(NewSequence(seq, [*prompts[i], *continuations[i]], scored))
                    for seq, i in zip(wanted, group, strict=True)
                ]
                backend.step(chunks, {})
        finally:
            for seq in wanted:
                if seq in backend.table:
                    backend.free(seq)
        for seq, positions in wanted.items():
            pieces = seen.get(seq, {})
            starts = sorted(pieces)
            rows = torch.cat([pieces[k] for k in starts]) if starts else None
            if rows is None or starts[0] != positions.start or len(rows) != len(positions):
                raise RuntimeError(
                    f"{type(backend).__name__} scored {0 if rows is None else len(rows)} "
                    f"of the {len(positions)} positions asked: its step no longer hands "
                    "every prompt position to SequenceTable.score_prompt"
                )
            out.append(rows)
    return out


def decode_steps(
    backend: SteppedBackend, prompts: Sequence[Sequence[int]], streams: int, steps: int
) -> Iterator[float]:
    """Admit ``streams`` sequences (prompts reused in turn), then yield the seconds of
    each of up to ``steps`` decode steps; the caller stops when it has timed enough.
    Sequences are freed however the caller stops."""
    import time

    chosen = list(itertools.islice(itertools.cycle(prompts), streams))
    ids = [("speed", i) for i in range(streams)]
    try:
        chunks = [PromptChunk.whole(NewSequence(s, p)) for s, p in zip(ids, chosen, strict=True)]
        last = {t.id: t.token for t in backend.step(chunks, {})}
        room = backend.max_len - max(len(p) for p in chosen) - 1
        for _ in range(min(steps, room)):
            t0 = time.perf_counter()
            last = {t.id: t.token for t in backend.step([], last)}
            yield time.perf_counter() - t0
    finally:
        for seq in ids:
            if seq in backend.table:
                backend.free(seq)
