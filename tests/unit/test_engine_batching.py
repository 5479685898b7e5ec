"""Batch selection (engine/batching.py): pure logic, no threads, no event loop."""

from __future__ import annotations

import random
from dataclasses import dataclass

from squeezer.engine.batching import batch_is_full, padded_tokens, select_batch


@dataclass
class It:
    num_tokens: int


def q(*lengths: int) -> list[It]:
    return [It(n) for n in lengths]


def lens(queue: list[It], chosen: list[int]) -> list[int]:
    return [queue[i].num_tokens for i in chosen]


def test_padded_tokens_is_rows_times_longest() -> None:
    assert padded_tokens([3, 10, 5]) == 30
    assert padded_tokens([]) == 0


def test_empty_queue_selects_nothing() -> None:
    assert select_batch([], max_tokens=100, max_requests=4) == []


def test_oldest_is_always_included_even_when_its_length_is_unlike_the_rest() -> None:
    queue = q(90, 5, 5, 5, 5, 5)
    chosen = select_batch(queue, max_tokens=1000, max_requests=3)
    assert chosen[0] == 0
    assert len(chosen) == 3


def test_fills_with_lengths_closest_to_the_oldest_to_cut_padding() -> None:
    queue = q(10, 100, 12, 98, 11, 60)
    chosen = select_batch(queue, max_tokens=10_000, max_requests=3)
    assert chosen == [0, 2, 4]
    assert padded_tokens(lens(queue, chosen)) == 36
    # FIFO would have padded the first three to 100 each.
    assert padded_tokens([10, 100, 12]) == 300


def test_ties_in_length_go_to_the_older_item() -> None:
    queue = q(10, 20, 20, 20)
    assert select_batch(queue, max_tokens=10_000, max_requests=2) == [0, 1]


def test_token_budget_counts_padded_tokens() -> None:
    # Real tokens 10+50 = 60 would fit 100, padded 2*50 = 100 fits too; a third 50 does not.
    queue = q(10, 50, 50, 10)
    chosen = select_batch(queue, max_tokens=100, max_requests=10)
    assert padded_tokens(lens(queue, chosen)) <= 100
    # Closest-first takes the other 10 (padded 20), then one 50 would make 3*50 > 100.
    assert chosen == [0, 3]


def test_budget_skips_a_long_candidate_but_keeps_scanning_for_shorter_ones() -> None:
    # 31 is closer to 20 than 8 is, but 2*31 = 62 > 50; 8 still fits (2*20 = 40).
    queue = q(20, 31, 8)
    assert select_batch(queue, max_tokens=50, max_requests=10) == [0, 2]


def test_request_cap() -> None:
    queue = q(*([4] * 20))
    chosen = select_batch(queue, max_tokens=10_000, max_requests=8)
    assert chosen == list(range(8))


def test_single_oversized_oldest_runs_alone() -> None:
    queue = q(500, 4, 4)
    assert select_batch(queue, max_tokens=100, max_requests=8) == [0]


def test_oversized_item_behind_the_head_waits_until_it_is_oldest() -> None:
    queue = q(4, 500, 4)
    assert select_batch(queue, max_tokens=100, max_requests=8) == [0, 2]
    assert select_batch(q(500, 4), max_tokens=100, max_requests=8) == [0]


def test_window_limits_the_search() -> None:
    queue = q(10, 50, 50, 50, 10)
    assert select_batch(queue, max_tokens=10_000, max_requests=2, window=4) == [0, 1]
    assert select_batch(queue, max_tokens=10_000, max_requests=2) == [0, 4]


def test_batch_is_full() -> None:
    kw = {"max_tokens": 100, "max_requests": 4}
    # Cap reached.
    queue = q(5, 5, 5, 5)
    assert batch_is_full(queue, [0, 1, 2, 3], **kw)
    # Everything queued fits and there is room: not full, waiting could add more.
    queue = q(5, 5)
    assert not batch_is_full(queue, [0, 1], **kw)
    # Something queued was left out: a bound bit.
    queue = q(5, 90)
    assert batch_is_full(queue, [0], **kw)
    # One more row as long as the longest would break the budget.
    queue = q(40, 40)
    assert batch_is_full(queue, [0, 1], **kw)
    assert not batch_is_full(queue, [], **kw)


def test_random_streams_respect_bounds_and_never_starve() -> None:
    """Simulate arrivals between batches: bounds always hold, and an item at position k
    when it arrives is dispatched within k + 1 batches (the head always goes)."""
    rng = random.Random(1234)
    max_tokens, max_requests = 256, 8
    queue: list[tuple[It, int, int]] = []  # (item, id, position at arrival)
    batches_since: dict[int, int] = {}
    next_id = 0
    for _ in range(500):
        for _ in range(rng.randint(0, 6)):
            queue.append((It(rng.choice([4, 8, 30, 64, 120, 300])), next_id, len(queue)))
            batches_since[next_id] = 0
            next_id += 1
        if not queue:
            continue
        chosen = select_batch(
            [e[0] for e in queue], max_tokens=max_tokens, max_requests=max_requests
        )
        assert chosen[0] == 0
        lengths = [queue[i][0].num_tokens for i in chosen]
        assert len(chosen) <= max_requests
        assert len(chosen) == 1 or padded_tokens(lengths) <= max_tokens
        for i in chosen:
            _, item_id, position = queue[i]
            assert batches_since[item_id] <= position
            del batches_since[item_id]
        picked = set(chosen)
        queue = [e for i, e in enumerate(queue) if i not in picked]
        for item_id in batches_since:
            batches_since[item_id] += 1


def test_cost_split_keeps_long_and_short_apart_when_overhead_is_small() -> None:
    queue = q(10, 60, 11, 58, 12, 61)
    # One batch of all six costs 32 + 6 * 61 = 398; short and long apart: 2 * 32 + 3 * 12
    # + 3 * 61 = 283. The oldest (10) goes with its own kind.
    assert lens(
        queue, select_batch(queue, max_tokens=10_000, max_requests=64, overhead_tokens=32)
    ) == [10, 11, 12]
    long_first = q(60, 10, 58, 11)
    chosen = select_batch(long_first, max_tokens=10_000, max_requests=64, overhead_tokens=32)
    assert lens(long_first, chosen) == [60, 58]


def test_cost_split_merges_everything_when_overhead_dominates() -> None:
    queue = q(10, 60, 11, 58)
    chosen = select_batch(queue, max_tokens=10_000, max_requests=64, overhead_tokens=10_000)
    assert chosen == [0, 1, 2, 3]
    assert select_batch(queue, max_tokens=10_000, max_requests=64) == [0, 1, 2, 3]


def test_cost_split_on_random_queues_is_a_contiguous_length_run_holding_the_oldest() -> None:
    rng = random.Random(1)
    for _ in range(200):
        queue = q(*(rng.randint(1, 128) for _ in range(rng.randint(1, 40))))
        whole = select_batch(queue, max_tokens=100_000, max_requests=64)
        split = select_batch(queue, max_tokens=100_000, max_requests=64, overhead_tokens=32)
        assert 0 in split and set(split) <= set(whole)
        inside = lens(queue, split)
        outside = [queue[i].num_tokens for i in whole if i not in split]
        # a run of the sorted lengths: nothing left out lies strictly inside its range
        assert not [n for n in outside if min(inside) < n < max(inside)]
