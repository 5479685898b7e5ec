"""A paged KV cache: fixed-size blocks from one pool, a block table per sequence.

The slot cache (``torch_generation.SlotCache``) gives every sequence ``max_len``
positions up front: simple, and right on a CPU, where memory is plentiful and slots
are few. On a GPU the cache is what bounds the batch: 256 sequences of 2,048 tokens
would reserve 512 K positions while most sequences are short. Here the cache is one
pool of ``num_blocks`` blocks of ``block_size`` positions, allocated once; a sequence
takes blocks as it grows and gives them back when it leaves (vLLM's PagedAttention).

Attention reads the pool in place, with no gather of a sequence's blocks into a
contiguous copy: the pool is one long key/value sequence, and FlexAttention's mask says
which positions a query may see (those its own sequence wrote, up to its position).
Its block mask skips pool blocks no query of a step owns; compiled (on CUDA) it is
one fused kernel. Eager (CPU, tests) it computes the same thing over the whole pool.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from squeezer.backends.transformers_hooks import StepCache, register_attention
from squeezer.errors import OverloadedError

#: FlexAttention's block size over queries and pool positions: the fused kernel's tiles
#: must divide it, so it stays at flex's default whatever ``--kv-block-size`` is.
MASK_BLOCK = 128


class BlockPool:
    """Which pool block holds which positions of which slot's sequence.

    ``owner`` and ``logical`` map every pool position to its slot (-1: free) and its
    position in that sequence: the attention mask reads them, so they are tensors on
    the cache's device, updated when blocks change hands (not per step)."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        max_slots: int,
        device: torch.device | str,
        on_evict: Callable[[int], None] = lambda slot: None,
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"a pool needs blocks: {num_blocks} x {block_size}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out the lowest
        self.tables: list[list[int]] = [[] for _ in range(max_slots)]
        #: Slots whose sequence left, their blocks kept for a later prompt with the same
        #: prefix (prefix caching), oldest first: reclaimed when blocks run short.
        self._parked: dict[int, None] = {}
        self._on_evict = on_evict
        positions = num_blocks * block_size
        self.owner = torch.full((positions,), -1, dtype=torch.long, device=device)
        self.logical = torch.zeros(positions, dtype=torch.long, device=device)

    @property
    def in_use(self) -> int:
        """Blocks held by running sequences (kept ones of parked slots not counted:
        they are taken back as soon as someone needs them)."""
        parked = sum(len(self.tables[s]) for s in self._parked)
        return self.num_blocks - len(self._free) - parked

    def park(self, slot: int) -> None:
        """``slot``'s sequence left; its blocks stay until they are needed."""
        self._parked.pop(slot, None)
        self._parked[slot] = None

    def claim(self, slot: int, keep: int) -> None:
        """A new sequence takes ``slot``, keeping blocks for its first ``keep`` positions
        (a prefix found there), the rest go back."""
        self._parked.pop(slot, None)
        table = self.tables[slot]
        kept = -(-keep // self.block_size)
        self._release(table[kept:])
        del table[kept:]

    def token_budget(self, max_slots: int) -> int:
        """Tokens that always fit, however they are split among ``max_slots``
        sequences (each may leave up to ``block_size - 1`` positions of its last block
        unused): what the scheduler may promise (prompt + max new tokens, summed)."""
        return max(0, self.num_blocks * self.block_size - max_slots * (self.block_size - 1))

    def cover(self, slot: int, tokens: int, keep: int | None = None) -> None:
        """Give ``slot`` blocks for its positions ``0..tokens-1``, taking back parked
        slots' blocks (oldest first, never ``keep``'s) when the free ones run short."""
        table = self.tables[slot]
        needed = -(-tokens // self.block_size) - len(table)
        for parked in list(self._parked):
            if needed <= len(self._free):
                break
            if parked != keep:
                self.free(parked)
                self._on_evict(parked)
        if needed > len(self._free):
            raise OverloadedError(
                f"the KV cache pool is full ({self.num_blocks} blocks of {self.block_size})"
            )
        for _ in range(needed):
            block = self._free.pop()
            start = block * self.block_size
            first = len(table) * self.block_size
            self.owner[start : start + self.block_size] = slot
            self.logical[start : start + self.block_size] = torch.arange(
                first, first + self.block_size, device=self.logical.device
            )
            table.append(block)

    def free(self, slot: int) -> None:
        self._parked.pop(slot, None)
        self._release(self.tables[slot])
        self.tables[slot] = []

    def _release(self, blocks: Sequence[int]) -> None:
        for block in blocks:
            start = block * self.block_size
            self.owner[start : start + self.block_size] = -1
            self._free.append(block)
        self._free.sort(reverse=True)

    def mask_blocks(self, slot: int) -> set[int]:
        """The attention mask's blocks (``MASK_BLOCK`` pool positions each) that hold
        ``slot``'s positions."""
        bs, out = self.block_size, set[int]()
        for block in self.tables[slot]:
            out.update(range(block * bs // MASK_BLOCK, ((block + 1) * bs - 1) // MASK_BLOCK + 1))
        return out

    def physical(self, slots: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """Pool position of each (slot, position)."""
        bs = self.block_size
        index = [
            self.tables[s][p // bs] * bs + p % bs for s, p in zip(slots, positions, strict=True)
        ]
        return torch.tensor(index, dtype=torch.long, device=self.owner.device)


@dataclass(frozen=True, slots=True)
class PagedPlan:
    """Where a step's flat tokens go in the pool, and who may see what."""

    physical: torch.Tensor  # (T,) pool position each token's key and value is written to
    positions: torch.Tensor  # (T,) each token's position in its sequence
    #: FlexAttention's mask over (T queries) x (pool positions).
    block_mask: Any

    @classmethod
    def build(cls, pool: BlockPool, slots: Sequence[int], positions: Sequence[int]) -> PagedPlan:
        from torch.nn.attention.flex_attention import BlockMask

        device = pool.owner.device
        q_slot = torch.tensor(slots, dtype=torch.long, device=device)
        q_pos = torch.tensor(positions, dtype=torch.long, device=device)
        owner, logical = pool.owner, pool.logical

        def mask_mod(b: Any, h: Any, q: Any, k: Any) -> Any:
            return (owner[k] == q_slot[q]) & (logical[k] <= q_pos[q])

        # Which mask blocks each block of queries may touch, from the block tables on
        # the host: not create_block_mask, which evaluates mask_mod over every (query,
        # pool position) pair, every step. Mask blocks are MASK_BLOCK positions wide
        # whatever the pool's block size (the fused kernel's tiles must divide them).
        kv_blocks = {slot: pool.mask_blocks(slot) for slot in set(slots)}
        per_q_block = [
            sorted(set().union(*(kv_blocks[s] for s in set(slots[i : i + MASK_BLOCK]))))
            for i in range(0, len(slots), MASK_BLOCK)
        ]
        # flex's layout: one row per block of queries, as wide as the pool has blocks.
        width = -(-owner.numel() // MASK_BLOCK)
        indices = torch.zeros((1, 1, len(per_q_block), width), dtype=torch.int32)
        for i, blocks in enumerate(per_q_block):
            indices[0, 0, i, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
        counts = torch.tensor([[[len(b) for b in per_q_block]]], dtype=torch.int32)
        block_mask = BlockMask.from_kv_blocks(
            counts.to(device),
            indices.to(device),
            BLOCK_SIZE=MASK_BLOCK,
            mask_mod=mask_mod,
            seq_lengths=(len(slots), owner.numel()),
        )
        return cls(pool.physical(slots, positions), q_pos, block_mask)


def copy_prefix(cache: PagedCache, source: int, target: int, length: int) -> None:
    """Positions ``0..length-1`` of ``source``'s keys and values into ``target``'s
    blocks (covered already), every layer: a prompt that starts as another did."""
    positions = list(range(length))
    src = cache.pool.physical([source] * length, positions)
    dst = cache.pool.physical([target] * length, positions)
    for buffers in (cache.keys, cache.values):
        for layer in buffers:
            layer[0, :, dst] = layer[0, :, src]


class PagedCache(StepCache):
    """Keys and values of every layer in one pool each: (1, kv_heads, blocks x block
    size, head_dim), written at each token's pool position."""

    def __init__(
        self,
        layers: int,
        pool: BlockPool,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (1, kv_heads, pool.num_blocks * pool.block_size, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.pool = pool

    def store(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._plan is not None, "begin() names where the step's tokens go"
        physical = self._plan.physical
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[0, :, physical] = key_states[0].to(keys.dtype)
        values[0, :, physical] = value_states[0].to(values.dtype)
        return keys, values


_FLEX: Callable[..., torch.Tensor] | None = None


def _flex(device_type: str) -> Callable[..., torch.Tensor]:
    """flex_attention, compiled once on CUDA (a fused kernel that skips masked
    blocks); eager elsewhere (the same result, over the whole pool)."""
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        if device_type == "cuda":
            _FLEX = torch.compile(flex_attention)
        else:  # known and documented (the slot cache is the CPU default): not a warning
            warnings.filterwarnings(
                "ignore",
                message="flex_attention called without torch.compile",
                category=UserWarning,
            )
            _FLEX = flex_attention
    return _FLEX


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    *,
    paged_plan: PagedPlan,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A step's flat tokens over the layer's whole pool, as a ``transformers``
    attention function (registered as ``squeezer_paged``): (1, heads, T, head_dim)
    queries, (1, kv_heads, pool, head_dim) keys and values, grouped heads matched
    inside FlexAttention."""
    flex = _flex(query.device.type)
    out = flex(
        query,
        key,
        value,
        block_mask=paged_plan.block_mask,
        scale=scaling,
        enable_gqa=True,
    )
    return out.transpose(1, 2), None


def register_paged_attention() -> None:
    register_attention("squeezer_paged", paged_attention)
