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

import numpy as np
import torch

from squeezer.backends.base import NewSequence, SeqId, TokenOut
from squeezer.backends.device import torch_dtype
from squeezer.backends.generation_state import SequenceTable
from squeezer.backends.quantize import QuantizeReport, quantize_fp16, quantize_int8
from squeezer.errors import InputTooLongError, ModelLoadError


def _quantize(model: torch.nn.Module, method: str) -> QuantizeReport:
    """Weight quantization measured in docs/benchmarks.md: int8 weight-only (a quarter
    of fp32's bytes) or fbgemm fp16 weights (half, converted inside the kernel)."""
    if method == "int8":
        return quantize_int8(model)
    if method == "fp16":
        return quantize_fp16(model)
    raise ModelLoadError(f"unknown quantization {method!r}: expected int8 or fp16")


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """Zeros that cost memory only where written, on CPU.

    ``torch.zeros`` writes every byte: 32 slots x 2048 positions of SmolLM2 would be
    3 GB resident at start-up. numpy's zeros come from ``calloc``, whose large blocks
    are fresh zero pages, mapped only when a sequence first writes them. (Zeros, not
    ``empty``: masked positions are still multiplied, and garbage could hold NaNs.)
    """
    if torch.device(device).type == "cpu" and dtype in (torch.float32, torch.float16):
        return torch.from_numpy(
            np.zeros(shape, dtype=np.float32 if dtype == torch.float32 else np.float16)
        )
    return torch.zeros(shape, dtype=dtype, device=device)


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
        self.keys = [_zeros(shape, dtype, device) for _ in range(layers)]
        self.values = [_zeros(shape, dtype, device) for _ in range(layers)]
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
        quantize: str | None = None,
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
        #: What quantization did (None: the weights are as loaded, lossless).
        self.quantized = None if quantize is None else _quantize(self.model, quantize)
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
        # Compact: active sequences hold slots 0..n-1, so decode steps read views.
        self.table = SequenceTable(max_slots, self.vocab_size, device, compact=True)

    @property
    def active(self) -> int:
        return self.table.active

    def length(self, seq: SeqId) -> int:
        return self.table.length(seq)

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

    @torch.inference_mode()
    def prefill(self, seqs: Sequence[NewSequence]) -> list[TokenOut]:
        """Take new sequences into free slots, run their prompts in one padded forward
        pass, and sample their first tokens."""
        rows = self.table.admit(seqs, self.max_len)  # compact: new slots are contiguous
        if not seqs:
            return []
        lengths = torch.tensor([len(s.prompt) for s in seqs])
        ids = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq.prompt)] = torch.tensor(list(seq.prompt))
        try:
            # Padding past a prompt's end writes keys its own later tokens overwrite
            # before they are ever attended to (each row sees only positions <= its own).
            logits = self._forward(ids, rows, torch.zeros(len(seqs), dtype=torch.long), lengths)
        except BaseException:
            for seq in reversed(seqs):
                self.free(seq.id)
            raise
        return self.table.sample([s.id for s in seqs], logits)

    @torch.inference_mode()
    def decode(self, tokens: dict[SeqId, int]) -> list[TokenOut]:
        """Append each sequence's last token and sample its next one, all in one step."""
        seqs = list(tokens)
        rows = self.table.rows(seqs)
        start = self.table.lengths(rows)
        if int(start.max()) >= self.max_len:
            raise InputTooLongError(f"a sequence reached the model's {self.max_len} tokens")
        ids = torch.tensor([[tokens[s]] for s in seqs], dtype=torch.long)
        logits = self._forward(ids, rows, start)
        self.table.advance(rows)
        return self.table.sample(seqs, logits)

    def free(self, seq: SeqId) -> None:
        """Release a sequence's slot; the last active sequence moves into it."""
        move = self.table.release(seq)
        if move is not None:
            self.cache.move(move.source, move.target, move.length)
