"""Bodies of the Open Inference Protocol (KServe v2, Triton) that are not tensors:
the error body, an infer request's ``parameters``, and the generate extension's."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr


class ErrorResponse(BaseModel):
    error: str


class InferParameters(BaseModel):
    """An infer request's ``parameters``. Those not named here are the HF Inference
    API's, for the tasks answered as ``RESULT`` (its schemas check them), or Triton's
    own (``binary_data_output``, ``sequence_id``, ...)."""

    model_config = ConfigDict(extra="allow")

    task: StrictStr | None = None
    truncate: StrictBool = False
    truncation_direction: Literal["left", "right", "Left", "Right"] = "right"
    normalize: StrictBool = True
    prompt_name: StrictStr | None = None
    dimensions: StrictInt | None = None
    function_to_apply: StrictStr | None = None
    raw_scores: StrictBool = False


class GenerateParameters(BaseModel):
    """The generate extension's parameters: the names of Triton's vLLM and
    TensorRT-LLM backends. Given at the body's top level or under ``parameters``."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: StrictInt = Field(default=16, description="as vLLM's default")
    temperature: float = Field(default=1.0, ge=0, description="0 is greedy")
    top_p: float = 1.0
    top_k: StrictInt = 0
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] = Field(default_factory=list)
    ignore_eos: StrictBool = False
    repetition_penalty: float = Field(default=1.0, gt=0)
    min_p: float = Field(default=0.0, ge=0, le=1)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    min_tokens: StrictInt = Field(default=0, ge=0)
    stop_token_ids: list[StrictInt] = Field(default_factory=list, max_length=64)
    skip_special_tokens: StrictBool = True
    spaces_between_special_tokens: StrictBool = True
    include_stop_str_in_output: StrictBool = False
    stream: StrictBool | None = None
    exclude_input_in_output: StrictBool = True
