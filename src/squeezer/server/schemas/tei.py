"""Request and response types of TEI 1.9's HTTP contract."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from squeezer.types import PrecisionReport, TruncationDirection

#: A string, token ids, or a list of either (TEI's ``Input``).
TeiInput = str | list[str] | list[int] | list[list[int]]
Direction = Literal["Left", "Right", "left", "right"]


def direction(value: str) -> TruncationDirection:
    return TruncationDirection(value.lower())


class _Request(BaseModel):
    # TEI (serde) ignores fields it does not know; clients send extras such as "model".
    model_config = ConfigDict(extra="ignore")


class EmbedRequest(_Request):
    inputs: TeiInput
    normalize: bool = True
    truncate: bool | None = False
    truncation_direction: Direction = "Right"
    prompt_name: str | None = None
    dimensions: int | None = Field(default=None, gt=0)


class EmbedAllRequest(_Request):
    inputs: TeiInput
    truncate: bool | None = False
    truncation_direction: Direction = "Right"
    prompt_name: str | None = None


class SimilarityInput(_Request):
    source_sentence: str
    sentences: list[str]


class SimilarityParameters(_Request):
    truncate: bool | None = False
    truncation_direction: Direction = "Right"
    prompt_name: str | None = None


class SimilarityRequest(_Request):
    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


class TokenizeRequest(_Request):
    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None


class DecodeRequest(_Request):
    ids: list[int] | list[list[int]]
    skip_special_tokens: bool = True


#: A text, a [text, text_pair] pair, or a batch of [text] and [text, text_pair] lists.
PredictInput = str | list[str] | list[list[str]]


class PredictRequest(_Request):
    inputs: PredictInput
    truncate: bool | None = False
    truncation_direction: Direction = "Right"
    raw_scores: bool = False


class RerankRequest(_Request):
    query: str
    texts: list[str]
    truncate: bool | None = False
    truncation_direction: Direction = "Right"
    raw_scores: bool = False
    return_text: bool = False


class Prediction(BaseModel):
    score: float
    label: str


class Rank(BaseModel):
    index: int
    score: float
    text: str | None = None


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class ErrorResponse(BaseModel):
    error: str
    error_type: Literal["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"]


class EmbeddingModelType(BaseModel):
    pooling: str


class ClassifierModelType(BaseModel):
    id2label: dict[str, str]
    label2id: dict[str, int]


class ServedModelInfo(BaseModel):
    name: str
    #: The version the name alone means now.
    version: str
    tasks: list[str]
    backend: str
    device: str
    dtype: str
    content_hash: str
    #: ``content_hash``'s parts (weights, config, tokenizer, special tokens, chat
    #: template, runtime artifact).
    fingerprint: dict[str, str]
    #: The golden-output gate's last check (None: no lockfile).
    golden: dict[str, Any] | None = None
    #: Where the weights were loaded from: shown to admins only (``--admin-api-key``;
    #: everyone when no admin key is set), null for others.
    path: str | None
    max_input_length: int
    precision: PrecisionReport | None = None
    versions: dict[str, str | None]


class Info(BaseModel):
    """TEI's ``Info`` (every required field) plus squeezer's ``models`` list."""

    # TEI's field names start with ``model_``, pydantic < 2.10's protected namespace.
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    #: The name requests use for it (TEI's ``--served-model-name``).
    served_model_name: str
    model_sha: str | None
    model_dtype: str
    #: ``{"embedding": ...}``, ``{"classifier": ...}`` or ``{"reranker": ...}``.
    model_type: dict[str, EmbeddingModelType | ClassifierModelType]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None = None
    docker_label: str | None = None
    #: The default model's library versions (python, torch, transformers, tokenizers,
    #: and its runtime when not torch); each model in ``models`` has its own.
    versions: dict[str, str | None]
    models: list[ServedModelInfo]
