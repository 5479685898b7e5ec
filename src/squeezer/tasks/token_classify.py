"""Token classification (NER): a label per token, grouped into entities.

Results equal ``transformers``' token-classification pipeline: a softmax over the
labels at every non-special token, then one of five aggregation strategies (``none``
keeps tokens; ``simple`` joins adjacent tokens of one B-/I- tag; ``first``, ``average``
and ``max`` first make every word agree on one label), then ``ignore_labels`` drops
what is not wanted. Words are told by the tokenizer's continuing-subword prefix
(WordPiece's ``##``) or, without one, by the pipeline's fallback heuristic (no space
at the token's start).

Long inputs are read whole, never cut: they are split into overlapping windows, each
window is classified alone and the windows' entities merged as the pipeline merges
its ``stride`` chunks (of entities that overlap, the longer one wins, then the more
confident).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt

from squeezer.errors import EmptyInputError, InvalidRequestError
from squeezer.models import ModelFolder
from squeezer.tasks.classify import FloatArray, label_names, softmax
from squeezer.tasks.encoder import EncoderItem, Row
from squeezer.tasks.tokenizer import TextTokenizer
from squeezer.types import NamedArrays, TokenizedInput

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DEFAULT_AGGREGATION = "simple"
AGGREGATIONS = ("none", "simple", "first", "average", "max")
#: Overlap of windows when the request names no stride: a quarter of a window gives
#: tokens at a window's edge some context, at a third more forward passes.
DEFAULT_STRIDE_FRACTION = 4


@dataclass(slots=True)
class TokenClassifyRequest:
    inputs: list[str]
    #: none, simple, first, average or max (any case, as the pipeline takes them).
    aggregation_strategy: str = DEFAULT_AGGREGATION
    #: Labels (or entity groups) left out; None means ``["O"]``.
    ignore_labels: list[str] | None = None
    #: Tokens shared by consecutive windows of a long input; None means a quarter of
    #: the model's max length. The pipeline refuses it with strategy ``none``.
    stride: int | None = None


@dataclass(frozen=True, slots=True)
class TokenEntity:
    """One token (strategy ``none``)."""

    entity: str
    score: float
    #: Position of the token in the whole input's tokens, special tokens included
    #: (the pipeline's ``index`` for inputs that fit one window).
    index: int
    #: The vocabulary token (``##ing``); for an unknown token, the text it covers.
    word: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class EntityGroup:
    """Adjacent tokens or words of one entity (every strategy but ``none``)."""

    entity_group: str
    score: float
    #: The group's tokens decoded (lower-cased by an uncased model): ``text[start:end]``
    #: is the exact text.
    word: str
    start: int
    end: int


Entity = TokenEntity | EntityGroup


@dataclass(frozen=True, slots=True)
class TokenLogitsHead:
    """Every token's label logits."""

    outputs = ("logits",)

    def take(self, outputs: NamedArrays, batch: Sequence[Row]) -> list[FloatArray]:
        logits = outputs["logits"]
        return [np.array(logits[r.row, : r.length], dtype=np.float32) for r in batch]


@dataclass(slots=True, kw_only=True)
class TokenWindow(EncoderItem):
    """A window of one input with its tokens read as the pipeline's "pre-entities",
    all computed in ``prepare`` so that ``finish``, on the event loop, only adds what
    the logits say."""

    input_index: int
    #: Positions of the text's tokens in the window (special tokens left out).
    content: IntArray
    #: Added to ``content`` gives a token's position in the whole input's tokens.
    shift: int
    #: Vocabulary strings (for an unknown token, the text it covers).
    words: list[str]
    starts: IntArray
    ends: IntArray
    #: True where a token continues the word of the token before it.
    subword: BoolArray


def _tag(label: str) -> tuple[bool, str]:
    """(is a B- label, tag); a label without B-/I- continues, as the pipeline reads it."""
    if label.startswith(("B-", "I-")):
        return label.startswith("B-"), label[2:]
    return False, label


class TokenClassifyTask:
    """Named entities (or any per-token labels) for texts of any length."""

    def __init__(self, folder: ModelFolder, tokenizer: TextTokenizer) -> None:
        self.folder = folder
        self.tokenizer = tokenizer
        self.head = TokenLogitsHead()
        self.labels = label_names(folder.config)
        plain = tokenizer.raw
        vocab = plain.get_vocab(with_added_tokens=True)
        table = np.empty(max(vocab.values(), default=-1) + 1, dtype=object)
        for token, i in vocab.items():
            table[i] = token
        self._token_strings = table
        # The pipeline tells sub-words by the prefix only when the model has one.
        self._subword_prefix = bool(getattr(plain.model, "continuing_subword_prefix", None))
        unk = folder.special_tokens.get("unk_token") or getattr(plain.model, "unk_token", None)
        unk_id = plain.token_to_id(unk) if isinstance(unk, str) else None
        self._unk_id = -1 if unk_id is None else unk_id
        self._decoder = plain.decoder
        self._specials = plain.num_special_tokens_to_add(False)
        room = tokenizer.max_length - self._specials
        if room < 1:
            raise ValueError(f"max length {tokenizer.max_length} leaves no room for text")
        self.default_stride = min(tokenizer.max_length // DEFAULT_STRIDE_FRACTION, room - 1)
        self._label_table(len(self.labels))

    def _label_table(self, count: int) -> None:
        """Per label index: its tag (as an id), whether it begins one, its group name."""
        while len(self.labels) < count:  # a head wider than id2label: the pipeline's names
            self.labels.append(f"LABEL_{len(self.labels)}")
        tags = [_tag(label) for label in self.labels]
        tag_ids = {tag: i for i, tag in enumerate(dict.fromkeys(t for _, t in tags))}
        self._tag_ids = np.array([tag_ids[t] for _, t in tags], dtype=np.int64)
        self._begins = np.array([b for b, _ in tags], dtype=np.bool_)
        self._group_names = [label.split("-", 1)[-1] for label in self.labels]

    def _strategy(self, request: TokenClassifyRequest) -> str:
        strategy = str(request.aggregation_strategy).lower()
        if strategy not in AGGREGATIONS:
            raise InvalidRequestError(
                f"aggregation_strategy {request.aggregation_strategy!r}: expected "
                + ", ".join(AGGREGATIONS),
                param="aggregation_strategy",
            )
        return strategy

    def prepare(self, request: TokenClassifyRequest) -> list[EncoderItem]:
        """Validate, and tokenize every input into one or more windows."""
        strategy = self._strategy(request)
        stride = self.default_stride
        if request.stride is not None:
            room = self.tokenizer.max_length - self._specials
            if strategy == "none":
                raise InvalidRequestError(
                    "stride needs an aggregation_strategy other than 'none' (as in "
                    "transformers); long inputs are windowed without it",
                    param="stride",
                )
            if isinstance(request.stride, bool) or not 0 <= request.stride < room:
                raise InvalidRequestError(
                    f"stride must be between 0 and {room - 1} for this model", param="stride"
                )
            stride = request.stride
        if not request.inputs:
            raise EmptyInputError("`inputs` cannot be empty", param="inputs")
        self.tokenizer._check_texts(request.inputs)  # the same input rules as every task
        items: list[EncoderItem] = []
        for i, text in enumerate(request.inputs):
            shift = 0
            for window in self.tokenizer.windows(text, stride=stride, used=len(items)):
                item = self._window(text, window, i, shift)
                items.append(item)
                shift += len(item.content) - stride
        return items

    def _window(self, text: str, tokens: TokenizedInput, i: int, shift: int) -> TokenWindow:
        sequence_ids = tokens.sequence_ids or [None] * tokens.num_tokens
        keep = np.fromiter((s is not None for s in sequence_ids), np.bool_, len(sequence_ids))
        content = np.flatnonzero(keep)
        ids = tokens.ids[content]
        spans = np.asarray(tokens.offsets or [(0, 0)] * tokens.num_tokens, dtype=np.int64)
        starts, ends = spans[content, 0], spans[content, 1]
        words: list[str] = self._token_strings[ids].tolist()
        if self._subword_prefix:
            lengths = np.fromiter(map(len, words), np.int64, len(words))
            covered = np.minimum(ends, len(text)) - np.minimum(starts, len(text))
            subword = lengths != covered
        else:
            # The pipeline's fallback without a prefix: a token that neither starts the
            # text nor touches a space (its first character or the one before it)
            # continues a word. Wrong on punctuation; the pipeline has nothing better.
            space = np.append(np.fromiter((c == " " for c in text), np.bool_, len(text)), False)
            at = np.clip(starts, 0, len(text))
            subword = (starts > 0) & ~space[np.maximum(at - 1, 0)] & ~space[at]
        unknown = ids == self._unk_id
        for j in np.flatnonzero(unknown):
            words[j] = text[starts[j] : ends[j]]
        subword &= ~unknown
        return TokenWindow(
            tokens,
            self.head,
            input_index=i,
            content=content,
            shift=shift,
            words=words,
            starts=starts,
            ends=ends,
            subword=subword,
        )

    def finish(
        self, request: TokenClassifyRequest, items: Sequence[EncoderItem], results: list[Any]
    ) -> list[list[Entity]]:
        """Entities per input, in input order (runs on the event loop)."""
        strategy = self._strategy(request)
        ignore = set(["O"] if request.ignore_labels is None else request.ignore_labels)
        found: list[list[Entity]] = [[] for _ in request.inputs]
        windows = [0] * len(found)
        for item, logits in zip(items, results, strict=True):
            if not isinstance(item, TokenWindow):
                raise TypeError("token classification finishes the items its prepare made")
            if item.content.size:
                found[item.input_index].extend(
                    self._entities(item, np.asarray(logits), strategy, ignore)
                )
            windows[item.input_index] += 1
        return [_merge_overlapping(f) if n > 1 else f for f, n in zip(found, windows, strict=True)]

    def _entities(
        self, t: TokenWindow, logits: FloatArray, strategy: str, ignore: set[str]
    ) -> list[Entity]:
        if logits.shape[-1] > len(self.labels):
            self._label_table(logits.shape[-1])
        probs = softmax(logits[t.content].astype(np.float32, copy=False))
        top_label = probs.argmax(axis=-1)
        top = probs[np.arange(t.content.size), top_label]
        if strategy == "none":
            return [
                TokenEntity(self.labels[b], float(s), int(i), w, int(a), int(z))
                for b, s, i, w, a, z in zip(
                    top_label, top, t.content + t.shift, t.words, t.starts, t.ends, strict=True
                )
                if self.labels[b] not in ignore
            ]
        if strategy == "simple":
            return self._group(top_label, top.astype(np.float64), t.words, t.starts, t.ends, ignore)
        # Words: a token that is not a sub-word begins one (and so does the first).
        begins = ~t.subword
        begins[0] = True
        heads = np.flatnonzero(begins)
        bounds = [*heads.tolist(), len(t.words)]
        if strategy == "first":
            best, score = top_label[heads], top[heads]
        elif strategy == "max":
            # The word's most confident token decides (the first of equals).
            word_of = np.cumsum(begins) - 1
            peak = np.maximum.reduceat(top, heads)
            hits = np.flatnonzero(top == peak[word_of])
            _, first_hit = np.unique(word_of[hits], return_index=True)
            chosen = hits[first_hit]
            best, score = top_label[chosen], top[chosen]
        else:  # average: the word's mean distribution decides
            mean = _nanmean_at(probs, heads)
            best = mean.argmax(axis=-1)
            score = mean[np.arange(heads.size), best]
        words = [self._decode(t.words[a:z]) for a, z in pairwise(bounds)]
        ends = t.ends[np.asarray(bounds[1:]) - 1]
        return self._group(best, score.astype(np.float64), words, t.starts[heads], ends, ignore)

    def _group(
        self,
        best: IntArray,
        score: npt.NDArray[np.float64],
        words: list[str],
        starts: IntArray,
        ends: IntArray,
        ignore: set[str],
    ) -> list[Entity]:
        """Join runs of one tag into groups; a B- label always opens a new one."""
        tags = self._tag_ids[best]
        opens = np.ones(len(words), dtype=np.bool_)
        opens[1:] = (tags[1:] != tags[:-1]) | self._begins[best[1:]]
        heads = np.flatnonzero(opens)
        means = _nanmean_at(score, heads)
        bounds = [*heads.tolist(), len(words)]
        groups: list[Entity] = []
        for g, (a, z) in enumerate(pairwise(bounds)):
            name = self._group_names[best[a]]
            if name not in ignore:
                word = self._decode(words[a:z])
                groups.append(
                    EntityGroup(name, float(means[g]), word, int(starts[a]), int(ends[z - 1]))
                )
        return groups

    def _decode(self, pieces: list[str]) -> str:
        """Tokens (or words) to text as the pipeline's ``convert_tokens_to_string``."""
        if self._decoder is None:
            return " ".join(pieces)
        return str(self._decoder.decode(pieces))


def _nanmean_at(values: npt.NDArray[Any], heads: IntArray) -> npt.NDArray[np.float64]:
    """Mean of each run starting at ``heads`` (along axis 0), NaNs left out."""
    missing = np.isnan(values)
    sums = np.add.reduceat(np.where(missing, 0.0, values.astype(np.float64)), heads, axis=0)
    counts = np.add.reduceat(~missing, heads, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means: npt.NDArray[np.float64] = sums / counts
    return means


def _merge_overlapping(entities: list[Entity]) -> list[Entity]:
    """Entities from overlapping windows as the pipeline merges its chunks: by start;
    of two that overlap, the longer, then the more confident, stays."""
    if not entities:
        return entities
    ordered = sorted(entities, key=lambda e: e.start)
    merged: list[Entity] = []
    kept = ordered[0]
    for entity in ordered:
        if kept.start <= entity.start < kept.end:
            if (entity.end - entity.start, entity.score) > (kept.end - kept.start, kept.score):
                kept = entity
        else:
            merged.append(kept)
            kept = entity
    merged.append(kept)
    return merged
