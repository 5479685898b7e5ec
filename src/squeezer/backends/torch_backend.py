"""The reference runtime: eager PyTorch with SDPA attention, on any device and dtype."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from squeezer.backends.device import torch_dtype
from squeezer.errors import ModelLoadError
from squeezer.types import NamedArrays

#: Arrays a BERT-style encoder accepts; anything else in the batch is ignored.
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


class TorchBackend:
    """Runs a transformers ``AutoModel`` forward pass and returns its hidden states.

    Inputs arrive as int64 numpy arrays and go to the device with one copy each
    (non-blocking from pinned memory on CUDA); outputs come back as float32 numpy so
    that tasks post-process the same way whatever the compute dtype.
    """

    name = "torch"

    def __init__(self, path: Path, *, device: str = "cpu", dtype: str = "float32") -> None:
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a server log is no terminal

        self.device = device
        self.dtype = dtype
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            self._model = AutoModel.from_pretrained(
                path,
                config=config,
                dtype=torch_dtype(dtype),
                attn_implementation="sdpa",
                local_files_only=True,
            )
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"could not load {path} with transformers: {e}") from e
        self._model.eval().to(device)
        self._accepts = self._forward_params()
        self._cuda = device.startswith("cuda")

    def _forward_params(self) -> frozenset[str]:
        import inspect

        params = inspect.signature(self._model.forward).parameters
        return frozenset(n for n in _INPUT_NAMES if n in params)

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("last_hidden_state",)

    def _to_device(self, array: np.ndarray[Any, Any]) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self._cuda:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    @torch.inference_mode()
    def forward(self, inputs: NamedArrays) -> NamedArrays:
        kwargs = {k: self._to_device(v) for k, v in inputs.items() if k in self._accepts}
        hidden = self._model(**kwargs).last_hidden_state
        return {"last_hidden_state": hidden.float().cpu().numpy()}

    def close(self) -> None:
        del self._model
        if self._cuda:
            torch.cuda.empty_cache()
