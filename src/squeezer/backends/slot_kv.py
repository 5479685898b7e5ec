"""The slot KV cache: one static buffer per layer, (slots, kv_heads, max_len, head_dim),
and the attention function that reads it.

Active sequences always occupy slots 0..n-1, so decoding attends over views of the
buffers (never a copy); when a sequence leaves, the last one moves into its slot (one
copy of one sequence's cache, once, not per step). A step's tokens are one flat row:
one per decoding sequence, then chunks of new prompts, each written at its own slot
and position; ``StepPlan`` says where, and ``slot_attention`` (registered with
``transformers`` as ``squeezer_slots``) reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from squeezer.backends.transformers_hooks import StepCache, register_attention


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


@dataclass(frozen=True, slots=True)
class _Chunk:
    """A prompt chunk's place in the step: flat tokens ``offset:offset+size`` go to
    ``slot`` at positions ``start:start+size``."""

    slot: int
    start: int
    offset: int
    size: int
    #: (size, start+size) bool: who sees whom; None when the chunk is a whole prompt
    #: (plain causal attention).
    mask: torch.Tensor | None


@dataclass(frozen=True, slots=True)
class StepPlan:
    """Where a step's flat tokens sit in the cache, built once per step and read by
    every layer's attention.

    The step's tokens are one row of ``T``: first one token per decoding sequence
    (``decode_slots``), then each prompt chunk's tokens. Linear layers see them as one
    (T, hidden) matrix, with no padding; only attention needs to know who is who.
    """

    slots: torch.Tensor  # (T,) slot of each token
    positions: torch.Tensor  # (T,) position of each token in its sequence
    decode_slots: torch.Tensor  # (D,) slots of the decoding sequences, in token order
    #: (span, 1, 1, L) additive mask over slots 0..span-1 (the active prefix); rows of
    #: slots not decoding see position 0 only, their output is dropped.
    decode_mask: torch.Tensor | None
    chunks: tuple[_Chunk, ...]

    @classmethod
    def build(
        cls,
        decode_slots: torch.Tensor,
        decode_positions: torch.Tensor,
        chunks: Sequence[tuple[int, int, int]],
        span: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> StepPlan:
        """``chunks``: (slot, start, end) of each prompt chunk, in token order."""
        slots, positions, placed = [decode_slots], [decode_positions], []
        offset = len(decode_slots)
        for slot, start, end in chunks:
            size = end - start
            slots.append(torch.full((size,), slot, dtype=torch.long))
            positions.append(torch.arange(start, end))
            mask = None
            if start:  # token i (at start+i) sees the cache up to its own position
                mask = torch.arange(end).view(1, -1) <= torch.arange(start, end).view(-1, 1)
                mask = mask.to(device)
            placed.append(_Chunk(slot, start, offset, size, mask))
            offset += size
        decode_mask = None
        if len(decode_slots):
            limit = torch.zeros(span, dtype=torch.long)
            limit[decode_slots] = decode_positions
            seen = torch.arange(int(decode_positions.max()) + 1).view(1, -1) <= limit.view(-1, 1)
            decode_mask = torch.zeros(seen.shape, dtype=dtype).masked_fill_(~seen, float("-inf"))
            decode_mask = decode_mask.view(span, 1, 1, -1).to(device)
        return cls(
            torch.cat(slots).to(device),
            torch.cat(positions).to(device),
            decode_slots.to(device),
            decode_mask,
            tuple(placed),
        )


class SlotCache(StepCache):
    """Keys and values of every slot, written at each token's own slot and position.

    ``begin`` hands it the step's plan; ``update`` (called by every attention layer)
    stores the new keys and values there and returns the layer's whole buffers, which
    ``slot_attention`` reads through views.
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

    def store(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (1, kv_heads, T, head_dim) new keys and values at their slots."""
        assert self._plan is not None, "begin() names where the step's tokens go"
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        slots, positions = self._plan.slots, self._plan.positions
        keys[slots, :, positions] = key_states[0].transpose(0, 1).to(keys.dtype)
        values[slots, :, positions] = value_states[0].transpose(0, 1).to(values.dtype)
        return keys, values

    def move(self, source: int, target: int, length: int) -> None:
        for buffers in (self.keys, self.values):
            for layer in buffers:
                layer[target, :, :length] = layer[source, :, :length]


def slot_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    *,
    slot_plan: StepPlan,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of a step's flat tokens over the slot cache, as a ``transformers``
    attention function (registered as ``squeezer_slots``).

    ``query`` is (1, heads, T, head_dim); ``key``/``value`` are the layer's whole
    (slots, kv_heads, max_len, head_dim) buffers. Decoding tokens attend in one batched
    call over views of slots 0..span-1; each prompt chunk attends over its own slot up
    to its end. Grouped-query heads are matched inside SDPA (``enable_gqa``): expanding
    the keys to every query head costs a copy per layer, ~10x the attention itself.
    """
    plan = slot_plan
    heads, tokens, head_dim = query.shape[1], query.shape[2], query.shape[3]
    out = query.new_empty(tokens, heads, head_dim)
    decoding = len(plan.decode_slots)
    if plan.decode_mask is not None:
        span, length = plan.decode_mask.shape[0], plan.decode_mask.shape[-1]
        q = query.new_zeros(span, heads, 1, head_dim)
        q[plan.decode_slots, :, 0] = query[0, :, :decoding].transpose(0, 1)
        o = F.scaled_dot_product_attention(
            q,
            key[:span, :, :length],
            value[:span, :, :length],
            attn_mask=plan.decode_mask,
            scale=scaling,
            enable_gqa=True,
        )
        out[:decoding] = o[plan.decode_slots, :, 0]
    for chunk in plan.chunks:
        end = chunk.start + chunk.size
        o = F.scaled_dot_product_attention(
            query[:, :, chunk.offset : chunk.offset + chunk.size],
            key[chunk.slot : chunk.slot + 1, :, :end],
            value[chunk.slot : chunk.slot + 1, :, :end],
            attn_mask=chunk.mask,
            is_causal=chunk.mask is None,
            scale=scaling,
            enable_gqa=True,
        )
        out[chunk.offset : chunk.offset + chunk.size] = o[0].transpose(0, 1)
    return out.unsqueeze(0), None


def register_slot_attention() -> None:
    register_attention("squeezer_slots", slot_attention)
