"""Which tokens each slot's KV cache holds: what prefix caching matches prompts against.

A slot's cache keeps its keys and values after its sequence leaves (backends do not
clear it), so a new prompt that shares a prefix with what a slot holds (every chat
request starts with the same template and system prompt) is prefilled from where they
part, as llama-server's slots and vLLM's block hashes do it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class HeldTokens:
    """Per slot, the tokens its cache holds from position 0, until overwritten."""

    def __init__(self, slots: int) -> None:
        self._held: list[list[int]] = [[] for _ in range(slots)]

    def common_prefix(self, slot: int, prompt: Sequence[int]) -> int:
        """Leading prompt tokens whose keys and values ``slot``'s cache holds, at most
        all but the last (whose logits pick the first new token)."""
        held = self._held[slot]
        if not held or held[0] != prompt[0]:
            return 0
        n = min(len(held), len(prompt) - 1)
        differ = np.flatnonzero(np.asarray(held[:n]) != np.asarray(prompt[:n]))
        return int(differ[0]) if len(differ) else n

    def forget(self, slot: int) -> None:
        self._held[slot] = []

    def keep(self, slot: int, length: int) -> None:
        """Only the first ``length`` positions of ``slot`` still hold what they held."""
        del self._held[slot][length:]

    def copy(self, source: int, target: int, length: int) -> None:
        """``target`` now holds the first ``length`` positions ``source`` holds."""
        self._held[target] = self._held[source][:length]

    def write(self, slot: int, start: int, tokens: Sequence[int]) -> None:
        """``tokens`` were written at positions ``start ...`` of ``slot``."""
        held = self._held[slot]
        if start > len(held):  # a gap: claim nothing past what is known
            return
        del held[start:]
        held.extend(tokens)
