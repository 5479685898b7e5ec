"""What a model version is, as bytes: its fingerprint; and whether its tokenizer fits
its model, checked at every load.

The fingerprint is one sha256 over six parts, each a sha256 of its own: the weights,
``config.json``, the tokenizer's files, the special tokens (roles and ids), the chat
template, and a runtime artifact's files (an optimizer's ONNX, OpenVINO or
CTranslate2 output). Two versions that differ say where they differ. Library
versions are not part of it: an upgrade is judged by the golden-output gate
(``optimize/golden.py``), not by a changed hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from squeezer.errors import ModelLoadError
from squeezer.models.folder import LOCKFILE_NAME, ModelFolder

__all__ = ["LOCKFILE_NAME", "PARTS", "Fingerprint", "check_consistency", "fingerprint"]
_WEIGHTS = (".safetensors", ".bin", ".pt", ".gguf")
_ARTIFACT = (".onnx", ".data", ".xml", ".ort")
_ARTIFACT_FILES = ("squeezer-manifest.json", "model.bin", "shared_vocabulary.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "merges.txt", "vocab.json", "spiece.model")
_CONFIG_FILES = ("config.json", "generation_config.json", "config_sentence_transformers.json")
PARTS = ("weights", "config", "tokenizer", "special_tokens", "chat_template", "artifact")


@dataclass(frozen=True, slots=True)
class Fingerprint:
    digest: str
    #: Each part's own sha256 (``PARTS``); an absent part hashes nothing.
    parts: dict[str, str] = field(default_factory=dict)

    def differences(self, other: Fingerprint) -> list[str]:
        """The parts whose hashes differ."""
        return [p for p in PARTS if self.parts.get(p) != other.parts.get(p)]


def _hash_files(root: Path, files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _hash_value(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _tokenizer_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def chat_template(path: Path) -> str | None:
    """The chat template the tokenizer files hold (a ``.jinja`` file wins)."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = _tokenizer_config(path).get("chat_template")
    if isinstance(template, list):  # named templates
        return json.dumps(template, sort_keys=True)
    return template if isinstance(template, str) else None


def fingerprint(folder: ModelFolder) -> Fingerprint:
    """The fingerprint of ``folder`` (see the module docstring)."""
    root = folder.path
    files = [
        f
        for f in root.rglob("*")
        if f.is_file() and f.name != LOCKFILE_NAME and ".cache" not in f.parts
    ]
    cfg = folder.config
    special = {
        "roles": dict(sorted(folder.special_tokens.items())),
        "ids": {k: cfg.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
    }
    parts = {
        "weights": _hash_files(root, [f for f in files if f.suffix in _WEIGHTS]),
        "config": _hash_files(root, [f for f in files if f.name in _CONFIG_FILES]),
        "tokenizer": _hash_files(root, [f for f in files if f.name in _TOKENIZER_FILES]),
        "special_tokens": _hash_value(special),
        "chat_template": _hash_value(chat_template(root)),
        "artifact": _hash_files(
            root, [f for f in files if f.suffix in _ARTIFACT or f.name in _ARTIFACT_FILES]
        ),
    }
    digest = hashlib.sha256("".join(parts[p] for p in PARTS).encode()).hexdigest()
    return Fingerprint(digest, parts)


# -- tokenizer and model consistency -------------------------------------------------


def _tokenizer_ids(path: Path) -> tuple[int, dict[str, int]]:
    """The largest id the tokenizer can emit, and its tokens' ids by text."""
    data = json.loads((path / "tokenizer.json").read_text())
    vocab: dict[str, int] = {}
    model_vocab = data.get("model", {}).get("vocab")
    if isinstance(model_vocab, dict):
        vocab.update({str(k): int(v) for k, v in model_vocab.items()})
    elif isinstance(model_vocab, list):  # unigram: [token, score] pairs by id
        vocab.update({str(entry[0]): i for i, entry in enumerate(model_vocab)})
    for added in data.get("added_tokens") or []:
        vocab[str(added["content"])] = int(added["id"])
    return (max(vocab.values()) if vocab else -1), vocab


def _ids(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int)]
    return []


def check_consistency(
    folder: ModelFolder, *, max_length: int | None = None, position_offset: int = 0
) -> None:
    """Refuse a tokenizer that does not fit its model (``ModelLoadError`` naming the
    file and the figures): its largest id must be below the embedding rows (a padded
    vocabulary is fine), the pad, eos and bos ids must be rows too, and the served
    length must fit the position table. A chat template is checked where it is
    rendered (``tasks.generate``)."""
    path, cfg = folder.path, folder.config
    rows = cfg.get("vocab_size")
    if not isinstance(rows, int) or rows <= 0:
        return  # nothing to check against (an artifact's config may not say)
    try:
        largest, vocab = _tokenizer_ids(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{path / 'tokenizer.json'}: cannot be read ({e})") from e
    if largest >= rows:
        raise ModelLoadError(
            f"{path / 'tokenizer.json'} emits token ids up to {largest}, but "
            f"{path / 'config.json'} has {rows} embedding rows (vocab_size): the tokenizer "
            "does not belong to these weights"
        )
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        bad = [i for i in _ids(cfg.get(key)) if not 0 <= i < rows]
        if bad:
            raise ModelLoadError(
                f"{path / 'config.json'}: {key} {bad} is outside the {rows} embedding rows"
            )
    for role in ("pad_token", "eos_token", "bos_token"):
        token = folder.special_tokens.get(role)
        if token is not None and token in vocab and vocab[token] >= rows:
            raise ModelLoadError(
                f"{path / 'tokenizer.json'}: {role} {token!r} is id {vocab[token]}, outside "
                f"the {rows} embedding rows"
            )
    positions = cfg.get("max_position_embeddings")
    fits = not isinstance(positions, int) or positions <= 0 or max_length is None
    if not fits and max_length + position_offset > positions:  # type: ignore[operator]
        raise ModelLoadError(
            f"{path}: the served length {max_length} (+{position_offset} offset) exceeds "
            f"the position table of {positions} (config.json max_position_embeddings)"
        )
