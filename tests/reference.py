"""Reference outputs from plain ``transformers``: what squeezer must match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer


def reference_embeddings(
    path: Path, texts: list[str], *, pooling: str = "mean", normalize: bool = True
) -> np.ndarray:
    """Model forward one text at a time (no padding at all) + pooling + L2 norm."""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    out = []
    with torch.inference_mode():
        for text in texts:
            enc = tok(text, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]
            if pooling == "cls":
                vec = hidden[0]
            elif pooling == "last":
                vec = hidden[-1]
            else:
                vec = hidden.mean(dim=0)
            out.append(vec.numpy())
    vectors = np.stack(out)
    if normalize:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1)
