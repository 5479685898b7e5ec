"""The embedding task: pooled sentence vectors (``/embed``) and per-token vectors.

Pooling follows the model's sentence-transformers config (mean, CLS or last token),
computed for the whole batch at once on the compute thread; normalization is a
per-request choice, applied when the result is finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from squeezer.errors import InvalidRequestError, TokenizerError
from squeezer.models import ModelFolder
from squeezer.tasks.encoder import EncoderItem, Head, Row
from squeezer.tasks.tokenizer import TextTokenizer
from squeezer.types import NamedArrays, TruncationDirection

FloatArray = npt.NDArray[np.float32]


@dataclass(slots=True)
class EmbedRequest:
    """An embedding request, whatever dialect it arrived in."""

    #: Strings, or token-id lists used as given.
    inputs: list[str] | list[list[int]]
    normalize: bool = True
    truncate: bool = False
    truncation_direction: TruncationDirection = TruncationDirection.RIGHT
    prompt_name: str | None = None
    #: False asks for every token's vector (TEI ``/embed_all``) instead of one per input.
    pooled: bool = True
    #: Keep only the first N dimensions (then re-normalize); None keeps all.
    dimensions: int | None = None


@dataclass(slots=True)
class EmbedResult:
    #: (n, dim) for pooled requests; otherwise n arrays of (tokens, hidden).
    embeddings: FloatArray | list[FloatArray]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class PooledHead:
    """One vector per input, pooled over the batch at once (mean, CLS or last token)."""

    pooling: str
    outputs = ("last_hidden_state",)

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls", "last"):
            raise ValueError(f"pooling {self.pooling!r}: expected mean, cls or last")

    def take(self, outputs: NamedArrays, batch: Sequence[Row]) -> list[FloatArray]:
        hidden = np.asarray(outputs["last_hidden_state"], dtype=np.float32)
        rows = np.fromiter((r.row for r in batch), dtype=np.int64, count=len(batch))
        lengths = np.fromiter((r.length for r in batch), dtype=np.int64, count=len(batch))
        states = hidden[rows]
        if self.pooling == "cls":
            pooled = states[:, 0]
        elif self.pooling == "last":
            pooled = states[np.arange(len(batch)), lengths - 1]
        else:
            mask = (np.arange(states.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
            summed = np.einsum("bld,bl->bd", states, mask)
            pooled = summed / np.maximum(lengths, 1)[:, None].astype(np.float32)
        return list(pooled)


@dataclass(frozen=True, slots=True)
class TokenVectorsHead:
    """Every token's vector, unpooled (TEI ``/embed_all``)."""

    outputs = ("last_hidden_state",)

    def take(self, outputs: NamedArrays, batch: Sequence[Row]) -> list[FloatArray]:
        hidden = np.asarray(outputs["last_hidden_state"], dtype=np.float32)
        return [hidden[r.row, : r.length].copy() for r in batch]


class EmbedTask:
    """Pre- and post-processing of embeddings for one model."""

    def __init__(self, folder: ModelFolder, tokenizer: TextTokenizer) -> None:
        self.folder = folder
        self.tokenizer = tokenizer
        self.pooled_head = PooledHead(folder.pooling)
        self.tokens_head = TokenVectorsHead()
        self.dimension = folder.hidden_size

    def prompt(self, prompt_name: str | None) -> str:
        """Text to prepend for ``prompt_name`` (or the model's default prompt)."""
        name = prompt_name or self.folder.default_prompt_name
        if name is None:
            return ""
        if name not in self.folder.prompts:
            known = ", ".join(sorted(self.folder.prompts)) or "none"
            raise InvalidRequestError(
                f"prompt_name {name!r} is not defined by this model (it has: {known})",
                param="prompt_name",
            )
        return self.folder.prompts[name]

    def prepare(self, request: EmbedRequest) -> list[EncoderItem]:
        """Validate and tokenize; runs off the event loop for large requests."""
        if request.dimensions is not None and not 0 < request.dimensions <= self.dimension:
            raise InvalidRequestError(
                f"dimensions must be between 1 and {self.dimension} for this model",
                param="dimensions",
            )
        inputs = request.inputs
        if inputs and all(isinstance(x, str) for x in inputs):
            prefix = self.prompt(request.prompt_name)
            texts = [prefix + str(t) for t in inputs] if prefix else list(inputs)
            if prefix and any(t == "" for t in inputs):
                raise InvalidRequestError("inputs cannot be empty strings", param="inputs")
            tokens = self.tokenizer.encode(
                texts,  # type: ignore[arg-type]
                truncate=request.truncate,
                direction=request.truncation_direction,
            )
        elif inputs and all(isinstance(x, list) for x in inputs):
            if request.prompt_name is not None:
                raise InvalidRequestError(
                    "prompt_name applies to text inputs, not token ids", param="prompt_name"
                )
            tokens = self.tokenizer.from_ids(
                inputs,  # type: ignore[arg-type]
                truncate=request.truncate,
                direction=request.truncation_direction,
            )
        elif not inputs:
            tokens = self.tokenizer.encode([])  # raises EmptyInputError
        else:
            raise TokenizerError(
                "inputs must be all strings or all lists of token ids", param="inputs"
            )
        head: Head = self.pooled_head if request.pooled else self.tokens_head
        return [EncoderItem(t, head) for t in tokens]

    def finish(
        self, request: EmbedRequest, items: Sequence[EncoderItem], results: list[Any]
    ) -> EmbedResult:
        prompt_tokens = sum(it.num_tokens for it in items)
        if not request.pooled:
            return EmbedResult([np.asarray(r, dtype=np.float32) for r in results], prompt_tokens)
        vectors = np.stack(results).astype(np.float32, copy=False)
        if request.dimensions is not None:
            vectors = vectors[:, : request.dimensions]
        if request.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return EmbedResult(np.ascontiguousarray(vectors), prompt_tokens)
