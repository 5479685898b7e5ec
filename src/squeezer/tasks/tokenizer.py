"""Tokenization with the Rust ``tokenizers`` library: validation, truncation, offsets.

Every task tokenizes through this class so that the same rules hold everywhere: an
input longer than the model takes is refused unless the request asked for truncation,
token ids sent by a client are checked against the vocabulary, and nothing is padded
or cut silently (the padding and truncation a ``tokenizer.json`` may carry are
switched off; the engine pads per batch).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from squeezer.errors import (
    EmptyInputError,
    InputTooLongError,
    InvalidRequestError,
    ModelLoadError,
    TokenizerError,
)
from squeezer.types import TokenizedInput, TruncationDirection


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """One token as TEI's ``/tokenize`` reports it."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TextTokenizer:
    """A model's fast tokenizer with squeezer's length rules.

    ``encode_batch`` releases the GIL inside Rust, so calls from a worker thread
    overlap with the forward pass on the compute thread.
    """

    def __init__(self, path: Path, max_length: int, *, max_windows: int = 512) -> None:
        """``max_windows``: windows one request may split its long inputs into
        (``--max-input-windows``): each is a forward pass of ``max_length`` tokens."""
        try:
            base = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises plain Exception
            raise ModelLoadError(f"{path}: cannot load tokenizer ({e})") from e
        base.no_padding()
        base.no_truncation()
        self._plain = base
        serialized = base.to_str()
        self._truncating: dict[TruncationDirection, Tokenizer] = {}
        for direction in TruncationDirection:
            tok = Tokenizer.from_str(serialized)
            tok.enable_truncation(max_length, direction=direction.value)
            self._truncating[direction] = tok
        self.max_length = max_length
        self.max_windows = max_windows
        self.vocab_size = base.get_vocab_size(with_added_tokens=True)

    @property
    def raw(self) -> Tokenizer:
        """The Rust tokenizer (no padding, no truncation), for tasks that need an
        ``Encoding``'s details: word ids, the pre-tokenizer's words, the decoder."""
        return self._plain

    def _check_texts(self, texts: Sequence[str]) -> None:
        if not texts:
            raise EmptyInputError("`inputs` cannot be empty", param="inputs")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TokenizerError(f"input {i} is not a string", param="inputs")
            if not text:
                raise EmptyInputError(f"input {i} is an empty string", param="inputs")

    def _too_long(self, index: int, length: int) -> InputTooLongError:
        return InputTooLongError(
            f"input {index} has {length} tokens; this model takes at most "
            f"{self.max_length}. Pass truncate=true to cut it",
            param="inputs",
        )

    def encode(
        self,
        texts: Sequence[str],
        *,
        pairs: Sequence[str] | None = None,
        truncate: bool = False,
        direction: TruncationDirection = TruncationDirection.RIGHT,
        offsets: bool = False,
    ) -> list[TokenizedInput]:
        """Tokenize with special tokens; over-long inputs are cut only when allowed.

        ``pairs`` gives each text a second sequence (cross-encoders, NLI); a pair too
        long is cut from its longer side, as ``transformers`` does.
        """
        self._check_texts(texts)
        if pairs is not None:
            self._check_texts(pairs)
            if len(pairs) != len(texts):
                raise TokenizerError("every text needs its pair", param="inputs")
        batch: list[Any] = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
        encodings = self._plain.encode_batch(batch, add_special_tokens=True)
        out: list[TokenizedInput] = []
        for i, enc in enumerate(encodings):
            truncated = False
            if len(enc.ids) > self.max_length:
                if not truncate:
                    raise self._too_long(i, len(enc.ids))
                enc = _encode(self._truncating[direction], batch[i])
                truncated = True
            out.append(_to_input(enc, truncated, offsets))
        return out

    def windows(
        self,
        text: str,
        pair: str | None = None,
        *,
        stride: int,
        max_length: int | None = None,
        used: int = 0,
        param: str = "inputs",
    ) -> list[TokenizedInput]:
        """Overlapping windows covering all of ``text`` (or of ``pair``, the context of
        a question), each at most ``max_length`` tokens, consecutive windows sharing
        ``stride`` tokens: how long inputs are read whole instead of cut.

        The windows are counted before they are made: with the ``used`` ones of the
        request's earlier inputs, more than ``max_windows`` is a 422 naming the limit
        (a 2 MB context at a stride of nearly a window would be ~500k forward passes)."""
        self._check_texts([text] if pair is None else [text, pair])
        length = min(max_length or self.max_length, self.max_length)
        first = _encode(self._plain, text if pair is None else (text, pair))
        if len(first.ids) <= length:
            self._check_windows(used + 1, param)
            return [_to_input(first, False, True)]
        fixed = self._plain.num_special_tokens_to_add(pair is not None)
        if pair is not None:
            fixed += len(self._plain.encode(text, add_special_tokens=False).ids)
        if stride < 0 or length - fixed <= stride:
            raise InvalidRequestError(
                f"stride {stride} must be between 0 and {length - fixed - 1} so that "
                f"windows of {length} tokens advance",
                param="stride",
            )
        room, content = length - fixed, len(first.ids) - fixed
        count = 1 + -(-(content - room) // (room - stride))
        self._check_windows(used + count, param, f" of {length} tokens at stride {stride}")
        windowing = self._windowing(length, stride, pair is not None)
        enc = _encode(windowing, text if pair is None else (text, pair))
        return [_to_input(e, False, True) for e in (enc, *enc.overflowing)]

    def _check_windows(self, count: int, param: str, how: str = "") -> None:
        if count > self.max_windows:
            raise InvalidRequestError(
                f"this request needs {count} windows{how}; at most {self.max_windows} per "
                "request (--max-input-windows): send less text, or a smaller stride",
                param=param,
            )

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a few per model, alive as long as it
    def _windowing(self, length: int, stride: int, second_only: bool) -> Tokenizer:
        tok = Tokenizer.from_str(self._plain.to_str())
        strategy = "only_second" if second_only else "longest_first"
        tok.enable_truncation(length, stride=stride, strategy=strategy)
        return tok

    def from_ids(
        self,
        ids_lists: Sequence[Sequence[int]],
        *,
        truncate: bool = False,
        direction: TruncationDirection = TruncationDirection.RIGHT,
    ) -> list[TokenizedInput]:
        """Token ids sent by the client, used as given (no special tokens added)."""
        if not ids_lists:
            raise EmptyInputError("`inputs` cannot be empty", param="inputs")
        out: list[TokenizedInput] = []
        for i, ids in enumerate(ids_lists):
            if len(ids) == 0:
                raise EmptyInputError(f"input {i} is an empty list of token ids", param="inputs")
            # Range-checked as Python ints first: 10**19 would overflow int64 in numpy.
            if min(ids) < 0 or max(ids) >= self.vocab_size:
                raise TokenizerError(
                    f"input {i} holds token ids outside this model's vocabulary "
                    f"[0, {self.vocab_size})",
                    param="inputs",
                )
            arr = np.asarray(ids, dtype=np.int64)
            truncated = False
            if arr.shape[0] > self.max_length:
                if not truncate:
                    raise self._too_long(i, int(arr.shape[0]))
                keep = self.max_length
                arr = arr[:keep] if direction is TruncationDirection.RIGHT else arr[-keep:]
                truncated = True
            out.append(TokenizedInput(ids=arr, truncated=truncated))
        return out

    def tokenize(self, texts: Sequence[str], *, add_special_tokens: bool) -> list[list[TokenInfo]]:
        """Tokens with their text and character offsets (TEI ``/tokenize``)."""
        self._check_texts(texts)
        encodings = self._plain.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        result = []
        for text, enc in zip(texts, encodings, strict=True):
            tokens = []
            for tid, tok, special, (start, stop) in zip(
                enc.ids, enc.tokens, enc.special_tokens_mask, enc.offsets, strict=True
            ):
                if special:
                    tokens.append(TokenInfo(tid, tok, True, None, None))
                else:
                    tokens.append(TokenInfo(tid, text[start:stop], False, start, stop))
            result.append(tokens)
        return result

    def token_id(self, token: str) -> int | None:
        """The id of a vocabulary entry (``[MASK]``, ``paris``), None when absent."""
        return self._plain.token_to_id(token)

    def pieces(self, text: str) -> list[int]:
        """Ids of ``text`` without special tokens."""
        return list(self._plain.encode(text, add_special_tokens=False).ids)

    def decode(self, ids_lists: Sequence[Sequence[int]], *, skip_special_tokens: bool) -> list[str]:
        for i, ids in enumerate(ids_lists):
            if any((not isinstance(t, int)) or t < 0 or t >= self.vocab_size for t in ids):
                raise TokenizerError(
                    f"ids {i} hold values outside this model's vocabulary [0, {self.vocab_size})",
                    param="ids",
                )
        return self._plain.decode_batch(
            [list(ids) for ids in ids_lists], skip_special_tokens=skip_special_tokens
        )


def _encode(tokenizer: Tokenizer, item: str | tuple[str, str]) -> Encoding:
    if isinstance(item, str):
        return tokenizer.encode(item)
    return tokenizer.encode(item[0], item[1])


def _to_input(enc: Encoding, truncated: bool, offsets: bool = False) -> TokenizedInput:
    return TokenizedInput(
        ids=np.asarray(enc.ids, dtype=np.int64),
        type_ids=np.asarray(enc.type_ids, dtype=np.int64),
        truncated=truncated,
        offsets=list(enc.offsets) if offsets else None,
        sequence_ids=list(enc.sequence_ids) if offsets else None,
    )
