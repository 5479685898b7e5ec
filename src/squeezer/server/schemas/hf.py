"""Request types of the Hugging Face Inference API (``{"inputs", "parameters"}``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class FeatureExtractionParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")

    normalize: bool | None = None
    truncate: bool | None = None
    truncation_direction: str | None = None
    prompt_name: str | None = None


class InferenceRequest(BaseModel):
    """The body every HF Inference API task shares; ``parameters`` are per task."""

    model_config = ConfigDict(extra="ignore")

    inputs: Any
    parameters: dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    # Top-level fields ``InferenceClient.feature_extraction`` sends besides ``inputs``.
    normalize: bool | None = None
    truncate: bool | None = None
    truncation_direction: str | None = None
    prompt_name: str | None = None
