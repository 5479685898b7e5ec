"""Request and response types of the rerank API Cohere and Jina defined and vLLM and
Infinity serve (``POST /v1/rerank``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Document(BaseModel):
    text: str


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    query: str
    #: Plain strings, or Cohere's ``{"text": ...}`` objects.
    documents: list[str | Document]
    #: Results kept, best first; None or 0 keeps all (vLLM's convention).
    top_n: int | None = Field(default=None, ge=0)
    #: Echo each document in its result (Jina's default; vLLM always echoes).
    return_documents: bool = True
    #: Infinity's extension: logits instead of sigmoid probabilities.
    raw_scores: bool = False
    #: Cut inputs longer than the model takes instead of refusing them.
    truncate: bool = False


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: Document | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]
