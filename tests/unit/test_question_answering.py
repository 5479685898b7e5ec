"""Extractive QA against transformers 4's pipeline rule, recomputed by brute force.

transformers 5 has no question-answering pipeline, so the reference below rebuilds
what v4.57's did, from ``transformers`` tokenization and model outputs alone: windows
from ``truncation="only_second"`` with overflow and stride, softmax over the context
and CLS, every span (start <= end < start + max_answer_len) scored, the best
``top_k`` (``2 * top_k + 10`` when aligning) kept per window, widened to words with
``Encoding.word_to_chars``, answers with the same text merged by summing, and the
CLS "no answer" added last.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from squeezer.backends.torch_backend import TorchBackend
from squeezer.errors import EmptyInputError, InvalidRequestError
from squeezer.models import read_folder
from squeezer.tasks import EncoderItem, EncoderRunner, TextTokenizer
from squeezer.tasks.question_answering import QAAnswer, QARequest, QATask, QAWindow
from tests.tiny_models import corpus

SENTENCES = corpus(60)
#: Contexts that fit one window with their question (about 100 tokens each).
SHORT = [" ".join(SENTENCES[i : i + 3]) for i in (2, 9, 10)]
LONG = " ".join(SENTENCES[:14])
QUESTIONS = ["What does the statement do?", "Which object is returned?", "when is it raised"]

Answer = tuple[float, int, int, str]


@pytest.fixture(scope="module")
def task(tiny_qa: Path) -> QATask:
    folder = read_folder(tiny_qa)
    return QATask(folder, TextTokenizer(folder.tokenizer_file, folder.max_input_length))


@pytest.fixture(scope="module")
def backend(tiny_qa: Path) -> TorchBackend:
    return TorchBackend(tiny_qa)


@pytest.fixture(scope="module")
def reference_model(tiny_qa: Path) -> tuple[Any, Any]:
    tok = AutoTokenizer.from_pretrained(tiny_qa)
    model = AutoModelForQuestionAnswering.from_pretrained(tiny_qa).eval()
    return tok, model


def answer(task: QATask, backend: TorchBackend, request: QARequest) -> list[QAAnswer]:
    return run(task, backend, request)[1]


def run(
    task: QATask, backend: TorchBackend, request: QARequest
) -> tuple[list[EncoderItem], list[QAAnswer]]:
    runner = EncoderRunner(token_type_ids=task.folder.token_type_ids)
    items = task.prepare(request)
    outputs = backend.forward(runner.collate(items), runner.outputs(items))
    return items, task.finish(request, items, runner.split(outputs, items))


def _probabilities(logits: np.ndarray, allowed: list[int]) -> np.ndarray:
    probs = np.zeros(len(logits))
    exp = np.exp(logits[allowed] - logits[allowed].max())
    probs[allowed] = exp / exp.sum()
    return probs


def reference(
    ref: tuple[Any, Any],
    question: str,
    context: str,
    *,
    top_k: int = 1,
    max_answer_len: int = 15,
    doc_stride: int | None = None,
    handle_impossible_answer: bool = False,
    align_to_words: bool = True,
) -> list[Answer]:
    tok, model = ref
    max_seq_len = min(tok.model_max_length, 384)
    stride = min(max_seq_len // 2, 128) if doc_stride is None else doc_stride
    enc = tok(
        question,
        context,
        truncation="only_second",
        max_length=max_seq_len,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=True,
    )
    keep = 2 * top_k + 10 if align_to_words else top_k
    answers: list[list[Any]] = []
    seen: dict[str, list[Any]] = {}
    null = 1_000_000.0
    for i, ids in enumerate(enc["input_ids"]):
        seq = enc.sequence_ids(i)
        with torch.inference_mode():  # the pipeline fed the inputs its tokenizer names
            out = model(**{k: torch.tensor([enc[k][i]]) for k in tok.model_input_names})
        allowed = [j for j, s in enumerate(seq) if s == 1 or ids[j] == tok.cls_token_id]
        p_start = _probabilities(out.start_logits[0].double().numpy(), allowed)
        p_end = _probabilities(out.end_logits[0].double().numpy(), allowed)
        null = min(null, p_start[0] * p_end[0])
        in_context = [j for j, s in enumerate(seq) if s == 1]
        spans = [
            (p_start[s] * p_end[e], s, e)
            for s in in_context
            for e in in_context
            if s <= e < s + max_answer_len
        ]
        spans.sort(key=lambda x: -x[0])
        encoding = enc.encodings[i]
        for score, s, e in spans[:keep]:
            if align_to_words:
                begin = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1)[0]
                end = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1)[1]
            else:
                begin, end = enc["offset_mapping"][i][s][0], enc["offset_mapping"][i][e][1]
            text = context[begin:end]
            if text.lower() in seen:  # the first answer with this text takes the score
                seen[text.lower()][0] += score
            else:
                seen[text.lower()] = [score, begin, end, text]
                answers.append(seen[text.lower()])
    if handle_impossible_answer:
        answers.append([null, 0, 0, ""])
    answers.sort(key=lambda a: -a[0])
    return [tuple(a) for a in answers[:top_k]]  # type: ignore[misc]


def assert_same(got: list[QAAnswer], want: list[Answer]) -> None:
    assert [(a.start, a.end, a.answer) for a in got] == [w[1:] for w in want]
    for a, w in zip(got, want, strict=True):
        assert a.score == pytest.approx(w[0], rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("top_k", [1, 3])
@pytest.mark.parametrize("align_to_words", [True, False])
def test_answers_match_the_transformers_rule(
    task: QATask,
    backend: TorchBackend,
    reference_model: tuple[Any, Any],
    top_k: int,
    align_to_words: bool,
) -> None:
    for question, context in zip(QUESTIONS, SHORT, strict=True):
        request = QARequest(question, context, top_k=top_k, align_to_words=align_to_words)
        items, got = run(task, backend, request)
        assert len(items) == 1
        want = reference(
            reference_model, question, context, top_k=top_k, align_to_words=align_to_words
        )
        assert len(got) == top_k
        assert_same(got, want)
        assert all(context[a.start : a.end] == a.answer for a in got)


def test_a_long_context_is_read_in_overlapping_windows(
    task: QATask, backend: TorchBackend, reference_model: tuple[Any, Any]
) -> None:
    for stride, top_k, length in [(16, 1, 15), (16, 3, 4), (None, 3, 15)]:
        request = QARequest(
            QUESTIONS[0], LONG, top_k=top_k, doc_stride=stride, max_answer_len=length
        )
        items, got = run(task, backend, request)
        assert len(items) >= 3 and all(it.num_tokens <= 128 for it in items)
        want = reference(
            reference_model,
            QUESTIONS[0],
            LONG,
            top_k=top_k,
            doc_stride=stride,
            max_answer_len=length,
        )
        assert_same(got, want)
    # doc_stride is the overlap: the more tokens windows share, the more windows.
    assert len(task.prepare(QARequest("q", LONG, doc_stride=100))) > len(
        task.prepare(QARequest("q", LONG, doc_stride=16))
    )


@pytest.mark.parametrize("top_k", [1, 3])
def test_the_impossible_answer_competes_when_asked_for(
    task: QATask, backend: TorchBackend, reference_model: tuple[Any, Any], top_k: int
) -> None:
    for context, stride in [(SHORT[1], None), (LONG, 32)]:
        request = QARequest(
            QUESTIONS[1], context, top_k=top_k, doc_stride=stride, handle_impossible_answer=True
        )
        want = reference(
            reference_model,
            QUESTIONS[1],
            context,
            top_k=top_k,
            doc_stride=stride,
            handle_impossible_answer=True,
        )
        assert_same(answer(task, backend, request), want)


def test_every_answer_when_top_k_exceeds_them(
    task: QATask, backend: TorchBackend, reference_model: tuple[Any, Any]
) -> None:
    """All candidates come back, merged by text, the null one once; compared by text
    because the order deep in the tail rests on float noise."""
    for impossible in (True, False):
        request = QARequest(
            QUESTIONS[1], SHORT[1], top_k=10_000, handle_impossible_answer=impossible
        )
        got = answer(task, backend, request)
        want = reference(
            reference_model,
            QUESTIONS[1],
            SHORT[1],
            top_k=10_000,
            handle_impossible_answer=impossible,
        )
        assert len(got) == len(want) > 100
        assert [a.score for a in got] == sorted((a.score for a in got), reverse=True)
        expected = {w[3].lower(): w for w in want}
        for a in got:
            score, start, end, text = expected[a.answer.lower()]
            assert (a.start, a.end, a.answer) == (start, end, text)
            assert a.score == pytest.approx(score, rel=1e-4, abs=1e-9)
        assert sum(a.answer == "" for a in got) == impossible


def test_aligned_answers_hold_whole_words(task: QATask, backend: TorchBackend) -> None:
    for question, context in zip(QUESTIONS, SHORT, strict=True):
        for a in answer(task, backend, QARequest(question, context, top_k=10)):
            before, first = context[a.start - 1 : a.start], context[a.start]
            last, after = context[a.end - 1], context[a.end : a.end + 1]
            assert not (before.isalnum() and first.isalnum()), a
            assert not (last.isalnum() and after.isalnum()), a


def test_windows_carry_their_logits_and_character_spans(
    task: QATask, backend: TorchBackend
) -> None:
    request = QARequest(QUESTIONS[2], LONG, doc_stride=20, align_to_words=False)
    items = task.prepare(request)
    runner = EncoderRunner()
    results = runner.split(backend.forward(runner.collate(items), runner.outputs(items)), items)
    for item, (start, end) in zip(items, results, strict=True):
        assert isinstance(item, QAWindow)
        assert start.shape == end.shape == (item.num_tokens,)
        assert item.tokens.sequence_ids is not None and item.tokens.offsets is not None
        context = [i for i, s in enumerate(item.tokens.sequence_ids) if s == 1]
        assert (item.first, item.stop) == (context[0], context[-1] + 1)
        assert item.chars.tolist() == [list(o) for o in item.tokens.offsets[item.first : item.stop]]
    shared = [w.tokens.ids[w.first : w.stop] for w in items if isinstance(w, QAWindow)]
    for left, right in itertools.pairwise(shared):
        assert left[-20:].tolist() == right[:20].tolist()


def test_a_long_question_is_refused_not_cut_and_the_default_stride_makes_room(
    task: QATask, backend: TorchBackend
) -> None:
    too_long = " ".join(SENTENCES[30:36])  # well over 64 tokens
    with pytest.raises(InvalidRequestError) as e:
        task.prepare(QARequest(too_long, LONG))
    assert e.value.param == "max_question_len"
    offsets = task.tokenizer.raw.encode(too_long, add_special_tokens=False).offsets
    long_question = too_long[: offsets[63][1]]  # exactly 64 tokens

    def question_tokens(item: EncoderItem) -> int:
        return sum(s == 0 for s in item.tokens.sequence_ids or [])

    items, got = run(task, backend, QARequest(long_question, LONG))
    assert all(question_tokens(it) == 64 for it in items) and len(items) > 1
    # 128 - 3 special - 64 question tokens leave 61 for the context, less than the
    # default stride of 64: windows then share half of those 61 tokens.
    first, second = (it for it in items[:2] if isinstance(it, QAWindow))
    assert first.stop - first.first == 61
    assert first.tokens.ids[first.stop - 30 : first.stop].tolist() == (
        second.tokens.ids[second.first : second.first + 30].tolist()
    )
    assert len(got) == 1 and got[0].answer == LONG[got[0].start : got[0].end]
    with pytest.raises(InvalidRequestError, match="max_question_len 5"):
        task.prepare(QARequest(long_question, SHORT[0], max_question_len=5))


@pytest.mark.parametrize(
    ("changes", "error", "param"),
    [
        ({"question": ""}, EmptyInputError, "question"),
        ({"context": ""}, EmptyInputError, "context"),
        ({"context": "   "}, EmptyInputError, "context"),
        ({"top_k": 0}, InvalidRequestError, "top_k"),
        ({"max_answer_len": 0}, InvalidRequestError, "max_answer_len"),
        ({"max_question_len": 0}, InvalidRequestError, "max_question_len"),
        ({"doc_stride": -1}, InvalidRequestError, "doc_stride"),
        ({"doc_stride": 129}, InvalidRequestError, "doc_stride"),
        ({"doc_stride": 125, "context": LONG}, InvalidRequestError, "doc_stride"),
        ({"max_seq_len": 129}, InvalidRequestError, "max_seq_len"),
        ({"max_seq_len": 3}, InvalidRequestError, "max_seq_len"),
        ({"max_seq_len": 16, "question": SENTENCES[40]}, InvalidRequestError, "question"),
    ],
)
def test_bad_requests_name_the_parameter(
    task: QATask, changes: dict[str, Any], error: type[Exception], param: str
) -> None:
    fields: dict[str, Any] = {"question": QUESTIONS[0], "context": SHORT[0], **changes}
    with pytest.raises(error) as caught:
        task.prepare(QARequest(**fields))
    assert getattr(caught.value, "param", None) == param


def test_a_large_stride_is_fine_when_no_window_is_needed(task: QATask) -> None:
    assert len(task.prepare(QARequest(QUESTIONS[0], SHORT[0], doc_stride=120))) == 1
