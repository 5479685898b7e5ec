"""Drafts from a small causal LM with the target's tokenizer (speculation's
``draft_model`` method).

The draft is a torch generation backend of its own, with its own KV cache, decoding
greedily: a greedy draft is accepted exactly where the target's own (seed, position)
draw picks the same token, so the target's output is unchanged (the lossless rule of
``speculation``). Rejection sampling from a sampling draft would keep only the
distribution, not the seeded tokens, so squeezer does not use it.

Each proposal first brings the draft's cache up to the sequence's text: it holds what
it drafted last time, of which the target kept a prefix, so it is rewound to the
longest prefix it shares with the text and the rest of the text (the tokens the
target accepted or chose instead) is fed as one chunk, whose last logits give the
first draft. ``k - 1`` batched greedy decode steps give the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from squeezer.backends.base import NewSequence, PromptChunk, SeqId
from squeezer.backends.speculation import SpeculationConfig
from squeezer.errors import ModelLoadError


class DraftModelDrafter:
    """Greedy drafts from ``config.model`` for up to ``max_slots`` sequences."""

    def __init__(
        self, config: SpeculationConfig, *, max_slots: int, max_len: int, vocab_size: int
    ) -> None:
        from squeezer.backends.torch_generation import TorchGenerationBackend

        if config.draft_path is None or not config.draft_path.is_dir():
            raise ModelLoadError(f"draft model {config.model!r} is not a model folder")
        self.backend = TorchGenerationBackend(
            config.draft_path, max_slots=max_slots, max_len=max_len
        )
        #: Draft ids at or past it are no tokens of the target: a draft stops there.
        self.vocab_size = min(vocab_size, self.backend.vocab_size)
        self._text: dict[SeqId, list[int]] = {}

    def admit(self, seq: SeqId, prompt: Sequence[int]) -> None:
        self._text[seq] = list(prompt)

    def record(self, seq: SeqId, token: int) -> None:
        self._text[seq].append(token)

    def release(self, seq: SeqId) -> None:
        self._text.pop(seq, None)
        if seq in self.backend.table:
            self.backend.free(seq)

    def propose(self, wanted: Mapping[SeqId, int]) -> dict[SeqId, list[int]]:
        table = self.backend.table
        # A draft model may hold fewer positions than the target: no drafts past them.
        wanted = {s: k for s, k in wanted.items() if len(self._text[s]) + k < self.backend.max_len}
        chunks = []
        for seq in wanted:
            text = self._text[seq]
            new = NewSequence(seq, text)
            if seq not in table:
                chunks.append(PromptChunk.whole(new))
                continue
            slot = table.slot(seq)
            kept = table.common_prefix(slot, text)  # at most all but the newest token
            table.rewind(seq, kept, len(text))
            chunks.append(PromptChunk(new, kept, len(text)))
        if not chunks:
            return {}
        drafts = {out.id: [out.token] for out in self.backend.step(chunks, {})}
        for depth in range(1, max(wanted.values())):
            going = {s: d[-1] for s, d in drafts.items() if wanted[s] > depth}
            if not going:
                break
            for out in self.backend.step([], going):
                drafts[out.id].append(out.token)
        return {seq: self._in_vocabulary(draft) for seq, draft in drafts.items()}

    def _in_vocabulary(self, draft: list[int]) -> list[int]:
        for i, token in enumerate(draft):
            if token >= self.vocab_size:
                return draft[:i]
        return draft
