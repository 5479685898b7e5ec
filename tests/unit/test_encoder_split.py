"""A batch's items are post-processed once per head value, not once per head object."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from squeezer.tasks import EncoderItem, EncoderRunner
from squeezer.tasks.embed import PooledHead
from squeezer.types import TokenizedInput


def _item(head: PooledHead, ids: list[int]) -> EncoderItem:
    arr = np.asarray(ids, dtype=np.int64)
    tokens = TokenizedInput(ids=arr)
    return EncoderItem(tokens, head)


def test_equal_heads_from_other_processes_pool_in_one_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under --api-workers every request's head arrives as its own unpickled copy;
    grouped by identity, a batch of 8 requests pooled in 8 calls."""
    head = PooledHead("mean")
    copies = [pickle.loads(pickle.dumps(head)) for _ in range(8)]
    assert all(c == head and c is not head for c in copies)
    calls = []
    take = PooledHead.take

    def counting(self: PooledHead, outputs: dict, batch: list) -> list:
        calls.append(len(batch))
        return take(self, outputs, batch)

    monkeypatch.setattr(PooledHead, "take", counting)
    items = [_item(c, [1, 2, 3][: i % 3 + 1]) for i, c in enumerate(copies)]
    hidden = np.random.default_rng(0).standard_normal((8, 3, 4)).astype(np.float32)
    results = EncoderRunner(0).split({"last_hidden_state": hidden}, items)
    assert calls == [8]
    for i, vec in enumerate(results):
        np.testing.assert_allclose(vec, hidden[i, : i % 3 + 1].mean(axis=0), rtol=1e-6)
    assert PooledHead("cls") != head  # other pooling: another group
