"""Causal-LM decoding in torch with the KV cache inside the backend: the slot cache
(CPU); ``paged_generation`` puts the same model and step over a paged pool (GPU).

The backend owns the cache and samples inside each step; the scheduler above it only
names sequences and reads token ids back. A step is one forward pass over a flat row
of tokens: one per decoding sequence, then chunks of new prompts, none padded, each
written at its own slot and position. The linear layers, which are most of the work,
see one (tokens, hidden) matrix, so prompts joining ride along with the decode step
instead of stalling it, and the weights are read once for both. Only attention needs
to know which token belongs to whom: it reads the step's plan (``slot_kv.StepPlan`` or
``paged_kv.PagedPlan``).

The model is the unmodified ``transformers`` implementation: the cache object is
handed to it as its cache argument and answers its ``update`` calls
(``transformers_hooks`` owns that contract and checks it at load).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from squeezer.backends.base import NewSequence, PromptChunk, SeqId, StepShortcuts, TokenOut
from squeezer.backends.cpu_linear import use_decode_linears
from squeezer.backends.device import torch_dtype
from squeezer.backends.generation_state import Feed, SequenceTable
from squeezer.backends.quantize import QuantizeReport, quantize_fp16, quantize_int8
from squeezer.backends.slot_kv import SlotCache, StepPlan, register_slot_attention
from squeezer.backends.speculation import SpeculationConfig, speculator
from squeezer.backends.transformers_hooks import cache_keyword, check_step_contract
from squeezer.errors import InputTooLongError, ModelLoadError

#: Prompt positions scored per vocabulary projection (prompt logprobs).
_SCORE_ROWS = 256


def _quantize(model: torch.nn.Module, method: str) -> QuantizeReport:
    """Weight quantization measured in docs/benchmarks.md: int8 weight-only (a quarter
    of fp32's bytes) or fbgemm fp16 weights (half, converted inside the kernel)."""
    if method == "int8":
        return quantize_int8(model)
    if method == "fp16":
        return quantize_fp16(model)
    raise ModelLoadError(f"unknown quantization {method!r}: expected int8 or fp16")


class TorchGenerationBackend(StepShortcuts):
    """A causal LM with ``max_slots`` concurrent sequences of up to ``max_len`` tokens."""

    name = "torch"
    #: The attention function the model is loaded with, and whether active sequences
    #: are kept in slots 0..n-1 (the slot cache steps over a prefix of its buffers).
    attention = "squeezer_slots"
    compact = True

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        max_slots: int = 32,
        max_len: int = 2048,
        quantize: str | None = None,
        speculation: SpeculationConfig | None = None,
    ) -> None:
        import transformers

        register_slot_attention()
        self.device, self.dtype = device, dtype
        try:
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                path,
                dtype=torch_dtype(dtype),
                attn_implementation=self.attention,
                local_files_only=True,
            )
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"could not load {path} as a causal LM: {e}") from e
        if "sliding_attention" in (getattr(self.model.config, "layer_types", None) or ()):
            raise ModelLoadError(
                f"{path}: sliding-window attention layers are not supported by the torch "
                "generation backend yet"
            )
        self.model.eval().to(device)
        #: What quantization did (None: the weights are as loaded, lossless).
        self.quantized = None if quantize is None else _quantize(self.model, quantize)
        if self.quantized is None and torch.device(device).type == "cpu":
            use_decode_linears(self.model)  # MKL's small-batch layout: cpu_linear.py
        self._decoder = self.model.base_model
        # Looked up after quantizing: a converted head is a new module.
        self._head = self.model.get_output_embeddings()
        config = self.model.config
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        positions = int(
            getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0)
        )
        self.max_len = min(max_len, positions) if positions else max_len
        self.vocab_size = int(config.vocab_size)
        self.max_slots = max_slots
        layers = int(config.num_hidden_layers)
        self.cache = self._new_cache(layers, kv_heads, head_dim)
        self.table = SequenceTable(max_slots, self.vocab_size, device, compact=self.compact)
        self.table.speculator = speculator(
            speculation, max_slots=max_slots, max_len=self.max_len, vocab_size=self.vocab_size
        )
        #: The keyword the decoder takes its KV cache under (renamed in transformers 5.25).
        self._cache_keyword = cache_keyword(self._decoder)
        self._check_contract(layers)

    def _check_contract(self, layers: int) -> None:
        """One real token through the decoder before serving (``transformers_hooks``):
        an upstream change to the cache or attention call path fails the load with the
        transformers version named, not the first request with a wrong answer."""
        probe = NewSequence(object(), (0,))

        def cleanup() -> None:
            if probe.id in self.table:
                self.free(probe.id)
                self.table.prompt_tokens = self.table.cached_tokens = 0

        check_step_contract(self.cache, layers, lambda: self.prefill([probe]), cleanup)

    def _new_cache(self, layers: int, kv_heads: int, head_dim: int) -> Any:
        shape = (self.max_slots, kv_heads, self.max_len, head_dim)
        return SlotCache(layers, *shape, torch_dtype(self.dtype), self.device)

    @property
    def active(self) -> int:
        return self.table.active

    def length(self, seq: SeqId) -> int:
        return self.table.length(seq)

    @torch.inference_mode()
    def step(self, chunks: Sequence[PromptChunk], tokens: Mapping[SeqId, int]) -> list[TokenOut]:
        """Prompt chunks and one token of each decoding sequence in one forward pass;
        sequences first seen here take free slots (contiguous: the table is compact)."""
        new = [c.seq for c in chunks if c.first]
        self.table.admit(new, self.max_len, self._pick_slots(new))
        try:
            for seq in new:
                self._reuse_prefix(seq)
            return self._step(chunks, tokens)
        except BaseException:
            for seq in reversed(new):  # newest first: nothing has to move
                self.free(seq.id)
            raise

    def _pick_slots(self, new: Sequence[NewSequence]) -> list[int] | None:
        return None  # the lowest free ones: compact slots, prefixes are copied anyway

    def _reuse_prefix(self, seq: NewSequence) -> None:
        """Copy the longest cached prefix of ``seq``'s prompt, from whichever slot holds
        it (running or left), into its own slot: those positions are not computed."""
        target = self.table.slot(seq.id)
        length, _, source = max(  # the target itself first among equals: no copy
            (self.table.reusable_prefix(slot, seq), slot == target, slot)
            for slot in range(self.max_slots)
        )
        length = self._take_prefix(source, target, length)
        if length and source != target:
            self.table.copied(source, target, length)
        self.table.reuse(seq.id, length)

    def _take_prefix(self, source: int, target: int, length: int) -> int:
        """Make ``target``'s cache hold the first ``length`` positions ``source`` holds;
        returns how many it holds now."""
        if length and source != target:
            self.cache.move(source, target, length)
        return length

    def _step(self, chunks: Sequence[PromptChunk], tokens: Mapping[SeqId, int]) -> list[TokenOut]:
        drafts = self.table.drafts(tokens, self.max_len)
        # Decoding rows without drafts first (one token each, batched attention), then
        # speculating ones (their token and drafts: a chunk each), then prompt chunks.
        decoding = [s for s in tokens if s not in drafts] + list(drafts)
        tokens = {s: tokens[s] for s in decoding}
        rows = self.table.rows(decoding)
        start = self.table.lengths(rows)
        if decoding and int(start.max()) >= self.max_len:
            raise InputTooLongError(f"a sequence reached the model's {self.max_len} tokens")
        feeds = self.table.feeds(chunks)
        if not (decoding or feeds):
            return []
        plain = len(decoding) - len(drafts)
        ids = [tokens[s] for s in decoding[:plain]]
        for seq in decoding[plain:]:
            ids += [tokens[seq], *drafts[seq]]
        for feed in feeds:
            ids.extend(feed.tokens)
        spans = [
            (slot, begin, begin + 1 + len(drafts[seq]))
            for seq, slot, begin in zip(
                decoding[plain:], rows[plain:].tolist(), start[plain:].tolist(), strict=True
            )
        ]
        positions, attend = self._plan(rows[:plain], start[:plain], spans, feeds)
        hidden = self._decoder(
            input_ids=torch.tensor([ids], device=self.device),
            position_ids=positions.unsqueeze(0),
            use_cache=True,
            **{self._cache_keyword: self.cache},
            **attend,
        ).last_hidden_state[0]
        # Only the tokens that pick a next token go through the vocabulary projection:
        # every decoding token and draft, and the last token of each prompt ending here.
        picks, sampled = list(range(plain)), list(decoding[:plain])
        offset = plain
        for seq in decoding[plain:]:
            picks.append(offset)
            sampled.append(seq)
            offset += 1 + len(drafts[seq])
        for feed in feeds:
            if self.table.scores_prompt(feed.chunk.seq.id):
                self._score_prompt(feed, hidden[offset : offset + feed.chunk.end - feed.start])
            offset += feed.chunk.end - feed.start
            if feed.chunk.last:
                picks.append(offset - 1)
                sampled.append(feed.chunk.seq.id)
        offset, draft_picks = plain, list[int]()
        for seq in decoding[plain:]:
            draft_picks += range(offset + 1, offset + 1 + len(drafts[seq]))
            offset += 1 + len(drafts[seq])
        logits = None
        if picks:  # else only prompt chunks with more to come
            every = torch.tensor(picks + draft_picks, dtype=torch.long, device=self.device)
            logits = self._head(hidden[every])
        draft_logits = {}
        if drafts and logits is not None:
            logits, rest = logits[: len(picks)], logits[len(picks) :]
            for seq in decoding[plain:]:
                draft_logits[seq], rest = rest[: len(drafts[seq])], rest[len(drafts[seq]) :]
        return self.table.finish_step(
            feeds, tokens, rows, start, sampled, logits, drafts, draft_logits
        )

    def _score_prompt(self, feed: Feed, hidden: torch.Tensor) -> None:
        """The logprobs of the prompt tokens after each of ``feed``'s positions, through
        the vocabulary projection a slice at a time: a whole chunk's (tokens, vocab)
        logits would be gigabytes."""
        for begin in range(0, len(hidden), _SCORE_ROWS):
            logits = self._head(hidden[begin : begin + _SCORE_ROWS])
            self.table.score_prompt(feed.chunk.seq.id, feed.start + begin, logits)

    def _plan(
        self,
        rows: torch.Tensor,
        start: torch.Tensor,
        spans: Sequence[tuple[int, int, int]],
        feeds: Sequence[Feed],
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The step's token positions, and what its attention function reads: one
        token per plain decoding row (at ``start``), then each ``spans`` (slot, start,
        end: a speculating row's token and drafts), then each feed's tokens."""
        placed = [*spans, *((f.slot, f.start, f.chunk.end) for f in feeds)]
        dtype = self.cache.keys[0].dtype
        plan = StepPlan.build(rows, start, placed, self.table.active, dtype, self.device)
        self.cache.begin(plan)
        return plan.positions, {"slot_plan": plan}

    def free(self, seq: SeqId) -> None:
        """Release a sequence's slot; the last active sequence moves into it."""
        move = self.table.release(seq)
        if move is not None:
            self.cache.move(move.source, move.target, move.length)
