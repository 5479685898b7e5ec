"""What a model folder says about itself: architecture, tasks, pooling, limits, hash.

Everything here is read from files (``config.json``, sentence-transformers'
``modules.json`` and pooling config, ``tokenizer.json``); nothing loads weights, so
it is cheap and testable without torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from squeezer.errors import ModelLoadError
from squeezer.types import Task

_ENCODER_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "mpnet",
    "camembert",
    "electra",
    "deberta",
    "deberta-v2",
    "albert",
    "modernbert",
    "nomic_bert",
    "new",
}
_DECODER_SUFFIX = "ForCausalLM"
#: Head architectures by class-name suffix.
_HEAD_TASKS = {
    "ForSequenceClassification": Task.CLASSIFY,
    "ForTokenClassification": Task.TOKEN_CLASSIFY,
    "ForMaskedLM": Task.FILL_MASK,
    "ForQuestionAnswering": Task.QUESTION_ANSWERING,
}


def is_sequence_classifier(architectures: Sequence[str]) -> bool:
    """Whether a checkpoint carries a sequence-classification head: the exported graphs
    (OpenVINO, LiteRT, JAX) then give its logits beside the hidden states."""
    return any(a.endswith("ForSequenceClassification") for a in architectures)


#: Learned position tables of RoBERTa-style models start after the padding index.
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert"}
#: Files whose bytes define the model's behaviour, hashed for pinning.
_HASHED_SUFFIXES = (".safetensors", ".json", ".txt", ".model")
#: A golden-output lockfile may sit in a version's folder; it is not the model.
LOCKFILE_NAME = "squeezer.lock.json"


@dataclass(frozen=True, slots=True)
class ModelFolder:
    """A located model folder and what its files declare."""

    path: Path
    config: dict[str, Any]
    pooling: str
    max_input_length: int
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    #: True when sentence-transformers' pipeline ends with a Normalize module.
    st_normalize: bool = False
    #: False when the tokenizer config leaves ``token_type_ids`` out of the model's
    #: inputs (``transformers`` then never passes them: they are all zero).
    token_type_ids: bool = True
    #: True for a sentence-transformers folder (``modules.json``): made to embed.
    sentence_transformers: bool = False
    #: Special tokens by role (``mask_token``, ``pad_token``, ...) from the tokenizer
    #: config: the Rust tokenizer knows special tokens but not their roles.
    special_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "unknown"))

    def eos_token_ids(self, tokenizer_eos: int | None) -> list[int]:
        """Every id that ends generation: config.json's, generation_config.json's (a
        chat model's end-of-turn token is often only there), then the tokenizer's."""
        sources: list[Any] = [self.config.get("eos_token_id")]
        generation = self.path / "generation_config.json"
        if generation.is_file():
            sources.append(json.loads(generation.read_text(encoding="utf-8")).get("eos_token_id"))
        sources.append(tokenizer_eos)
        found: list[int] = []
        for value in sources:
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, int) and v not in found:
                    found.append(v)
        return found

    @property
    def architectures(self) -> tuple[str, ...]:
        return tuple(self.config.get("architectures") or ())

    @property
    def hidden_size(self) -> int:
        return int(
            self.config.get("hidden_size")
            or self.config.get("dim")
            or self.config.get("n_embd")
            or 0
        )

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"

    def detect_tasks(self) -> tuple[Task, ...]:
        """Tasks this folder can serve, its main task first (what HF's Inference API
        runs when a request names no task).

        A head decides: a sequence classifier classifies (and reranks with one label,
        and classifies zero-shot when a label means entailment), a token classifier
        tags, an MLM fills masks, a QA head answers. Bare encoders, MLMs and
        sentence-transformers folders also embed, the latter as their main task.
        """
        archs = self.architectures
        if any(a.endswith(_DECODER_SUFFIX) for a in archs):
            return (Task.GENERATE,)
        if self.model_type not in _ENCODER_TYPES and not any(
            a.endswith(("Model", *_HEAD_TASKS)) for a in archs
        ):
            return ()
        tasks: list[Task] = []
        for arch in archs:
            for suffix, task in _HEAD_TASKS.items():
                if arch.endswith(suffix) and task not in tasks:
                    tasks.append(task)
        if Task.CLASSIFY in tasks:
            labels = [str(v) for v in (self.config.get("id2label") or {}).values()]
            if len(labels) == 1:
                tasks.append(Task.RERANK)
            if any(label.lower().startswith("entail") for label in labels):
                tasks.append(Task.ZERO_SHOT)
        if not tasks or Task.FILL_MASK in tasks:
            tasks.append(Task.EMBED)
        if self.sentence_transformers and Task.EMBED in tasks:
            tasks.remove(Task.EMBED)
            tasks.insert(0, Task.EMBED)
        return tuple(tasks)

    def possible_tasks(self) -> tuple[Task, ...]:
        """What may be configured: the detected tasks, plus embeddings from any encoder."""
        tasks = self.detect_tasks()
        if tasks and Task.GENERATE not in tasks and Task.EMBED not in tasks:
            tasks = (*tasks, Task.EMBED)
        return tasks

    def weight_bytes(self) -> int:
        """Size of the files that hold weights (what a loaded copy takes, roughly)."""
        return sum(
            f.stat().st_size
            for f in self.path.rglob("*")
            if f.is_file() and f.suffix in _WEIGHT_SUFFIXES
        )

    def content_hash(self) -> str:
        """sha256 over the files that define the model, so a deployment can pin it."""
        h = hashlib.sha256()
        for f in sorted(self.path.rglob("*")):
            if f.is_file() and f.suffix in _HASHED_SUFFIXES and f.name != LOCKFILE_NAME:
                h.update(f.relative_to(self.path).as_posix().encode())
                with f.open("rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
        return h.hexdigest()


#: Files that hold weights, in the formats squeezer loads (HF, ONNX, OpenVINO, CT2).
_WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".onnx", ".data", ".pt", ".gguf"})


def _read_json(path: Path) -> dict[str, Any] | list[Any] | None:
    if not path.is_file():
        return None
    try:
        data: dict[str, Any] | list[Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e})") from e
    return data


def _st_modules(path: Path) -> list[dict[str, Any]]:
    modules = _read_json(path / "modules.json")
    return [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []


def _pooling_from_st(path: Path, modules: list[dict[str, Any]]) -> str | None:
    for m in modules:
        if str(m.get("type", "")).endswith("Pooling"):
            cfg = _read_json(path / str(m.get("path", "")) / "config.json")
            if not isinstance(cfg, dict):
                return None
            if cfg.get("pooling_mode_cls_token"):
                return "cls"
            if cfg.get("pooling_mode_lasttoken"):
                return "last"
            if cfg.get("pooling_mode_mean_tokens"):
                return "mean"
            modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
            raise ModelLoadError(
                f"{path}: pooling {modes} is not supported (mean, cls, last-token are)"
            )
    return None


def _max_length(path: Path, config: dict[str, Any]) -> int:
    st = _read_json(path / "sentence_bert_config.json")
    if isinstance(st, dict) and st.get("max_seq_length"):
        return int(st["max_seq_length"])
    positions = int(config.get("max_position_embeddings") or 512)
    if config.get("model_type") in _POSITION_OFFSET_TYPES:
        positions -= int(config.get("pad_token_id", 1)) + 1
    tok_cfg = _read_json(path / "tokenizer_config.json")
    if isinstance(tok_cfg, dict):
        limit = tok_cfg.get("model_max_length")
        if isinstance(limit, int) and 0 < limit < positions:
            return limit
    return positions


def _special_tokens(path: Path) -> dict[str, str]:
    roles: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        data = _read_json(path / name)
        if not isinstance(data, dict):
            continue
        for key, value in data.items():
            if isinstance(value, dict):
                value = value.get("content")
            if key.endswith("_token") and isinstance(value, str):
                roles[key] = value
    return roles


def _takes_token_types(path: Path) -> bool:
    cfg = _read_json(path / "tokenizer_config.json")
    names = cfg.get("model_input_names") if isinstance(cfg, dict) else None
    return not isinstance(names, list) or "token_type_ids" in names


def read_folder(
    path: Path, *, pooling: str | None = None, max_input_length: int | None = None
) -> ModelFolder:
    """Read a model folder's declarations; overrides come from per-model settings."""
    config = _read_json(path / "config.json")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: config.json is missing or not an object")
    if not (path / "tokenizer.json").is_file():
        raise ModelLoadError(
            f"{path}: no tokenizer.json (squeezer needs a fast tokenizer; save one with "
            "`AutoTokenizer.from_pretrained(...).save_pretrained(...)`)"
        )
    modules = _st_modules(path)
    st_cfg = _read_json(path / "config_sentence_transformers.json")
    st_cfg = st_cfg if isinstance(st_cfg, dict) else {}
    prompts = {str(k): str(v) for k, v in (st_cfg.get("prompts") or {}).items()}
    return ModelFolder(
        path=path,
        config=config,
        pooling=pooling or _pooling_from_st(path, modules) or "mean",
        max_input_length=max_input_length or _max_length(path, config),
        prompts=prompts,
        default_prompt_name=st_cfg.get("default_prompt_name"),
        st_normalize=any(str(m.get("type", "")).endswith("Normalize") for m in modules),
        special_tokens=_special_tokens(path),
        sentence_transformers=bool(modules),
        token_type_ids=_takes_token_types(path),
    )
