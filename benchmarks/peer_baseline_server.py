"""The out-of-box baselines: a model behind a plain FastAPI endpoint, one request at a time.

What a team writes on day one: a ``def`` route (FastAPI runs it in its thread pool),
pydantic in and out, the model called once per request, no batching.

    python benchmarks/peer_baseline_server.py pipeline|st MODEL_DIR PORT

``pipeline``: ``transformers.pipeline("feature-extraction")`` then mean pooling and L2
normalization (what sentence-transformers does for this model); ``st``:
``SentenceTransformer.encode``. Both answer TEI's ``POST /embed`` shape.
"""

from __future__ import annotations

import sys

import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class EmbedRequest(BaseModel):
    inputs: str | list[str]


def build(kind: str, model_dir: str) -> FastAPI:
    app = FastAPI()
    if kind == "pipeline":
        from transformers import pipeline

        extract = pipeline("feature-extraction", model=model_dir, device="cpu")

        def encode(texts: list[str]) -> list[list[float]]:
            out = []
            for text in texts:
                tokens = np.asarray(extract(text)[0], dtype=np.float32)
                vec = tokens.mean(axis=0)
                out.append((vec / np.linalg.norm(vec)).tolist())
            return out

    elif kind == "st":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(model_dir, device="cpu")

        def encode(texts: list[str]) -> list[list[float]]:
            vectors = model.encode(texts, normalize_embeddings=True)
            return [v.tolist() for v in vectors]

    else:
        raise SystemExit(f"unknown baseline {kind!r}: pipeline or st")

    @app.post("/embed")
    def embed(body: EmbedRequest) -> list[list[float]]:
        return encode([body.inputs] if isinstance(body.inputs, str) else body.inputs)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    kind, model_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    uvicorn.run(build(kind, model_dir), host="127.0.0.1", port=port, log_level="warning")
