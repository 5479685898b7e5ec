"""Build CTranslate2 encoder artifacts (int8 or fp32) from a local HF encoder folder.

CTranslate2's own ``TransformersConverter`` does the conversion. Two things are
adjusted here, in a subclass, never in site-packages:

- transformers 5 dropped ``position_embedding_type`` from BERT-family configs (only
  absolute positions remain), and CTranslate2's BERT/RoBERTa loaders assert on it:
  the loaded model's config gets ``"absolute"`` when the attribute is missing. A
  folder whose ``config.json`` asks for relative positions is refused by ``supports``.
- every ``from_pretrained`` is made ``local_files_only`` and loads float32 weights, so
  the build never reaches a hub and quantizes from full precision.

What the converter would get silently wrong is refused up front by ``supports``:
RoBERTa-style models with ``pad_token_id`` 0 (its position-table offset is applied only
for a padding index above 0), relative positions, custom code, unknown activations.

The compute type the backend loads with is chosen here and written to the artifact.
On this machine kind (AVX2, no VNNI) CTranslate2 resolves ``default``, ``int8`` and
``int8_float32`` to the same thing for int8 weights (int8 GEMMs through oneDNN,
everything else in float32), so ``int8_float32`` is written explicitly: the same
kernels, and a GPU load with float32 activations means the same thing.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from squeezer.backends.ctranslate2_backend import RUNTIME_DIR, SETTINGS_FILE
from squeezer.errors import ModelLoadError
from squeezer.models import ModelFolder
from squeezer.optimize.candidate import BuildContext, BuildInfo, Candidate
from squeezer.types import Task

#: Encoder model types CTranslate2's converter handles (its loaders are keyed by config
#: class: BertConfig, DistilBertConfig, RobertaConfig, XLMRobertaConfig, CamembertConfig).
_ENCODER_TYPES = ("bert", "distilbert", "roberta", "xlm-roberta", "camembert")
#: RoBERTa-style position tables start after the padding index; CTranslate2 cuts that
#: offset off only when the index is above 0, so a padding index of 0 converts wrong.
_POSITION_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "camembert"})
#: Activations the converter maps (``_SUPPORTED_ACTIVATIONS`` in its transformers module).
_ACTIVATIONS = frozenset(
    {
        "gelu",
        "gelu_fast",
        "gelu_new",
        "gelu_python",
        "gelu_pytorch_tanh",
        "quick_gelu",
        "relu",
        "silu",
        "swish",
    }
)
#: Weight quantization -> the compute type to load it with on CPU (see the docstring).
_COMPUTE_TYPES = {"int8": "int8_float32", "float32": "float32"}


def supports(folder: ModelFolder) -> str | None:
    """Why CTranslate2 cannot build ``folder`` (None when it can); reads files only."""
    if importlib.util.find_spec("ctranslate2") is None:
        return "the ctranslate2 package is not installed: pip install 'squeezer[ctranslate2]'"
    config = folder.config
    model_type = folder.model_type
    if model_type not in _ENCODER_TYPES:
        return (
            f"CTranslate2 cannot convert a {model_type!r} model; its encoder converter "
            f"takes {', '.join(_ENCODER_TYPES)}"
        )
    if config.get("auto_map"):
        return "the model needs its own code (auto_map); CTranslate2 converts only built-in classes"
    positions = config.get("position_embedding_type") or "absolute"
    if positions != "absolute":
        return f"position_embedding_type {positions!r}: CTranslate2 supports only absolute"
    if model_type in _POSITION_OFFSET_TYPES and config.get("pad_token_id", 1) == 0:
        return (
            "pad_token_id 0 in a RoBERTa-style model: CTranslate2's converter would "
            "misplace its position table (it needs the padding index above 0)"
        )
    activation = config.get("activation" if model_type == "distilbert" else "hidden_act", "gelu")
    if activation not in _ACTIVATIONS:
        return (
            f"activation {activation!r} is not one CTranslate2 converts "
            f"({', '.join(sorted(_ACTIVATIONS))})"
        )
    return None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """The converter reads the deprecated ``torch_dtype`` and loads with progress bars."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _convert(source: Path, out: Path, quantization: str) -> None:
    import torch
    from ctranslate2.converters import TransformersConverter

    class LocalConverter(TransformersConverter):
        """Local files only, float32 weights, transformers 5 configs made readable."""

        def load_model(self, model_class: Any, path: str, **kwargs: Any) -> Any:
            kwargs["dtype"] = torch.float32
            model = model_class.from_pretrained(path, local_files_only=True, **kwargs)
            if not hasattr(model.config, "position_embedding_type"):
                model.config.position_embedding_type = "absolute"
            return model

        def load_tokenizer(self, tokenizer_class: Any, path: str, **kwargs: Any) -> Any:
            return tokenizer_class.from_pretrained(path, local_files_only=True, **kwargs)

    with _quiet_transformers():
        LocalConverter(str(source)).convert(str(out), quantization=quantization, force=True)


def build(ctx: BuildContext, quantization: str) -> BuildInfo:
    """Convert ``ctx.source`` into ``ctx.out / RUNTIME_DIR`` with ``quantization`` weights."""
    if quantization not in _COMPUTE_TYPES:
        raise ValueError(f"quantization {quantization!r}: expected {', '.join(_COMPUTE_TYPES)}")
    reason = supports(ctx.source)
    if reason is not None:
        raise ModelLoadError(f"{ctx.source.path}: {reason}")
    import ctranslate2

    out = ctx.out / RUNTIME_DIR
    try:
        _convert(ctx.source.path, out, quantization)
    except Exception as e:  # the converter asserts, KeyErrors, ... on models it cannot map
        raise ModelLoadError(
            f"CTranslate2 could not convert {ctx.source.path} ({ctx.source.model_type}): "
            f"{type(e).__name__}: {e}"
        ) from e
    settings = {
        "quantization": quantization,
        "compute_type": _COMPUTE_TYPES[quantization],
        "token_type_ids": ctx.source.model_type != "distilbert",
        "model_type": ctx.source.model_type,
        "ctranslate2": ctranslate2.__version__,
    }
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    files = sorted(p.relative_to(ctx.out).as_posix() for p in out.rglob("*") if p.is_file())
    details: dict[str, object] = {
        "quantization": quantization,
        "compute_type": settings["compute_type"],
        "ctranslate2": ctranslate2.__version__,
    }
    return BuildInfo(files=tuple(files), details=details)


CANDIDATES: tuple[Candidate, ...] = (
    Candidate(
        runtime="ctranslate2",
        precision="int8",
        build=functools.partial(build, quantization="int8"),
        tasks=frozenset({Task.EMBED}),
    ),
    Candidate(
        runtime="ctranslate2",
        precision="float32",
        build=functools.partial(build, quantization="float32"),
        tasks=frozenset({Task.EMBED}),
    ),
)
