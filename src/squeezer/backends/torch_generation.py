"""Causal-LM decoding in torch with a per-slot KV cache: the CPU generation backend.

The backend owns the cache and samples inside each step; the scheduler above it only
names sequences and reads token ids back. The cache is one static buffer per layer,
(slots, kv_heads, max_len, head_dim), allocated once. Active sequences always occupy
slots 0..n-1, so a decode step attends over views of the buffers (never a copy); when
a sequence leaves, the last one moves into its slot (one copy of one sequence's cache,
once, not per step). Each row writes its new keys at its own position and a 4D mask
lets it see only its own past, so sequences of any lengths decode together.

The model is the unmodified ``transformers`` implementation: the cache object is
handed to it as ``past_key_values`` and answers its ``update`` calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from squeezer.backends.base import NewSequence, SeqId, TokenOut
from squeezer.backends.device import torch_dtype
from squeezer.backends.sampling import SamplingBatch, SamplingParams, sample
from squeezer.errors import InputTooLongError, ModelLoadError, OverloadedError


class SlotCache:
    """Keys and values of every slot, written at each row's own position.

    ``begin`` names the rows (slots) and write positions of the next forward pass;
    ``update`` (called by every attention layer) stores the new keys and values there
    and returns the rows' keys and values up to ``kv_len``: views when the rows are
    slots 0..B-1.
    """

    def __init__(
        self,
        layers: int,
        slots: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (slots, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.max_len = max_len
        self._rows = torch.zeros(0, dtype=torch.long)
        self._positions = torch.zeros(0, 0, dtype=torch.long)
        self._read: slice | torch.Tensor = slice(0, 0)
        self._kv_len = 0

    def begin(self, rows: torch.Tensor, positions: torch.Tensor) -> None:
        """Rows (B,) and the positions (B, q) their q new tokens are written at."""
        self._rows = rows
        self._positions = positions
        count = int(rows.shape[0])
        contiguous = bool(torch.equal(rows, torch.arange(int(rows[0]), int(rows[0]) + count)))
        self._read = slice(int(rows[0]), int(rows[0]) + count) if contiguous else rows
        self._kv_len = int(positions.max()) + 1

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        cache_kwargs: dict[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        rows = self._rows.unsqueeze(1)
        keys[rows, :, self._positions] = key_states.transpose(1, 2).to(keys.dtype)
        values[rows, :, self._positions] = value_states.transpose(1, 2).to(values.dtype)
        return keys[self._read, :, : self._kv_len], values[self._read, :, : self._kv_len]

    def move(self, source: int, target: int, length: int) -> None:
        for buffers in (self.keys, self.values):
            for layer in buffers:
                layer[target, :, :length] = layer[source, :, :length]

    # What transformers may ask a cache beyond ``update``.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._kv_len

    @property
    def is_compileable(self) -> bool:
        return False


class TorchGenerationBackend:
    """A causal LM with ``max_slots`` concurrent sequences of up to ``max_len`` tokens."""

    name = "torch"

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        max_slots: int = 32,
        max_len: int = 2048,
    ) -> None:
        import transformers

        self.device, self.dtype = device, dtype
        try:
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype(dtype), attn_implementation="sdpa", local_files_only=True
            )
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"could not load {path} as a causal LM: {e}") from e
        self.model.eval().to(device)
        self._decoder = self.model.base_model
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
        self.cache = SlotCache(
            int(config.num_hidden_layers),
            max_slots,
            kv_heads,
            self.max_len,
            head_dim,
            torch_dtype(dtype),
            device,
        )
        self.max_slots = max_slots
        self._slots: dict[SeqId, int] = {}
        self._order: list[SeqId] = []  # slot i holds _order[i]
        self._lengths = torch.zeros(max_slots, dtype=torch.long)
        self._seen = torch.zeros(max_slots, self.vocab_size, dtype=torch.bool, device=device)
        self._params: dict[SeqId, SamplingParams] = {}
        self._prompt_lengths: dict[SeqId, int] = {}

    @property
    def active(self) -> int:
        return len(self._order)

    def length(self, seq: SeqId) -> int:
        return int(self._lengths[self._slots[seq]])

    def _forward(
        self,
        ids: torch.Tensor,
        rows: torch.Tensor,
        start: torch.Tensor,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits at each row's last real token; ``ids`` (B, q) go at start..start+q,
        right-padded to q when ``lengths`` says rows are shorter."""
        q = ids.shape[1]
        positions = start.unsqueeze(1) + torch.arange(q).unsqueeze(0)
        self.cache.begin(rows, positions)
        kv = torch.arange(int(positions.max()) + 1)
        mask = (kv.view(1, 1, 1, -1) <= positions.view(-1, 1, q, 1)).to(self.device)
        hidden = self._decoder(
            input_ids=ids.to(self.device),
            position_ids=positions.to(self.device),
            attention_mask=mask,
            past_key_values=self.cache,
            use_cache=True,
        ).last_hidden_state
        last = (lengths - 1) if lengths is not None else torch.full((ids.shape[0],), q - 1)
        # Only the rows' last positions go through the vocabulary projection.
        picked = hidden[torch.arange(ids.shape[0]), last.to(self.device)]
        logits: torch.Tensor = self._head(picked)
        return logits

    def _sample(self, seqs: Sequence[SeqId], logits: torch.Tensor) -> list[TokenOut]:
        rows = torch.tensor([self._slots[s] for s in seqs])
        lengths = self._lengths[rows].tolist()
        for i, seq in enumerate(seqs):  # min_tokens: no EOS yet for these rows
            p = self._params[seq]
            if p.eos_ids and lengths[i] - self._prompt_lengths[seq] < p.min_new_tokens:
                logits[i, list(p.eos_ids)] = float("-inf")
        batch = SamplingBatch.of([self._params[s] for s in seqs], self.vocab_size, self.device)
        # The position of the token being chosen: the sequence's length so far.
        picked = sample(logits, batch, self._lengths[rows].to(self.device), self._seen[rows])
        tokens = picked.tokens.cpu()
        self._seen[rows.to(self.device), picked.tokens] = True
        out = []
        for i, seq in enumerate(seqs):
            n = self._params[seq].top_logprobs or 0
            top = tuple(
                zip(
                    picked.top_ids[i, :n].tolist(), picked.top_logprobs[i, :n].tolist(), strict=True
                )
            )
            out.append(TokenOut(seq, int(tokens[i]), float(picked.logprobs[i]), top))
        return out

    @torch.inference_mode()
    def prefill(self, seqs: Sequence[NewSequence]) -> list[TokenOut]:
        """Take new sequences into free slots, run their prompts in one padded forward
        pass, and sample their first tokens."""
        if self.active + len(seqs) > self.max_slots:
            raise OverloadedError(f"all {self.max_slots} generation slots are in use")
        for seq in seqs:
            if not 0 < len(seq.prompt) < self.max_len:
                raise InputTooLongError(
                    f"prompt of {len(seq.prompt)} tokens; this model holds 1 to {self.max_len - 1}"
                )
        if not seqs:
            return []
        first = len(self._order)
        rows = torch.arange(first, first + len(seqs))  # new slots are contiguous
        lengths = torch.tensor([len(s.prompt) for s in seqs])
        ids = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq.prompt)] = torch.tensor(list(seq.prompt))
            self._order.append(seq.id)
            self._slots[seq.id] = first + i
            self._params[seq.id] = seq.params
            self._prompt_lengths[seq.id] = len(seq.prompt)
            self._seen[first + i] = False
            self._seen[first + i, ids[i, : len(seq.prompt)].to(self.device)] = True
        try:
            # Padding past a prompt's end writes keys its own later tokens overwrite
            # before they are ever attended to (each row sees only positions <= its own).
            logits = self._forward(ids, rows, torch.zeros(len(seqs), dtype=torch.long), lengths)
        except BaseException:
            for seq in reversed(seqs):
                self.free(seq.id)
            raise
        self._lengths[rows] = lengths
        return self._sample([s.id for s in seqs], logits)

    @torch.inference_mode()
    def decode(self, tokens: dict[SeqId, int]) -> list[TokenOut]:
        """Append each sequence's last token and sample its next one, all in one step."""
        seqs = list(tokens)
        rows = torch.tensor([self._slots[s] for s in seqs])
        start = self._lengths[rows]
        if int(start.max()) >= self.max_len:
            raise InputTooLongError(f"a sequence reached the model's {self.max_len} tokens")
        ids = torch.tensor([[tokens[s]] for s in seqs], dtype=torch.long)
        logits = self._forward(ids, rows, start)
        self._lengths[rows] += 1
        return self._sample(seqs, logits)

    def free(self, seq: SeqId) -> None:
        """Release a sequence's slot; the last active sequence moves into it."""
        slot = self._slots.pop(seq)
        self._params.pop(seq)
        self._prompt_lengths.pop(seq)
        last = len(self._order) - 1
        moved = self._order.pop()
        if slot != last:
            self.cache.move(last, slot, int(self._lengths[last]))
            self._lengths[slot] = self._lengths[last]
            self._seen[slot] = self._seen[last]
            self._order[slot] = moved
            self._slots[moved] = slot
        self._lengths[last] = 0
