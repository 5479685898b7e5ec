"""Request types of the Hugging Face Inference API (``{"inputs", "parameters"}``).

``parameters`` are per task and named as ``transformers`` pipelines and
``huggingface_hub``'s ``InferenceClient`` name them; an unknown parameter is a 422
naming it (a typo silently ignored would change answers unnoticed).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class _Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    truncate: bool = False
    truncation_direction: Literal["left", "right", "Left", "Right"] = "right"


class TextPair(BaseModel):
    """A text pair the way the text-classification pipeline takes one."""

    model_config = ConfigDict(extra="forbid")

    text: str
    text_pair: str


class TextClassificationParameters(_Parameters):
    #: Labels per input, best first; all when absent.
    top_k: int | None = Field(default=None, ge=1)
    function_to_apply: Literal["sigmoid", "softmax", "none"] | None = None


class TokenClassificationParameters(_Parameters):
    aggregation_strategy: str | None = None
    ignore_labels: list[str] | None = None
    stride: int | None = Field(default=None, ge=0)


class FillMaskParameters(_Parameters):
    top_k: int = Field(default=5, ge=1)
    targets: str | list[str] | None = None


class ZeroShotParameters(_Parameters):
    #: A list, or one comma-separated string (as the pipeline accepts).
    candidate_labels: list[str] | str
    multi_label: bool = False
    hypothesis_template: str | None = None


class QuestionAnsweringInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str
    context: str


class QuestionAnsweringParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(default=1, ge=1)
    max_answer_len: int = Field(default=15, ge=1)
    doc_stride: int | None = Field(default=None, ge=0)
    max_seq_len: int | None = Field(default=None, ge=1)
    max_question_len: int = Field(default=64, ge=1)
    handle_impossible_answer: bool = False
    align_to_words: bool = True
