"""CTranslate2's encoder runtime: BERT-family hidden states from an int8 or fp32 artifact.

The artifact folder keeps the source model's config and tokenizer at its top level and
CTranslate2's files (which include a ``config.json`` of their own) under ``RUNTIME_DIR``,
next to ``SETTINGS_FILE``: what ``optimize/build_ctranslate2.py`` chose at build time
(the weight quantization and the compute type to load it with), so that every load runs
the model the way the accuracy gate measured it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from squeezer.backends.device import compute_threads
from squeezer.errors import ModelLoadError
from squeezer.types import NamedArrays

#: Subfolder of an artifact holding CTranslate2's files.
RUNTIME_DIR = "ctranslate2"
#: Build-time choices, written next to CTranslate2's ``model.bin``.
SETTINGS_FILE = "build.json"
_HIDDEN = "last_hidden_state"


def _split_device(device: str) -> tuple[str, int]:
    """``cuda:1`` -> (``cuda``, 1); ``cpu`` -> (``cpu``, 0)."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda"):
        raise ModelLoadError(f"CTranslate2 runs on cpu or cuda, not {device!r}")
    return kind, int(index or 0)


def _read_settings(folder: Path) -> dict[str, Any]:
    """The build's choices; a bare conversion without them loads with CT2's defaults."""
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def compute_type(settings: dict[str, Any], dtype: str) -> str:
    """What to load with: the build's choice for float32 activations, else the same
    weights with ``dtype`` activations (int8 weights -> ``int8_float16``, ...)."""
    if dtype == "float32":
        return str(settings.get("compute_type", "default"))
    if str(settings.get("quantization", "")).startswith("int8"):
        return f"int8_{dtype}"
    return dtype


class CTranslate2Backend:
    """Runs a CTranslate2 encoder; its one output is ``last_hidden_state``.

    Each row's real length (from ``attention_mask``) goes to CTranslate2, which then
    leaves padding out of its matrix products; columns past the longest row are not
    sent at all and come back as zeros, so the output keeps the input's width.
    """

    name = "ctranslate2"

    def __init__(self, path: Path, *, device: str = "cpu", dtype: str = "float32") -> None:
        import ctranslate2

        folder = path / RUNTIME_DIR
        if not (folder / "model.bin").is_file():
            raise ModelLoadError(
                f"{path}: no CTranslate2 model (expected {RUNTIME_DIR}/model.bin); "
                "build one with `squeezer optimize` or serve this folder with another backend"
            )
        self.device = device
        self.dtype = dtype
        settings = _read_settings(folder)
        kind, index = _split_device(device)
        wanted = compute_type(settings, dtype)
        supported = ctranslate2.get_supported_compute_types(kind)
        if wanted not in ("default", "auto") and wanted not in supported:
            raise ModelLoadError(
                f"{path}: CTranslate2 compute type {wanted!r} (dtype {dtype}) is not supported "
                f"on {device} here; supported: {', '.join(sorted(supported))}"
            )
        try:
            self._encoder = ctranslate2.Encoder(
                str(folder),
                device=kind,
                device_index=index,
                compute_type=wanted,
                inter_threads=1,
                intra_threads=compute_threads(),
            )
        except (RuntimeError, ValueError) as e:
            raise ModelLoadError(f"could not load {folder} with CTranslate2: {e}") from e
        #: The compute type CTranslate2 resolved ("int8_float32", "float32", ...).
        self.compute_type: str = self._encoder.compute_type
        #: DistilBERT has no token type embeddings: its encoder takes no type ids.
        self._token_types = bool(settings.get("token_type_ids", True))
        self._ct2 = ctranslate2

    @property
    def output_names(self) -> tuple[str, ...]:
        return (_HIDDEN,)

    def forward(self, inputs: NamedArrays, outputs: Sequence[str] | None = None) -> NamedArrays:
        if outputs is not None and set(outputs) - {_HIDDEN}:
            unknown = sorted(set(outputs) - {_HIDDEN})
            raise ValueError(f"outputs {unknown} not produced; this model gives ['{_HIDDEN}']")
        ids = inputs["input_ids"]
        batch, width = ids.shape
        mask = inputs.get("attention_mask")
        if mask is None:
            lengths = np.full(batch, width, dtype=np.int32)
        else:
            # A row with no real token still gets one (its output is masked out later).
            lengths = np.maximum(mask.sum(axis=1, dtype=np.int32), 1)
        longest = int(lengths.max())
        sv = self._ct2.StorageView.from_array
        kwargs: dict[str, Any] = {}
        types = inputs.get("token_type_ids")
        if self._token_types and types is not None and types[:, :longest].any():
            kwargs["token_type_ids"] = types[:, :longest].tolist()
        result = self._encoder.forward_batch(
            sv(np.ascontiguousarray(ids[:, :longest], dtype=np.int32)), sv(lengths), **kwargs
        )
        hidden = self._to_numpy(result.last_hidden_state)
        if longest == width:
            return {_HIDDEN: hidden}
        full = np.zeros((batch, width, hidden.shape[-1]), dtype=np.float32)
        full[:, :longest] = hidden
        return {_HIDDEN: full}

    def _to_numpy(self, view: Any) -> np.ndarray[Any, Any]:
        """float32 on the host; the array keeps ``view`` alive (no copy on CPU)."""
        if view.dtype != self._ct2.DataType.float32:
            view = view.to(self._ct2.DataType.float32)
        if view.device != "cpu":
            view = view.to_device(self._ct2.Device.cpu)
        return np.asarray(view)

    def close(self) -> None:
        self._encoder.unload_model()
        del self._encoder
