"""The backend protocol: named arrays in, named arrays out, on one device.

A backend knows nothing of HTTP, batching or tasks. Optimized runtimes (ONNX Runtime,
OpenVINO, CTranslate2) implement the same protocol, so the engine and tasks never
change when a runtime is added.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from squeezer.backends.sampling import SamplingParams
from squeezer.types import NamedArrays

if TYPE_CHECKING:
    from squeezer.backends.generation_state import SequenceTable


@runtime_checkable
class Backend(Protocol):
    """A loaded model ready to run forward passes.

    ``forward`` is called from exactly one thread at a time (the device's compute
    thread), so implementations need no locking of their own.
    """

    #: Runtime name as users pick it ("torch", "onnxruntime", ...).
    name: str
    #: Resolved device ("cpu", "cuda:0") and dtype ("float32", ...), never "auto".
    device: str
    dtype: str

    @property
    def output_names(self) -> tuple[str, ...]: ...

    def forward(self, inputs: NamedArrays, outputs: Sequence[str] | None = None) -> NamedArrays:
        """Compute ``outputs`` (all of ``output_names`` when None) for a batch.

        ``inputs`` may hold ``logit_positions`` ((N, 2) rows of ``[batch row, token]``):
        a model with a vocabulary head then returns ``logits`` of shape (N, vocab) for
        just those tokens instead of (batch, length, vocab).
        """
        ...

    def close(self) -> None: ...


#: How the scheduler names a sequence to a generation backend.
SeqId = Hashable


@dataclass(frozen=True, slots=True)
class NewSequence:
    id: SeqId
    prompt: Sequence[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    #: Prompt + new tokens the request may reach (None: up to the model's length):
    #: speculation drafts nothing past it.
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class PromptLogprob:
    """A prompt token's logprob given the tokens before it, and the most likely
    tokens in its place with theirs."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    #: 1 + how many tokens the model found more likely in its place (vLLM's rank).
    rank: int = 1


@dataclass(frozen=True, slots=True)
class TokenOut:
    """One sequence's next token, with its logprob and the most likely alternatives."""

    id: SeqId
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    #: With the first token of a sequence that asked for prompt logprobs: one per
    #: prompt token, None for the first (nothing precedes it).
    prompt: tuple[PromptLogprob | None, ...] | None = None
    #: The sequence's last token (set by the scheduler, which decides the end as it
    #: delivers the token): a stream can send it at once, with its end, rather than
    #: hold every token until the next one shows it was not the last.
    last: bool = False


@dataclass(frozen=True, slots=True)
class PromptChunk:
    """Prompt positions ``start:end`` of a sequence, prefilled in one step.

    A long prompt is prefilled in several steps so that running streams keep decoding
    meanwhile (chunked prefill). The chunk starting at 0 admits the sequence; the one
    ending at the prompt's end samples its first token.
    """

    seq: NewSequence
    start: int
    end: int

    @classmethod
    def whole(cls, seq: NewSequence) -> PromptChunk:
        return cls(seq, 0, len(seq.prompt))

    @property
    def first(self) -> bool:
        return self.start == 0

    @property
    def last(self) -> bool:
        return self.end == len(self.seq.prompt)


class GenerationBackend(Protocol):
    """A causal LM that owns its KV cache and samples inside each step.

    Stateful, so that torch on CPU, llama.cpp and a GPU block pool fit the same
    scheduler: it names sequences and reads token ids back, never tensors.
    """

    name: str
    max_slots: int
    max_len: int
    #: Rows of the model's token embedding: a prompt id at or past it cannot run.
    vocab_size: int

    def step(self, chunks: Sequence[PromptChunk], tokens: Mapping[Any, int]) -> list[TokenOut]:
        """One forward pass over prompt chunks and one new token of each decoding
        sequence (``tokens``: its last sampled token). Returns the next token of every
        decoding sequence (a speculating one's accepted tokens follow it, in order),
        then of every sequence whose prompt's last chunk this was.
        If it raises, the sequences first admitted in it are gone again and the
        decoding sequences' caches are as they were."""
        ...

    def free(self, seq: SeqId) -> None: ...

    def prefix_cache(self) -> tuple[int, int]:
        """(prompt tokens admitted, of them found in the cache) since start."""
        ...

    def speculation(self) -> tuple[int, int, int] | None:
        """(verify steps, tokens drafted, drafts accepted) since start, or None."""
        ...

    @property
    def token_budget(self) -> int:
        """Prompt + new tokens, summed over running sequences, that always fit the
        cache: the scheduler admits no more."""
        ...

    @property
    def kv_blocks(self) -> tuple[int, int] | None:
        """A paged cache's (blocks, blocks in use); None for other caches."""
        ...


class StepShortcuts:
    """``prefill`` and ``decode`` as a step of one kind, for callers (tests,
    benchmarks) that do not mix them; ``prefix_cache`` from the backend's table."""

    table: SequenceTable
    max_slots: int
    max_len: int

    def step(self, chunks: Sequence[PromptChunk], tokens: Mapping[Any, int]) -> list[TokenOut]:
        raise NotImplementedError

    @property
    def token_budget(self) -> int:
        return self.max_slots * self.max_len  # a slot per sequence holds its whole length

    @property
    def kv_blocks(self) -> tuple[int, int] | None:
        return None

    def prefix_cache(self) -> tuple[int, int]:
        return self.table.prompt_tokens, self.table.cached_tokens

    def speculation(self) -> tuple[int, int, int] | None:
        """(verify steps, tokens drafted, drafts accepted) since start; None when the
        backend does not speculate."""
        speculator = self.table.speculator
        if speculator is None:
            return None
        counts = speculator.counts
        return counts.drafts, counts.draft_tokens, counts.accepted_tokens

    def prefill(self, seqs: Sequence[NewSequence]) -> list[TokenOut]:
        """Take new sequences, run their whole prompts, sample their first tokens."""
        return self.step([PromptChunk.whole(s) for s in seqs], {})

    def decode(self, tokens: Mapping[Any, int]) -> list[TokenOut]:
        """Append each sequence's last token and sample its next one, in one step."""
        return self.step([], tokens)
