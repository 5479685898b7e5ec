"""The torch generation backend over a paged KV cache (``paged_kv.py``): the model,
forward pass and sampling of ``torch_generation``, with the cache's positions in
blocks of a shared pool instead of a slot per sequence, so memory follows the tokens
actually held (the GPU's layout)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from squeezer.backends.base import NewSequence, SeqId
from squeezer.backends.device import torch_dtype
from squeezer.backends.generation_state import Feed
from squeezer.backends.paged_kv import (
    BlockPool,
    PagedCache,
    PagedPlan,
    copy_prefix,
    register_paged_attention,
)
from squeezer.backends.torch_generation import TorchGenerationBackend
from squeezer.errors import ModelLoadError, OverloadedError


class PagedTorchGenerationBackend(TorchGenerationBackend):
    """The same model and step over a paged KV cache (``paged_kv.py``): a pool of
    ``num_blocks`` blocks of ``block_size`` positions, taken as sequences grow.

    ``num_blocks`` None: on CUDA, what fits in ``memory_fraction`` of the card after
    the weights and the measured activation peak of a ``prefill_tokens`` step; on CPU,
    as many positions as the slot cache would hold. The scheduler is told
    ``token_budget``, what always fits, so a request waits in its queue while the pool
    cannot hold it, and a step never runs out of blocks."""

    attention = "squeezer_paged"
    compact = False  # blocks, not slot prefixes: nothing has to move

    def __init__(
        self,
        path: Path,
        *,
        block_size: int = 16,
        num_blocks: int | None = None,
        memory_fraction: float = 0.9,
        prefill_tokens: int = 4096,
        **model: Any,
    ) -> None:
        """``model``: ``TorchGenerationBackend``'s own arguments (device, dtype, slots,
        length, quantize)."""
        register_paged_attention()
        self.block_size, self._num_blocks = block_size, num_blocks
        self._memory_fraction, self._prefill_tokens = memory_fraction, prefill_tokens
        super().__init__(path, **model)

    def _new_cache(self, layers: int, kv_heads: int, head_dim: int) -> Any:
        blocks = self._num_blocks
        if blocks is None and torch.device(self.device).type == "cuda":
            element = torch.empty((), dtype=torch_dtype(self.dtype)).element_size()
            per_block = 2 * layers * kv_heads * self.block_size * head_dim * element
            blocks = self._blocks_that_fit(per_block)
        elif blocks is None:
            blocks = -(-self.max_slots * self.max_len // self.block_size)
        self.pool = BlockPool(
            blocks, self.block_size, self.max_slots, self.device, on_evict=self._evicted
        )
        return PagedCache(
            layers, self.pool, kv_heads, head_dim, torch_dtype(self.dtype), self.device
        )

    def _blocks_that_fit(self, per_block: int) -> int:
        """Blocks of the card's ``memory_fraction`` left after the weights and the
        activation peak of one ``prefill_tokens`` forward, measured (with SDPA: the
        pool does not exist yet)."""
        index = torch.device(self.device).index or 0
        torch.cuda.reset_peak_memory_stats(index)
        weights = torch.cuda.memory_allocated(index)
        self.model.set_attn_implementation("sdpa")
        try:
            with torch.inference_mode():
                ids = torch.zeros((1, self._prefill_tokens), dtype=torch.long, device=self.device)
                self._head(self._decoder(input_ids=ids, use_cache=False).last_hidden_state[0, -1:])
        finally:
            self.model.set_attn_implementation(self.attention)
        peak = torch.cuda.max_memory_allocated(index) - weights
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(index).total_memory
        room = total * self._memory_fraction - weights - peak
        if room < per_block:
            raise ModelLoadError(
                f"no room for a KV cache: {total * self._memory_fraction / 2**30:.1f} GiB "
                f"allowed, {weights / 2**30:.1f} GiB of weights, {peak / 2**30:.1f} GiB of "
                f"activations for a {self._prefill_tokens}-token step"
            )
        return int(room // per_block)

    @property
    def token_budget(self) -> int:
        return self.pool.token_budget(self.max_slots)

    @property
    def kv_blocks(self) -> tuple[int, int]:
        """(blocks in the pool, blocks held by sequences)."""
        return self.pool.num_blocks, self.pool.in_use

    def _evicted(self, slot: int) -> None:
        self.table.forget(slot)

    def _pick_slots(self, new: Sequence[NewSequence]) -> list[int] | None:
        return self.table.pick_slots(new)  # the free slot holding the longest prefix

    def _take_prefix(self, source: int, target: int, length: int) -> int:
        """Kept in place when ``target`` holds the prefix itself, else copied from the
        slot that does (running, or parked after its sequence left) into its blocks."""
        self.pool.claim(target, length if source == target else 0)
        if length and source != target:
            try:
                self.pool.cover(target, length, keep=source)
            except OverloadedError:  # only the source's own blocks were left: recompute
                return 0
            copy_prefix(self.cache, source, target, length)
        return length

    def _plan(
        self,
        rows: torch.Tensor,
        start: torch.Tensor,
        spans: Sequence[tuple[int, int, int]],
        feeds: Sequence[Feed],
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        placed = [*spans, *((f.slot, f.start, f.chunk.end) for f in feeds)]
        slots, positions = rows.tolist(), start.tolist()
        for slot, first, end in placed:
            slots += [slot] * (end - first)
            positions += range(first, end)
        for slot, last in zip(rows.tolist(), start.tolist(), strict=True):
            self.pool.cover(slot, last + 1)
        for slot, _, end in placed:
            self.pool.cover(slot, end)
        plan = PagedPlan.build(self.pool, slots, positions)
        self.cache.begin(plan)
        return plan.positions, {"paged_plan": plan}

    def free(self, seq: SeqId) -> None:
        """The slot's blocks stay (parked) for a later prompt with the same prefix."""
        self.pool.park(self.table.slot(seq))
        self.table.release(seq)
