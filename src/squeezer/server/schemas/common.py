"""Types more than one dialect shows."""

from __future__ import annotations

from pydantic import BaseModel


class Precision(BaseModel):
    """An fp16/bf16 model's outputs against its fp32 weights, measured at load on
    held-out text (``PrecisionReport``)."""

    dtype: str
    reference: str
    task: str
    texts: int
    min_cosine: float
    mean_cosine: float
    agreement: float
    max_prob_diff: float
