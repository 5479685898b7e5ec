"""Generated tokens as streamed text: deltas that never split a character, and stop
sequences matched in the text (across token boundaries), not in token ids.

A token may end inside a multi-byte character (byte-level BPE) or change how the
previous token renders (SentencePiece's leading space, WordPiece's ``##``), so text is
decoded over a short window of recent tokens and only the part that can no longer
change is emitted. Stop strings may straddle tokens, so text that could still become
a stop is held back until it either completes one or cannot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tokenizers import Tokenizer

_INCOMPLETE = "\ufffd"
#: Prompt tokens kept as left context, so the first generated token renders as it
#: would inside the text (a leading space, a word continuation).
_CONTEXT = 5


class IncrementalDetokenizer:
    """Text deltas of a growing token sequence.

    ``added`` (token id: content), given when special tokens are kept and must not be
    spaced (vLLM's ``spaces_between_special_tokens=False``): an added token right after
    another renders as its content alone, without the space a decoder may put before
    it, as vLLM's fast detokenizer does it."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt: Sequence[int] = (),
        *,
        skip_special: bool = True,
        added: Mapping[int, str] | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special
        self._added = added
        self._last_added = False  # the last generated token was an added one
        self._ids = list(prompt[-_CONTEXT:])
        self._prefix = 0  # start of the decoding window
        self._read = len(self._ids)  # tokens before this are emitted

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=self._skip)

    def push(self, token: int) -> str:
        """The text ``token`` completes ("" while a character is still incomplete)."""
        added = self._added
        follows_added, self._last_added = self._last_added, added is not None and token in added
        if added is not None and follows_added and token in added:
            pending = self.flush()  # what the tokens before it left unsaid
            self._ids.append(token)
            self._prefix, self._read = len(self._ids) - 1, len(self._ids)
            return pending + added[token]
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(_INCOMPLETE):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def flush(self) -> str:
        """What is left at the end (an incomplete character renders as U+FFFD)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]


class StopMatcher:
    """Finds the first of ``stops`` in streamed text; emits only text that precedes it."""

    def __init__(self, stops: Sequence[str], *, include: bool = False) -> None:
        """``include``: the stop string ends the text emitted (vLLM's
        ``include_stop_str_in_output``) instead of being cut with what follows."""
        self.stops = [s for s in stops if s]
        self._include = include
        self._held = ""
        self.matched: str | None = None

    def push(self, delta: str) -> str:
        """Text safe to emit now; after a match, nothing more (``matched`` says which)."""
        if self.matched is not None:
            return ""
        text = self._held + delta
        hits = [(text.find(s), s) for s in self.stops if s in text]
        if hits:
            index, stop = min(hits, key=lambda hit: hit[0])
            self.matched, self._held = stop, ""
            return text[: index + len(stop) if self._include else index]
        keep = self._partial(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def _partial(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """Held text, released when the stream ends without a match."""
        text, self._held = self._held, ""
        return "" if self.matched is not None else text
