"""GGUF files as Hugging Face folders, converted once and cached by the file's hash.

``transformers`` loads a GGUF file by dequantizing it (``gguf_file=``), which takes
~25 s for SmolLM2-135M on 2 cores; the converted weights load in under a second. So
the first start converts and writes a plain folder (config, safetensors, tokenizer,
chat template) under a key of the file's sha256, and every later start, and every
other process, loads that folder. A changed file gets a new key, never a stale cache.

A converted folder also names the GGUF it came from (``source_gguf``), so a runtime
that runs the quantized file itself (llama.cpp) can be given the folder that every
other runtime loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from squeezer.errors import ModelLoadError

log = logging.getLogger("squeezer.models")
GGUF_SUFFIX = ".gguf"
_DONE = ".converted"
#: In a converted folder: the GGUF it was made from, to find that file again.
SOURCE_FILE = "gguf_source.json"


def gguf_cache_dir() -> Path:
    root = os.environ.get("SQUEEZER_GGUF_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "squeezer" / "gguf"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def converted_folder(gguf: Path, cache: Path | None = None) -> Path:
    """The HF folder for ``gguf``: from the cache, or converted now (and cached)."""
    if not gguf.is_file():
        raise ModelLoadError(f"{gguf} is not a file")
    sha256 = file_sha256(gguf)
    target = (cache or gguf_cache_dir()) / f"{gguf.stem}-{sha256[:16]}"
    if (target / _DONE).is_file():
        log.info("GGUF %s: converted weights found in %s", gguf.name, target)
        # The same bytes may now live elsewhere, or the folder predate the record.
        if _recorded(target) != _source_record(gguf, sha256):
            try:
                _write_source(gguf, sha256, target)
            except OSError as e:  # a read-only cache still serves its weights
                log.warning("GGUF %s: could not record its path in %s: %s", gguf.name, target, e)
        return target
    t0 = time.perf_counter()
    log.info("GGUF %s: dequantizing once (cached in %s)", gguf.name, target)
    scratch = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        _write_source(gguf, sha256, scratch)
        _convert(gguf, scratch)
        shutil.rmtree(target, ignore_errors=True)
        scratch.rename(target)
    except OSError:
        if not (target / _DONE).is_file():  # not another process's finished copy
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("GGUF %s: converted in %.1f s", gguf.name, time.perf_counter() - t0)
    return target


def _source_record(gguf: Path, sha256: str) -> dict[str, object]:
    stat = gguf.stat()
    return {
        "path": str(gguf.resolve()),
        "sha256": sha256,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def _recorded(folder: Path) -> dict[str, object] | None:
    try:
        record = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_source(gguf: Path, sha256: str, folder: Path) -> None:
    tmp = folder / f".{SOURCE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(_source_record(gguf, sha256), indent=2), encoding="utf-8")
    tmp.replace(folder / SOURCE_FILE)


def source_gguf(folder: Path) -> Path | None:
    """The GGUF file ``folder`` was converted from, if it is still there unchanged.

    Same size and modification time as at conversion is taken as unchanged without
    reading the file; a file whose time changed (copied, touched) is hashed. None for
    folders converted before the record existed, or not from a GGUF at all.
    """
    record = _recorded(folder)
    if record is None or not isinstance(record.get("path"), str):
        return None
    path = Path(str(record["path"]))
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file() or stat.st_size != record.get("size"):
        return None
    if stat.st_mtime_ns == record.get("mtime_ns"):
        return path
    return path if file_sha256(path) == record.get("sha256") else None


def _convert(gguf: Path, out: Path) -> None:
    import torch
    import transformers
    from safetensors.torch import save_model

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except (OSError, ValueError, ImportError) as e:
        raise ModelLoadError(
            f"transformers could not load {gguf} (it needs the gguf package): {e}"
        ) from e
    # save_pretrained refuses models loaded from GGUF; the weights are plain fp32 now.
    save_model(model, str(out / "model.safetensors"))
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer.save_pretrained(out)
    (out / _DONE).write_text(json.dumps({"source": str(gguf), "sha256": file_sha256(gguf)}))


def find_gguf(folder: Path) -> Path | None:
    """The one GGUF file in a folder without ``config.json`` (a packaged model)."""
    files = sorted(folder.glob(f"*{GGUF_SUFFIX}"))
    if len(files) > 1:
        names = ", ".join(f.name for f in files)
        raise ModelLoadError(f"{folder} holds several GGUF files ({names}): name one")
    return files[0] if files else None


def gguf_precision(gguf: Path) -> str:
    """The weights' quantization as the file name states it (``...Q4_1.gguf``: q4_1)."""
    suffix = gguf.stem.rsplit(".", 1)[-1]
    return suffix.lower() if suffix != gguf.stem else "gguf"
