"""The embedding task alone: tokenization rules, collation, pooling, finishing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from squeezer.errors import EmptyInputError, InputTooLongError, TokenizerError
from squeezer.models import read_folder
from squeezer.tasks import (
    EmbedRequest,
    EmbedTask,
    EncoderItem,
    EncoderRunner,
    Head,
    PooledHead,
    TextTokenizer,
    TokenVectorsHead,
)
from squeezer.types import TokenizedInput, TruncationDirection


@pytest.fixture(scope="module")
def task(tiny_bert: Path) -> EmbedTask:
    folder = read_folder(tiny_bert)
    return EmbedTask(folder, TextTokenizer(folder.tokenizer_file, folder.max_input_length))


def test_truncation_only_when_asked_and_in_the_asked_direction(task: EmbedTask) -> None:
    tok = task.tokenizer
    text = "alpha beta gamma delta " * 40
    with pytest.raises(InputTooLongError, match="at most 64"):
        tok.encode([text])
    right = tok.encode([text], truncate=True)[0]
    left = tok.encode([text], truncate=True, direction=TruncationDirection.LEFT)[0]
    assert right.num_tokens == left.num_tokens == 64 and right.truncated
    cls, sep = tok._plain.token_to_id("[CLS]"), tok._plain.token_to_id("[SEP]")
    for enc in (right, left):  # special tokens survive truncation
        assert enc.ids[0] == cls and enc.ids[-1] == sep
    assert not np.array_equal(right.ids, left.ids)


def test_token_ids_are_checked_and_truncated(task: EmbedTask) -> None:
    tok = task.tokenizer
    with pytest.raises(TokenizerError, match="vocabulary"):
        tok.from_ids([[1, tok.vocab_size]])
    with pytest.raises(EmptyInputError):
        tok.from_ids([[]])
    ids = list(range(5, 105))
    assert tok.from_ids([ids], truncate=True)[0].ids.tolist() == ids[:64]
    left = tok.from_ids([ids], truncate=True, direction=TruncationDirection.LEFT)[0]
    assert left.ids.tolist() == ids[-64:]


def test_mixed_input_kinds_are_refused(task: EmbedTask) -> None:
    with pytest.raises(TokenizerError, match="all strings"):
        task.prepare(EmbedRequest(inputs=["a", [1, 2]]))  # type: ignore[list-item]


def _item(ids: list[int], head: Head | None = None) -> EncoderItem:
    tokens = TokenizedInput(ids=np.asarray(ids, dtype=np.int64))
    return EncoderItem(tokens, head or PooledHead("mean"))


def test_collate_pads_right_with_a_mask() -> None:
    arrays = EncoderRunner(pad_id=0).collate([_item([5, 6, 7]), _item([8])])
    assert arrays["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert arrays["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert arrays["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_pooling_ignores_padding(pooling: str) -> None:
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 4, 3)).astype(np.float32)
    head = PooledHead(pooling)
    items = [_item([1, 2, 3, 4], head), _item([1, 2], head)]
    out = EncoderRunner().split({"last_hidden_state": hidden}, items)
    short = hidden[1, :2]
    want = {"mean": short.mean(0), "cls": short[0], "last": short[-1]}[pooling]
    assert np.allclose(out[1], want, atol=1e-6)


def test_unpooled_items_get_their_own_tokens_only() -> None:
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    head = TokenVectorsHead()
    out = EncoderRunner().split(
        {"last_hidden_state": hidden}, [_item([1, 2, 3], head), _item([1], PooledHead("cls"))]
    )
    assert out[0].shape == (3, 2) and np.array_equal(out[1], hidden[1, 0])


def test_finish_normalizes_and_cuts_dimensions(task: EmbedTask) -> None:
    req = EmbedRequest(inputs=["a"], dimensions=4)
    items = task.prepare(req)
    result = task.finish(req, items, [np.arange(32, dtype=np.float32) + 1])
    vec = result.embeddings[0]
    assert vec.shape == (4,) and np.isclose(np.linalg.norm(vec), 1.0)
    assert result.prompt_tokens == items[0].num_tokens
