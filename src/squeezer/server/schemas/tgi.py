"""Request and response types of TGI's generate API, as its OpenAPI contract has them.

``InferenceClient.text_generation`` sends every parameter (unset ones as null), so
all of TGI's are accepted; the few squeezer does not implement are refused by value
(a 422 naming them), never silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from squeezer.server.schemas.structured import TgiGrammar


class GenerateParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        # Clients send every parameter, unset ones as null.
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, gt=0)
    top_k: int | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0, lt=1)
    typical_p: float | None = Field(default=None, gt=0, lt=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    frequency_penalty: float | None = None
    stop: list[str] = Field(default_factory=list)
    seed: int | None = Field(default=None, ge=0, le=2**64 - 1)  # TGI: a u64
    do_sample: bool = False
    details: bool = False
    decoder_input_details: bool = False
    return_full_text: bool | None = None
    truncate: int | None = Field(default=None, ge=1)
    top_n_tokens: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = Field(default=None, ge=1)
    watermark: bool = False
    grammar: TgiGrammar | None = None
    adapter_id: str | None = None
    #: Not TGI's: vLLM's, which benchmark clients send to get exactly max_new_tokens.
    ignore_eos: bool = False

    def unsupported(self) -> list[str]:
        """Parameters set to something squeezer does not do."""
        refused = {
            "best_of": (self.best_of or 1) > 1,
            "watermark": self.watermark,
            "adapter_id": self.adapter_id is not None,
            "frequency_penalty": bool(self.frequency_penalty),
        }
        return [name for name, set_ in refused.items() if set_]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str = Field(min_length=1)
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    #: ``POST /`` (TGI's compat route) streams when this is true.
    stream: bool = False


class Token(BaseModel):
    id: int
    text: str
    logprob: float | None
    special: bool


class Details(BaseModel):
    finish_reason: Literal["length", "eos_token", "stop_sequence"]
    generated_tokens: int
    seed: int | None
    prefill: list[Token]
    tokens: list[Token]
    top_tokens: list[list[Token]] | None = None


class GenerateResponse(BaseModel):
    generated_text: str
    details: Details | None = None


class StreamDetails(BaseModel):
    finish_reason: Literal["length", "eos_token", "stop_sequence"]
    generated_tokens: int
    seed: int | None
    input_length: int


class StreamResponse(BaseModel):
    index: int
    token: Token
    top_tokens: list[Token] | None = None
    generated_text: str | None = None
    details: StreamDetails | None = None


class ErrorResponse(BaseModel):
    """TGI's error body: TEI's shape with TGI's lowercase error types."""

    error: str
    error_type: Literal["validation", "generation", "overloaded", "unhealthy"]
