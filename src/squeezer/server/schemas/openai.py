"""Request and response types of OpenAI's embeddings and models API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from squeezer.backends.constraints import Constraint
from squeezer.server.schemas.structured import (
    ResponseFormat,
    StructuredOutputs,
    one_constraint,
    schema_text,
)
from squeezer.types import PrecisionReport


class EmbeddingsRequest(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers do for client extras.
    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, gt=0)
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "squeezer"
    #: The version ``id`` alone means now (``id:VERSION``, ``id@ALIAS`` name others).
    version: str
    tasks: list[str]
    backend: str
    device: str
    dtype: str
    content_hash: str
    #: ``content_hash``'s parts: weights, config, tokenizer, special tokens, chat
    #: template, runtime artifact.
    fingerprint: dict[str, str]
    #: The golden-output gate's last check (None: no lockfile).
    golden: dict[str, Any] | None = None
    precision: PrecisionReport | None = None
    #: python, torch, transformers, tokenizers, and the serving runtime when not torch.
    versions: dict[str, str | None]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Sampling(BaseModel):
    """Fields completions and chat share: OpenAI's, plus the extras vLLM accepts and
    benchmark clients send. Unknown fields are refused, as OpenAI refuses them."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=16)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    #: Token id (as a string) -> bias in [-100, 100]; bounded so that one request cannot
    #: make every step of its batch index a vocabulary's worth of entries.
    logit_bias: dict[str, float] | None = Field(default=None, max_length=4096)
    user: str | None = None
    # vLLM's extra sampling parameters.
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    typical_p: float | None = Field(default=None, gt=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    stop_token_ids: list[int] | None = Field(default=None, max_length=64)
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    #: vLLM's: logprobs of the prompt's tokens, with this many alternatives each.
    prompt_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Structured outputs: OpenAI's, vLLM's current and older fields (one at most).
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    def constraint(self) -> Constraint | None:
        """The request's structured-output constraint, checked (400 when bad)."""
        guided_json = None
        if self.guided_json is not None:
            guided_json = Constraint("json_schema", schema_text(self.guided_json, "guided_json"))
        return one_constraint(
            {
                "response_format": None
                if self.response_format is None
                else self.response_format.constraint(),
                "structured_outputs": None
                if self.structured_outputs is None
                else self.structured_outputs.constraint(),
                "guided_json": guided_json,
                "guided_regex": None
                if self.guided_regex is None
                else Constraint("regex", self.guided_regex),
                "guided_choice": None
                if self.guided_choice is None
                else Constraint.choice(self.guided_choice),
                "guided_grammar": None
                if self.guided_grammar is None
                else Constraint("grammar", self.guided_grammar),
            }
        )


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    #: 0 with ``echo``: the prompt alone (its logprobs, for evaluation harnesses).
    max_tokens: int | None = Field(default=16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    #: The arguments' JSON schema.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionName


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[ChatTool] | None = Field(default=None, max_length=128)
    #: ``auto`` (the default with tools): the model may call them; ``required`` or a
    #: named function: it must (the call's syntax and arguments are enforced).
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None

    def chat_unsupported(self) -> list[str]:
        refused = {"modalities": bool(self.modalities and self.modalities != ["text"])}
        return [name for name, set_ in refused.items() if set_]
