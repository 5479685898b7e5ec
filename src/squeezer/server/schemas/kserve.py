"""The Open Inference Protocol's error body (KServe v2, Triton)."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorResponse(BaseModel):
    error: str
