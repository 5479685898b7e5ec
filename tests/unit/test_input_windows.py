"""Long inputs are split into windows the request pays for: counted before they are
made, against --max-input-windows, with a 422 that names the limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from squeezer.errors import InvalidRequestError
from squeezer.models import read_folder
from squeezer.tasks.question_answering import QARequest, QATask
from squeezer.tasks.token_classify import TokenClassifyRequest, TokenClassifyTask
from squeezer.tasks.tokenizer import TextTokenizer
from tests.unit.test_question_answering import LONG

HUGE = " ".join([LONG] * 2000)  # ~2 MB of context


def _tokenizer(path: Path, windows: int) -> TextTokenizer:
    folder = read_folder(path)
    return TextTokenizer(folder.tokenizer_file, folder.max_input_length, max_windows=windows)


def test_windows_are_counted_exactly_before_they_are_made(tiny_qa: Path) -> None:
    exact = len(_tokenizer(tiny_qa, 10**6).windows("q", LONG, stride=16, max_length=64))
    assert exact > 3
    assert len(_tokenizer(tiny_qa, exact).windows("q", LONG, stride=16, max_length=64)) == exact
    with pytest.raises(InvalidRequestError, match=rf"needs {exact} windows of 64 tokens"):
        _tokenizer(tiny_qa, exact - 1).windows("q", LONG, stride=16, max_length=64)


def test_a_huge_context_at_a_wide_stride_is_a_422_naming_the_limit(tiny_qa: Path) -> None:
    """One 2 MB context with a stride of nearly a window was ~500k engine items."""
    folder = read_folder(tiny_qa)
    task = QATask(folder, _tokenizer(tiny_qa, 512))
    with pytest.raises(InvalidRequestError, match=r"--max-input-windows") as e:
        task.prepare(QARequest("What is it?", HUGE, doc_stride=100, max_seq_len=128))
    assert e.value.param == "context" and "at most 512 per request" in e.value.message


def test_token_classification_counts_windows_over_all_its_inputs(tiny_ner: Path) -> None:
    folder = read_folder(tiny_ner)
    one = len(
        TokenClassifyTask(folder, _tokenizer(tiny_ner, 10**6)).prepare(
            TokenClassifyRequest([LONG], stride=8, aggregation_strategy="simple")
        )
    )
    task = TokenClassifyTask(folder, _tokenizer(tiny_ner, 3 * one))
    three = TokenClassifyRequest([LONG] * 3, stride=8, aggregation_strategy="simple")
    assert len(task.prepare(three)) == 3 * one
    four = TokenClassifyRequest([LONG] * 4, stride=8, aggregation_strategy="simple")
    with pytest.raises(InvalidRequestError, match=rf"needs {4 * one} windows"):
        task.prepare(four)
