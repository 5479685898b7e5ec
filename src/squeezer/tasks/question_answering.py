"""Extractive question answering: context windows, span scores, answers as characters.

The rule is transformers 4's ``QuestionAnsweringPipeline`` (fast-tokenizer path, as of
v4.57; transformers 5 removed the pipeline), so answers, scores and ties agree with it:

* The question comes first and only the context is split: windows of ``max_seq_len``
  tokens (default ``min(model max, 384)``), consecutive ones sharing ``doc_stride``
  tokens (default ``min(max_seq_len // 2, 128)``).
* Per window, start and end logits are softmaxed over the context tokens and the CLS
  token (transformers always keeps CLS in the softmax; its own spans are then zeroed).
  A span (s, e) scores ``p_start[s] * p_end[e]`` with ``s <= e < s + max_answer_len``,
  both inside the context. The best ``top_k`` spans are kept per window, or
  ``2 * top_k + 10`` with ``align_to_words`` (alignment can make spans coincide).
* A span becomes characters through the tokenizer's offsets, widened with
  ``align_to_words`` to the whole pre-tokenizer words its first and last tokens belong
  to (words as far as they lie inside the window, as ``Encoding.word_to_chars`` does).
* Answers with the same text (ignoring case), within or across windows, are one answer
  at the first one's position, their scores summed. ``handle_impossible_answer`` adds
  ``""`` at (0, 0) scored by the smallest ``p_start[0] * p_end[0]`` over windows.
  Answers are sorted by score and cut to ``top_k``.

Deviations, all where transformers fails or returns filler: a ``doc_stride`` left to
its default becomes half the room a long question leaves the context when the default
would not fit (transformers crashes in the tokenizer); spans touching CLS are never
returned (transformers returns such zero-score spans only when a window has fewer
spans than it keeps); a question over ``max_question_len`` tokens is refused (the
pipeline documents a cut; its fast path ignored the parameter; squeezer never shortens
what a user sent unasked). The question always comes
first (transformers puts it second for tokenizers that pad on the left).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from squeezer.errors import EmptyInputError, InvalidRequestError
from squeezer.models import ModelFolder
from squeezer.tasks.encoder import EncoderItem, Row
from squeezer.tasks.tokenizer import TextTokenizer
from squeezer.types import NamedArrays, TokenizedInput

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: transformers 4's cap on the default window, whatever the model takes.
DEFAULT_MAX_SEQ_LEN = 384
#: transformers 4's cap on the default overlap between windows.
DEFAULT_MAX_STRIDE = 128
#: transformers 4's starting "no answer" score: larger than any probability.
_NO_NULL_SCORE = 1_000_000.0


@dataclass(slots=True)
class QARequest:
    """One question about one context, with transformers 4's pipeline parameters."""

    question: str
    context: str
    top_k: int = 1
    #: Longest answer, in tokens.
    max_answer_len: int = 15
    #: Tokens shared by consecutive windows; None is ``min(max_seq_len // 2, 128)``.
    doc_stride: int | None = None
    #: Tokens per window, question and special tokens included; None is
    #: ``min(model max, 384)``.
    max_seq_len: int | None = None
    #: Longest question accepted, in tokens (longer ones are refused, not cut).
    max_question_len: int = 64
    #: Also offer "no answer" (``""`` at 0..0), scored by the CLS token.
    handle_impossible_answer: bool = False
    #: Widen answers to whole words instead of cutting inside one.
    align_to_words: bool = True


@dataclass(frozen=True, slots=True)
class QAAnswer:
    score: float
    #: Character offsets of the answer in the context: ``context[start:end]``.
    start: int
    end: int
    answer: str


@dataclass(slots=True, kw_only=True)
class QAWindow(EncoderItem):
    """A window of the context plus what ``finish`` needs to read answers off it,
    computed in ``prepare`` so that the event loop only indexes."""

    #: Token range of the context inside the window.
    first: int
    stop: int
    #: Tokens whose logits take part in the softmax (the context, and CLS).
    scored: npt.NDArray[np.bool_]
    #: Per context token: the characters an answer starting/ending there covers.
    chars: IntArray


@dataclass(frozen=True, slots=True)
class SpanLogitsHead:
    """Each window's start and end logits, cut to its length (no work on the compute
    thread beyond a copy: scoring needs per-request parameters)."""

    outputs = ("start_logits", "end_logits")

    def take(self, outputs: NamedArrays, batch: Sequence[Row]) -> list[tuple[FloatArray, ...]]:
        start = np.asarray(outputs["start_logits"], dtype=np.float32)
        end = np.asarray(outputs["end_logits"], dtype=np.float32)
        return [(start[r.row, : r.length].copy(), end[r.row, : r.length].copy()) for r in batch]


class QATask:
    """Pre- and post-processing of extractive question answering for one model."""

    def __init__(self, folder: ModelFolder, tokenizer: TextTokenizer) -> None:
        self.folder = folder
        self.tokenizer = tokenizer
        self.head = SpanLogitsHead()
        plain = tokenizer.raw  # word ids and question length need the raw Encoding
        cls = folder.special_tokens.get("cls_token")
        self._cls_id: int | None = plain.token_to_id(cls) if cls else None
        self._pair_specials = plain.num_special_tokens_to_add(True)

    def prepare(self, request: QARequest) -> list[EncoderItem]:
        """Validate, window the context, and precompute each window's character spans;
        runs off the event loop."""
        _check(request)
        max_seq_len = self._max_seq_len(request)
        question, room = self._question(request, max_seq_len)
        stride = request.doc_stride
        if stride is None:
            stride = min(max_seq_len // 2, DEFAULT_MAX_STRIDE)
            if stride >= room:  # transformers fails here; overlap half the room instead
                stride = room // 2
        elif not 0 <= stride <= max_seq_len:
            raise InvalidRequestError(
                f"doc_stride must be between 0 and max_seq_len ({max_seq_len})",
                param="doc_stride",
            )
        try:
            windows = self.tokenizer.windows(
                question, request.context, stride=stride, max_length=max_seq_len, param="context"
            )
        except InvalidRequestError as e:
            if e.param != "stride":
                raise
            raise InvalidRequestError(
                f"doc_stride {stride} is too large: windows of {max_seq_len} tokens leave "
                f"{room} for the context after this question, so doc_stride must be below "
                f"{room}",
                param="doc_stride",
            ) from e
        if 1 not in (windows[0].sequence_ids or ()):
            raise EmptyInputError("context has no tokens", param="context")
        words = self._char_words(request.context) if request.align_to_words else None
        return [self._window(w, words) for w in windows]

    def finish(
        self, request: QARequest, items: Sequence[EncoderItem], results: list[Any]
    ) -> list[QAAnswer]:
        """Best answers over all windows, best first (see the module docstring)."""
        keep = 2 * request.top_k + 10 if request.align_to_words else request.top_k
        answers: list[QAAnswer] = []
        by_text: dict[str, int] = {}
        null_score = _NO_NULL_SCORE
        for item, (start_logits, end_logits) in zip(items, results, strict=True):
            if not isinstance(item, QAWindow):
                raise TypeError("QATask.finish takes the windows QATask.prepare made")
            p_start = _softmax(start_logits, item.scored)
            p_end = _softmax(end_logits, item.scored)
            null_score = min(null_score, float(p_start[0] * p_end[0]))
            p_start[0] = p_end[0] = 0.0
            for s, e, score in _best_spans(
                p_start[item.first : item.stop],
                p_end[item.first : item.stop],
                request.max_answer_len,
                keep,
            ):
                begin, end = int(item.chars[s, 0]), int(item.chars[e, 1])
                text = request.context[begin:end]
                seen = by_text.get(text.lower())
                if seen is None:
                    by_text[text.lower()] = len(answers)
                    answers.append(QAAnswer(score, begin, end, text))
                else:
                    old = answers[seen]
                    answers[seen] = QAAnswer(old.score + score, old.start, old.end, old.answer)
        if request.handle_impossible_answer:
            answers.append(QAAnswer(null_score, 0, 0, ""))
        answers.sort(key=lambda a: a.score, reverse=True)  # stable, as transformers'
        return answers[: request.top_k]

    def _max_seq_len(self, request: QARequest) -> int:
        limit = self.tokenizer.max_length
        if request.max_seq_len is None:
            return min(limit, DEFAULT_MAX_SEQ_LEN)
        if not self._pair_specials < request.max_seq_len <= limit:
            raise InvalidRequestError(
                f"max_seq_len must be between {self._pair_specials + 1} and {limit} for this model",
                param="max_seq_len",
            )
        return request.max_seq_len

    def _question(self, request: QARequest, max_seq_len: int) -> tuple[str, int]:
        """The question, refused beyond ``max_question_len`` tokens (never cut: what a
        user asked is not silently shortened), and the room it leaves the context."""
        question = request.question
        plain = self.tokenizer.raw
        enc = plain.encode(question, add_special_tokens=False)
        if len(enc.ids) > request.max_question_len:
            raise InvalidRequestError(
                f"the question has {len(enc.ids)} tokens > max_question_len "
                f"{request.max_question_len}; shorten it or raise max_question_len",
                param="max_question_len",
            )
        room = max_seq_len - self._pair_specials - len(enc.ids)
        if room < 1:
            raise InvalidRequestError(
                f"the question has {len(enc.ids)} tokens, which leaves no room for the "
                f"context in windows of {max_seq_len} tokens: shorten the question or raise "
                "max_seq_len",
                param="question",
            )
        return question, room

    def _char_words(self, context: str) -> IntArray:
        """Word index of every character of the context (-1 between words), from the
        pre-tokenizer's words: what ``align_to_words`` widens answers to."""
        enc = self.tokenizer.raw.encode(context, add_special_tokens=False)
        words = np.full(len(context) + 1, -1, dtype=np.int64)
        for word, (begin, end) in zip(enc.word_ids, enc.offsets, strict=True):
            if word is not None:
                words[begin:end] = word
        return words

    def _window(self, tokens: TokenizedInput, char_words: IntArray | None) -> QAWindow:
        assert tokens.sequence_ids is not None and tokens.offsets is not None
        in_context = np.array([s == 1 for s in tokens.sequence_ids], dtype=np.bool_)
        scored = in_context.copy()
        if self._cls_id is not None:
            scored |= tokens.ids == self._cls_id
        where = np.flatnonzero(in_context)
        first, stop = (int(where[0]), int(where[-1]) + 1) if where.size else (0, 0)
        spans = np.asarray(tokens.offsets[first:stop], dtype=np.int64).reshape(-1, 2)
        if char_words is not None and spans.size:
            spans = _word_spans(spans, char_words)
        return QAWindow(tokens, self.head, first=first, stop=stop, scored=scored, chars=spans)


def _check(request: QARequest) -> None:
    for name in ("question", "context"):
        value = getattr(request, name)
        if not isinstance(value, str):
            raise InvalidRequestError(f"{name} must be a string", param=name)
        if not value:
            raise EmptyInputError(f"{name} cannot be empty", param=name)
    for name in ("top_k", "max_answer_len", "max_question_len"):
        if getattr(request, name) < 1:
            raise InvalidRequestError(f"{name} must be at least 1", param=name)


def _word_spans(spans: IntArray, char_words: IntArray) -> IntArray:
    """Each token's span widened to its word, as far as the word's tokens lie in
    ``spans`` (a window can start or end inside a word)."""
    n = spans.shape[0]
    words = char_words[spans[:, 0]]
    # Tokens without a word (or with empty offsets) stay themselves.
    lone = (words < 0) | (spans[:, 1] <= spans[:, 0])
    words = np.where(lone, -2 - np.arange(n), words)
    new = np.ones(n, dtype=np.bool_)
    new[1:] = words[1:] != words[:-1]
    firsts = np.flatnonzero(new)
    lasts = np.append(firsts[1:] - 1, n - 1)
    run = np.cumsum(new) - 1
    return np.stack([spans[firsts, 0][run], spans[lasts, 1][run]], axis=1)


def _softmax(logits: FloatArray, scored: npt.NDArray[np.bool_]) -> FloatArray:
    """Softmax over the scored tokens; the others get probability 0 (transformers
    sets them to -10000 first, which underflows to exactly 0 in float32)."""
    out = np.zeros(logits.shape, dtype=np.float32)
    if scored.any():
        kept = logits[scored]
        exp = np.exp(kept - kept.max())
        out[scored] = exp / exp.sum()
    return out


def _best_spans(
    p_start: FloatArray, p_end: FloatArray, max_answer_len: int, keep: int
) -> list[tuple[int, int, float]]:
    """The ``keep`` best (start, end, score) of one window's context, best first.

    Scores live in a band (start, length) of n x max_answer_len rather than transformers'
    n x n outer product: the same candidates, a fraction of the work.
    """
    n = p_start.shape[0]
    width = min(max_answer_len, n)
    if width == 0:
        return []
    padded = np.concatenate([p_end, np.zeros(width - 1, dtype=np.float32)])
    ends = np.lib.stride_tricks.sliding_window_view(padded, width)[:n]
    band = p_start[:, None] * ends
    valid = np.arange(n)[:, None] + np.arange(width)[None, :] < n
    flat = np.where(valid, band, -1.0).ravel()
    count = min(keep, int(valid.sum()))
    top = np.argpartition(-flat, count - 1)[:count]
    top = top[np.argsort(-flat[top], kind="stable")]
    starts, lengths = np.divmod(top, width)
    return [
        (int(s), int(s + d), float(flat[i]))
        for s, d, i in zip(starts, lengths, top, strict=True)
        if flat[i] >= 0
    ]
