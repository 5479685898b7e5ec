"""The server users write by hand, on the GPU: ``peer_baseline_server.py st`` placed on DEVICE.

    python3 benchmarks/gpu/st_server.py MODEL_DIR PORT [--device cuda] [--dtype float16]

The baseline stays the one the CPU benchmarks measure (a FastAPI ``def`` route, pydantic
in and out, ``SentenceTransformer.encode`` per request); that script puts the model on
the CPU in fp32, so here its ``SentenceTransformer`` is swapped, before the app is built,
for one that loads onto ``--device`` in ``--dtype``. Nothing else changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import peer_baseline_server
import sentence_transformers
import torch
import uvicorn


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("port", type=int)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16")
    a = p.parse_args(argv)
    base = sentence_transformers.SentenceTransformer

    class Placed(base):  # type: ignore[misc, valid-type]
        def __init__(self, path: str, *args: Any, **kwargs: Any) -> None:
            kwargs["device"] = a.device
            super().__init__(path, *args, **kwargs)
            self.to(getattr(torch, a.dtype))

    # build() reads the class at call time.
    sentence_transformers.SentenceTransformer = Placed  # type: ignore[misc, assignment]
    app = peer_baseline_server.build("st", a.model_dir)
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
