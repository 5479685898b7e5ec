"""The LiteRT converter's side of ``build_litert``: a script its own venv runs.

litert-torch pins ``typing-extensions<4.13`` (through ``xdsl``), which would move
squeezer's pydantic, so it lives in a venv of its own and this file runs there as a
script. It imports nothing from squeezer (the venv does not have it) and prints one
JSON line of facts for the build to record.

    python _litert_convert.py convert SOURCE OUT.tflite --buckets 1x16,8x16,... [--classifier]
        [--token-types]
    python _litert_convert.py quantize FLOAT.tflite OUT.tflite

The graph is traced once per (batch, length) bucket and every bucket becomes one
signature, ``b{batch}_l{length}``, of a single ``.tflite``: signatures share the
weights (one copy in the file, one packed copy in XNNPACK), and static shapes keep
the whole graph in XNNPACK, where a dynamic-shape conversion ran at half the speed.

Two choices come from litert-torch 0.10.0's limits, met while trying dynamic shapes
(kept for the static ones used here; the parity tests check them):

- the padding mask goes to the model as an additive 4-D float mask, which
  transformers documents it uses as is: its own mask builder emits ``arange`` ops that
  litert-torch's int64 -> int32 pass fails on when a length is symbolic;
- eager attention rather than SDPA: with a dynamic batch, the SDPA lowering mixed
  the rows of a batch; eager attention converts to plain BATCH_MATMULs.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import time
import warnings
from importlib.metadata import version
from typing import Any

_PACKAGES = ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "torch", "transformers")
HIDDEN, LOGITS = "last_hidden_state", "logits"


def _versions() -> dict[str, str]:
    return {p: version(p) for p in _PACKAGES}


def _buckets(text: str) -> list[tuple[int, int]]:
    return [(int(b), int(length)) for b, length in (s.split("x") for s in text.split(","))]


def convert(args: argparse.Namespace) -> dict[str, Any]:
    import litert_torch
    import torch
    import transformers

    auto = (
        transformers.AutoModelForSequenceClassification
        if args.classifier
        else transformers.AutoModel
    )
    model = auto.from_pretrained(args.source, attn_implementation="eager", local_files_only=True)
    model.eval()
    takes_types = (
        args.token_types and "token_type_ids" in inspect.signature(model.forward).parameters
    )
    min_float = torch.finfo(torch.float32).min

    class Named(torch.nn.Module):
        """Keyword inputs in, a dict out: the signature's tensors get these names."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
            mask = inputs["attention_mask"][:, None, None, :].to(torch.float32)
            inputs["attention_mask"] = (1.0 - mask) * min_float
            if not args.classifier:
                return {HIDDEN: self.model(**inputs).last_hidden_state}
            out = self.model(**inputs, output_hidden_states=True)
            return {HIDDEN: out.hidden_states[-1], LOGITS: out.logits}

    wrapper = Named().eval()
    vocab = int(model.config.vocab_size)
    converter = None
    for batch, length in _buckets(args.buckets):
        ids = torch.randint(5, vocab, (batch, length))
        sample = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if takes_types:
            sample["token_type_ids"] = torch.zeros_like(ids)
        name = f"b{batch}_l{length}"
        if converter is None:
            converter = litert_torch.signature(name, wrapper, sample_kwargs=sample)
        else:
            converter = converter.signature(name, wrapper, sample_kwargs=sample)
    assert converter is not None, "no buckets"
    with torch.inference_mode():
        edge = converter.convert()
    edge.export(args.out)
    return {
        "signatures": len(_buckets(args.buckets)),
        "inputs": list(sample),
        "outputs": [HIDDEN, LOGITS] if args.classifier else [HIDDEN],
        "attention": "eager",
    }


def quantize(args: argparse.Namespace) -> dict[str, Any]:
    """Dynamic-range int8: per-channel int8 weights, float activations quantized per
    call inside the kernels (ai-edge-quantizer's ``dynamic_wi8_afp32`` recipe)."""
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(args.source, recipe.dynamic_wi8_afp32())
    qt.quantize(serialize_to_path=args.out, enable_progress_report=False)
    return {"recipe": "dynamic_wi8_afp32"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert")
    c.add_argument("source")
    c.add_argument("out")
    c.add_argument("--buckets", required=True)
    c.add_argument("--classifier", action="store_true")
    c.add_argument("--token-types", action="store_true")
    q = sub.add_parser("quantize")
    q.add_argument("source")
    q.add_argument("out")
    args = parser.parse_args()

    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "0")
    logging.getLogger().setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    facts = convert(args) if args.command == "convert" else quantize(args)
    facts |= {"seconds": round(time.perf_counter() - t0, 1), "versions": _versions()}
    sys.stdout.write("\n" + json.dumps(facts) + "\n")


if __name__ == "__main__":
    main()
