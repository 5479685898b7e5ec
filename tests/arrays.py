"""Batches and measures the runtime tests share: right-padded int64 arrays as the
engine collates them, and the cosine of (mean-pooled) outputs against torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from squeezer.tasks.tokenizer import TextTokenizer
from squeezer.types import NamedArrays


def padded_batch(folder: Path, texts: list[str]) -> NamedArrays:
    """Right-padded int64 arrays, as the engine collates them."""
    tokens = TextTokenizer(folder / "tokenizer.json", 64).encode(texts, truncate=True)
    width = max(t.num_tokens for t in tokens)
    ids = np.zeros((len(tokens), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, tok in enumerate(tokens):
        n = tok.num_tokens
        ids[row, :n], mask[row, :n] = tok.ids, 1
        if tok.type_ids is not None:
            types[row, :n] = tok.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1)


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(axis=1) / m.sum(axis=1)
