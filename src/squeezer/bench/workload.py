"""What a benchmark sends: request bodies for each API route, built from texts.

The route kind is read from the URL path (``/embed``, ``/v1/embeddings``,
``/v1/chat/completions``, ``/generate_stream``, ...) so that the same command measures
squeezer and any TEI-, OpenAI- or TGI-compatible peer. Bodies are rendered once, up
front: the load generator only cycles through bytes.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

from squeezer.optimize.corpus import load_texts

__all__ = ["RouteKind", "Workload", "WorkloadSpec", "build", "load_texts", "route_kind"]


class RouteKind(str, Enum):
    TEI_EMBED = "tei-embed"  # /embed, /embed_all
    TEI_PREDICT = "tei-predict"  # /predict
    TEI_RERANK = "tei-rerank"  # /rerank
    OPENAI_EMBEDDINGS = "openai-embeddings"  # /v1/embeddings
    HF = "hf"  # / or /models/NAME: {"inputs"}
    OPENAI_CHAT = "openai-chat"  # /v1/chat/completions (streamed)
    OPENAI_COMPLETIONS = "openai-completions"  # /v1/completions (streamed)
    TGI_STREAM = "tgi-stream"  # /generate_stream

    @property
    def generates(self) -> bool:
        return self in (RouteKind.OPENAI_CHAT, RouteKind.OPENAI_COMPLETIONS, RouteKind.TGI_STREAM)


_BY_SUFFIX = (
    ("/v1/chat/completions", RouteKind.OPENAI_CHAT),
    ("/v1/completions", RouteKind.OPENAI_COMPLETIONS),
    ("/v1/embeddings", RouteKind.OPENAI_EMBEDDINGS),
    ("/generate_stream", RouteKind.TGI_STREAM),
    ("/embed_all", RouteKind.TEI_EMBED),
    ("/embed", RouteKind.TEI_EMBED),
    ("/predict", RouteKind.TEI_PREDICT),
    ("/rerank", RouteKind.TEI_RERANK),
)


def route_kind(url: str) -> RouteKind:
    """The API a URL speaks, from its path; a bare host means TEI's ``/embed``."""
    path = urlsplit(url).path.rstrip("/")
    for suffix, kind in _BY_SUFFIX:
        if path.endswith(suffix):
            return kind
    if path == "" or re.fullmatch(r"(/models/[^/]+)?(/pipeline/[^/]+/[^/]+)?", path):
        return RouteKind.HF
    raise ValueError(
        f"cannot tell which API {url} speaks; give a route such as /embed, /predict, "
        "/rerank, /v1/embeddings, /v1/chat/completions, /v1/completions, /generate_stream "
        "or /models/NAME"
    )


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """How to build requests: batch size, length of inputs, generation settings."""

    #: Inputs per request (texts for embeddings; documents for rerank).
    batch_size: int = 1
    #: Input length in words: "corpus" keeps the texts as they are; "fixed:N" cuts or
    #: repeats each text to N words; "uniform:A-B" draws a length per request.
    lengths: str = "corpus"
    model: str | None = None
    #: Generation: tokens per response, and whether to ask the server to ignore EOS so
    #: every response has that many (comparable runs).
    max_tokens: int = 64
    ignore_eos: bool = True
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Workload:
    kind: RouteKind
    bodies: list[bytes]
    #: Inputs per body (items/s), aligned with ``bodies``.
    items: list[int]
    #: Characters of input text per body (a cheap size measure when tokens are unknown).
    chars: list[int]


def _shape(text: str, words: int) -> str:
    base = text.split() or ["text"]
    out = (base * (words // len(base) + 1))[:words]
    return " ".join(out)


def _lengths(spec: WorkloadSpec, rng: random.Random) -> tuple[int, int] | None:
    if spec.lengths == "corpus":
        return None
    kind, _, arg = spec.lengths.partition(":")
    try:
        if kind == "fixed":
            n = int(arg)
            return n, n
        if kind == "uniform":
            lo, _, hi = arg.partition("-")
            return int(lo), int(hi)
    except ValueError:
        pass
    raise ValueError(f"--lengths {spec.lengths!r}: expected corpus, fixed:N or uniform:A-B")


def build(kind: RouteKind, texts: Sequence[str], spec: WorkloadSpec, count: int) -> Workload:
    """``count`` distinct bodies cycling through ``texts`` (the generator cycles them)."""
    rng = random.Random(spec.seed)
    span = _lengths(spec, rng)
    bodies: list[bytes] = []
    items: list[int] = []
    chars: list[int] = []
    cursor = 0
    for _ in range(count):
        batch = []
        for _ in range(spec.batch_size):
            text = texts[cursor % len(texts)]
            cursor += 1
            if span is not None:
                text = _shape(text, rng.randint(*span))
            batch.append(text)
        bodies.append(json.dumps(_body(kind, batch, spec)).encode())
        items.append(len(batch))
        chars.append(sum(len(t) for t in batch))
    return Workload(kind, bodies, items, chars)


def _body(kind: RouteKind, batch: list[str], spec: WorkloadSpec) -> dict[str, object]:
    one: object = batch[0] if len(batch) == 1 else batch
    model = {"model": spec.model} if spec.model else {}
    if kind is RouteKind.TEI_EMBED or kind is RouteKind.TEI_PREDICT:
        predict = [[t] for t in batch] if len(batch) > 1 else batch[0]
        return {"inputs": predict if kind is RouteKind.TEI_PREDICT else one}
    if kind is RouteKind.TEI_RERANK:
        return {"query": batch[0], "texts": batch}
    if kind is RouteKind.OPENAI_EMBEDDINGS:
        return {**model, "input": one}
    if kind is RouteKind.HF:
        return {"inputs": one}
    prompt = " ".join(batch)
    # Sent only when asked: servers that do not know vLLM's field refuse it (422).
    eos = {"ignore_eos": True} if spec.ignore_eos else {}
    if kind is RouteKind.OPENAI_CHAT:
        return {
            **model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": spec.max_tokens,
            "stream": True,
            **eos,
            "temperature": 0,
        }
    if kind is RouteKind.OPENAI_COMPLETIONS:
        return {
            **model,
            "prompt": prompt,
            "max_tokens": spec.max_tokens,
            "stream": True,
            **eos,
            "temperature": 0,
        }
    return {
        "inputs": prompt,
        "parameters": {"max_new_tokens": spec.max_tokens, **eos},
    }
