"""The paged KV cache (``paged_kv.py``) on CPU tensors: the block pool's accounting,
greedy parity with ``generate`` through FlexAttention over the pool, blocks given
back when sequences leave, and a pool too small for everyone making requests wait
in the scheduler's queue until all finish."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from squeezer.backends.base import NewSequence
from squeezer.backends.paged_generation import PagedTorchGenerationBackend
from squeezer.backends.paged_kv import BlockPool
from squeezer.engine import DeviceExecutor
from squeezer.engine.generation import GenerationRequest, GenerationScheduler
from squeezer.errors import OverloadedError
from tests.unit.chunked_driver import drive_chunked
from tests.unit.test_torch_generation import PROMPTS, _alone, _build

#: CPU always; CUDA on a GPU machine (``pytest -m gpu``): the same tests, compiled flex.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ],
    ),
]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("llama"), "llama")


def test_blocks_are_taken_as_sequences_grow_and_given_back() -> None:
    pool = BlockPool(num_blocks=6, block_size=4, max_slots=3, device="cpu")
    pool.cover(0, 5)  # positions 0..4: two blocks
    pool.cover(1, 4)
    assert (pool.tables[0], pool.tables[1], pool.in_use) == ([0, 1], [2], 3)
    pool.cover(0, 8)  # still two blocks
    assert pool.in_use == 3
    assert pool.physical([0, 0, 1], [0, 5, 3]).tolist() == [0, 5, 11]
    assert pool.owner[:12].tolist() == [0] * 8 + [1] * 4
    assert pool.logical[4:8].tolist() == [4, 5, 6, 7]
    with pytest.raises(OverloadedError, match="KV cache pool is full"):
        pool.cover(2, 13)  # four blocks, three free
    pool.free(0)
    assert pool.in_use == 1 and pool.owner[:8].tolist() == [-1] * 8
    pool.cover(2, 13)  # the freed blocks, lowest first
    assert pool.tables[2] == [0, 1, 3, 4]
    # What the scheduler may promise: 24 positions, less a last block's slack per slot.
    assert pool.token_budget(3) == 24 - 3 * 3


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_tokens_match_generate_with_chunked_prompts(tiny_llama: Path, device: str) -> None:
    new = 7
    want = {i: _alone(tiny_llama, p, new) for i, p in enumerate(PROMPTS)}
    backend = PagedTorchGenerationBackend(
        tiny_llama, device=device, max_slots=3, max_len=64, block_size=16, num_blocks=12
    )
    prompts = dict(enumerate(PROMPTS))
    # Three slots for four prompts: the last joins when one leaves, into freed blocks.
    got = drive_chunked(backend, dict(list(prompts.items())[:3]), new, chunk=3)
    assert backend.kv_blocks == (12, 0)  # every block back
    got |= drive_chunked(backend, {3: PROMPTS[3]}, new, chunk=2)
    assert got == want
    assert backend.kv_blocks == (12, 0)


def test_the_cache_is_written_in_place(tiny_llama: Path) -> None:
    backend = PagedTorchGenerationBackend(tiny_llama, max_slots=2, max_len=32, block_size=4)
    pointers = [k.data_ptr() for k in backend.cache.keys]
    first = backend.prefill([NewSequence("a", PROMPTS[0])])[0].token
    token = first
    for _ in range(6):
        token = backend.decode({"a": token})[0].token
    assert [k.data_ptr() for k in backend.cache.keys] == pointers  # no copy, no regrowth
    assert backend.kv_blocks[1] == 3  # 5 prompt + 6 decoded positions in 4-token blocks


@pytest.mark.parametrize("device", DEVICES)
async def test_a_full_pool_makes_requests_wait_and_all_finish(
    tiny_llama: Path, device: str
) -> None:
    new = 6
    backend = PagedTorchGenerationBackend(
        tiny_llama, device=device, max_slots=4, max_len=32, block_size=4, num_blocks=8
    )
    executor = DeviceExecutor(device)
    scheduler = GenerationScheduler(
        backend,
        wake=executor.wake,
        max_batch_total_tokens=backend.token_budget,  # 32 - 4 x 3 = 20 tokens
        max_concurrent_requests=8,
    )
    executor.add_source(scheduler)
    executor.start()
    peak = 0

    async def one(prompt: list[int]) -> list[int]:
        nonlocal peak
        out = []
        async for event in scheduler.submit(GenerationRequest(prompt, new)):
            out.append(event.token)
            peak = max(peak, backend.kv_blocks[1])
        return out

    try:
        got = await asyncio.gather(*(one(p) for p in PROMPTS))
    finally:
        executor.close()
        executor.join(10)
    # 11-15 tokens each: only one or two fit at a time; the others waited.
    assert got == [_alone(tiny_llama, p, new) for p in PROMPTS]
    assert 0 < peak <= 8 and backend.kv_blocks == (8, 0)  # what stays is parked, reclaimable


@pytest.mark.parametrize("device", DEVICES)
async def test_a_cancelled_stream_gives_its_blocks_back_at_the_next_step(
    tiny_llama: Path, device: str
) -> None:
    backend = PagedTorchGenerationBackend(
        tiny_llama, device=device, max_slots=2, max_len=64, block_size=4
    )
    executor = DeviceExecutor(device)
    scheduler = GenerationScheduler(
        backend, wake=executor.wake, max_batch_total_tokens=128, max_concurrent_requests=4
    )
    executor.add_source(scheduler)
    executor.start()
    try:
        seen = 0
        async for _ in scheduler.submit(GenerationRequest(PROMPTS[2], 40)):
            seen += 1
            if seen == 5:
                held, at_cancel = backend.kv_blocks[1], scheduler.steps
                break  # leaving the loop cancels, as a disconnect does
        for _ in range(400):
            if backend.kv_blocks[1] == 0:
                break
            await asyncio.sleep(0.005)
    finally:
        executor.close()
        executor.join(10)
    assert held >= 3 and backend.kv_blocks[1] == 0
    assert scheduler.steps - at_cancel <= 2  # the step under way may finish, then it goes


def test_a_prompt_seen_before_starts_from_its_cached_blocks(tiny_llama: Path) -> None:
    """Prefix caching in the pool: a freed slot's blocks are parked, not cleared; a new
    prompt with the same start reuses them in place, or copies them into its own slot
    from a sequence still running. Tokens equal ``generate`` either way."""
    new = 5
    base = [7, 8, 9, 10, 11, 12, 13, 14, 15, 16]  # 10 tokens: two full blocks of 4 and more
    second = [*base, 40, 41]
    backend = PagedTorchGenerationBackend(tiny_llama, max_slots=2, max_len=64, block_size=4)
    got = drive_chunked(backend, {"a": base}, new, chunk=64)
    assert backend.table.cached_tokens == 0
    # "b" extends "a"'s prompt: "a"'s parked slot holds 9 of its tokens (its prompt but
    # the last, whose logits chose a token): reused in place.
    got |= drive_chunked(backend, {"b": second}, new, chunk=64)
    assert backend.table.cached_tokens == len(base)
    # "c" and "d" run together; "d" starts like "c" and is admitted while "c" decodes:
    # copied from "c"'s slot into its own.
    prompts = {"c": [50, 51, 52, 53, 54, 55, 56, 57, 58], "d": [50, 51, 52, 53, 54, 55, 60]}
    before = backend.table.cached_tokens
    got |= drive_chunked(backend, prompts, new, chunk=64)
    assert backend.table.cached_tokens - before == 6
    want = {k: _alone(tiny_llama, p, new) for k, p in {"a": base, "b": second, **prompts}.items()}
    assert got == want
    assert backend.kv_blocks[1] == 0  # all parked


def test_parked_blocks_are_taken_back_when_a_running_sequence_needs_them(
    tiny_llama: Path,
) -> None:
    backend = PagedTorchGenerationBackend(
        tiny_llama, max_slots=2, max_len=32, block_size=4, num_blocks=5
    )
    first = drive_chunked(backend, {"a": PROMPTS[2]}, 6, chunk=64)  # 15 tokens: 4 blocks
    assert backend.pool.in_use == 0 and len(backend.pool.tables[0]) == 4  # parked
    other = [90, 91, 92]  # shares nothing: takes the other slot, needs 3 blocks
    got = drive_chunked(backend, {"b": other}, 6, chunk=64)
    assert got == {"b": _alone(tiny_llama, other, 6)} and first["a"] == _alone(
        tiny_llama, PROMPTS[2], 6
    )
    # Slot 0's cache was reclaimed for "b": it no longer claims to hold "a"'s prompt.
    assert backend.table.common_prefix(0, PROMPTS[2]) == 0


@pytest.mark.parametrize("block_size", [16, 48, 256])
def test_the_block_mask_lists_every_pool_block_a_query_may_see(block_size: int) -> None:
    """Eager FlexAttention (CPU) applies only the mask function, the fused kernel
    (CUDA) only visits listed blocks: so the lists are checked here against the exact
    block-level mask, which they must cover."""
    from torch.nn.attention.flex_attention import create_block_mask

    from squeezer.backends.paged_kv import MASK_BLOCK, PagedPlan

    pool = BlockPool(-(-1300 // block_size) + 2, block_size, max_slots=4, device="cpu")
    lengths = {0: 300, 1: 5, 2: 700}  # slot 3 is empty
    for slot, n in lengths.items():
        pool.cover(slot, n)
    pool.free(1)
    pool.cover(1, 90)  # blocks freed and taken again: out of order in the pool
    lengths[1] = 90
    # 200 decode-like and chunk-like queries, crossing several blocks of 128 queries.
    slots = [s for s, n in lengths.items() for _ in range(min(n, 70))]
    slots += [0] * (200 - len(slots))
    positions = [lengths[s] - 1 - (i % 7) for i, s in enumerate(slots)]
    plan = PagedPlan.build(pool, slots, positions)
    q_slot, q_pos = torch.tensor(slots), torch.tensor(positions)

    def exact(b, h, q, k):  # type: ignore[no-untyped-def]
        return (pool.owner[k] == q_slot[q]) & (pool.logical[k] <= q_pos[q])

    total = pool.num_blocks * block_size
    want = create_block_mask(exact, None, None, len(slots), total, device="cpu")
    ours, needed = plan.block_mask.to_dense(), want.to_dense()
    assert ours.shape == needed.shape == (1, 1, -(-200 // MASK_BLOCK), -(-total // MASK_BLOCK))
    assert bool((ours >= needed).all())  # nothing a query may see is left out
