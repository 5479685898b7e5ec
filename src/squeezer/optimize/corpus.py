"""Text to measure with: a real English corpus that ships with Python, split three ways.

The corpus is the prose of Python's own documentation as every interpreter ships it in
``pydoc_data.topics`` (plain-text rendered reST): text nobody on this project wrote,
available with no network. Only prose paragraphs are kept (no code, grammar
productions, tables or headings), inline markup is stripped, and sentences of
ordinary length are kept, deterministically.

The optimizer never mixes its splits. Quantization ranges and the nodes kept in float
are chosen on the calibration split; the accuracy gate that picks the winner reads the
selection split; the figures written to the manifest come from the report split, which
nothing was chosen on, so they say how the artifact does on text it has not seen.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

_UNDERLINE = re.compile(r"^([*=\-^~#\"'`])\1{2,}\s*$")
_BULLET = re.compile(r"^(\*|-|\d+\.)\s+")
_FOOTNOTE = re.compile(r"\s*\[\d+\]")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"(A-Z])")
# Characters that almost only occur in code, grammar or tables; a sentence holding one is
# not prose. Underscores and brackets stay: prose names "__init__()" and "x[i]".
_CODE_CHARS = set("{}\\=<>|#@~^")


def _prose_paragraphs(text: str) -> list[str]:
    """Return the prose paragraphs of one topic, each joined onto one line."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip("\n").split("\n")
        if not lines or not lines[0].strip():
            continue
        bullet = _BULLET.match(lines[0])
        if bullet:
            # A list item: its continuation lines are indented by the marker's width.
            width = bullet.end()
            rest = lines[1:]
            if any(line[:width].strip() for line in rest):
                continue
            lines = [lines[0][width:], *(line[width:] for line in rest)]
        if any(line[:1].isspace() for line in lines):
            continue  # indented: code, grammar productions, quotes, nested lists
        if any(_UNDERLINE.match(line) or line.startswith(("+", "|", ">>>")) for line in lines):
            continue  # headings and tables
        para = " ".join(line.strip() for line in lines)
        para = _FOOTNOTE.sub("", para)
        para = _STRONG.sub(r"\1", para)
        para = _EMPHASIS.sub(r"\1", para)
        para = re.sub(r"::$", ":", para)
        out.append(re.sub(r"\s+", " ", para).strip())
    return out


def _is_sentence(sentence: str, min_words: int, max_words: int) -> bool:
    words = sentence.split()
    if not min_words <= len(words) <= max_words:
        return False
    if sentence[-1] not in ".!?" or not (sentence[0].isupper() or sentence[0] == '"'):
        return False
    if any(ch in _CODE_CHARS for ch in sentence) or "::" in sentence or "*" in sentence:
        return False
    letters = sum(ch.isalpha() for ch in sentence)
    return letters >= 0.7 * len(sentence.replace(" ", ""))


def all_sentences(min_words: int = 5, max_words: int = 60) -> list[str]:
    """Every prose sentence of ``pydoc_data.topics``, deduplicated, in a stable order."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    out: list[str] = []
    for key in sorted(topics):
        for para in _prose_paragraphs(topics[key]):
            for sentence in _SENTENCE_END.split(para):
                sentence = sentence.strip()
                if sentence not in seen and _is_sentence(sentence, min_words, max_words):
                    seen.add(sentence)
                    out.append(sentence)
    return out


def sentences(n: int = 512, min_words: int = 5, max_words: int = 60) -> list[str]:
    """``n`` sentences spread evenly over the whole documentation.

    Taking the first ``n`` would draw them all from the few topics that sort first (assert,
    assignment, ...); an even stride samples every part of the text, so the length mix is the
    documentation's, not one chapter's.
    """
    pool = all_sentences(min_words, max_words)
    if n >= len(pool):
        return pool
    return [pool[i * len(pool) // n] for i in range(n)]


if __name__ == "__main__":
    pool = all_sentences()
    picked = sentences()
    print(f"{len(pool)} candidate sentences, {len(picked)} picked; a sample:")
    for s in picked[::64]:
        print(" -", s)


def load_texts(path: Path | None, limit: int | None = None) -> list[str]:
    """Texts from a file (one per line) or the built-in English corpus (every prose
    sentence of ``pydoc_data.topics``, about 1,500)."""
    if path is not None:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        texts = [t for t in texts if t]
        if not texts:
            raise ValueError(f"{path} holds no text lines")
    else:
        texts = all_sentences()
    return texts[:limit] if limit else texts


@dataclass(frozen=True, slots=True)
class Splits:
    calibration: list[str]
    selection: list[str]
    report: list[str]

    def sizes(self) -> dict[str, int]:
        return {
            "calibration": len(self.calibration),
            "selection": len(self.selection),
            "report": len(self.report),
        }


def split_texts(texts: list[str], per_split: int = 256, seed: int = 0) -> Splits:
    """Distinct texts, shuffled with ``seed``, dealt into three disjoint splits.

    Duplicates are dropped first so the same sentence can never sit in two splits.
    """
    unique = list(dict.fromkeys(t for t in texts if t.strip()))
    if len(unique) < 3:
        raise ValueError(f"need at least 3 distinct texts to split three ways, got {len(unique)}")
    random.Random(seed).shuffle(unique)
    n = min(per_split, len(unique) // 3)
    return Splits(unique[:n], unique[n : 2 * n], unique[2 * n : 3 * n])
